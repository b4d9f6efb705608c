"""The command line as a user runs it: a fresh process, real folders, stdout/stderr and exit codes."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, make_bert, make_xlmr, read_folder_tensors, snapshot


def test_help_does_not_import_torch_or_transformers():
    code = ("import sys; from click.testing import CliRunner; from cocktail.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(cli, ['merge', '--help']); assert r.exit_code == 0, r.output; "
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules) or 'light')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "light"


def test_merge_with_variadic_models_and_weights(two_berts, tmp_path, cli):
    a, b = two_berts
    res = cli("merge", "--models", a, b, "--weights", "0.25", "0.75", "--output", tmp_path / "out", "--quiet")
    assert res.returncode == 0, res
    assert "wrote" in res.stdout and res.stderr == ""
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    name = "encoder.layer.0.intermediate.dense.weight"
    torch.testing.assert_close(out[name], ta[name] * 0.25 + tb[name] * 0.75, rtol=0, atol=1e-6)


def test_negative_weights_parse_and_warn(two_berts, tmp_path, cli):
    a, b = two_berts
    res = cli("merge", "-m", a, b, "-w", "-0.5", "1.5", "-o", tmp_path / "out", "-q")
    assert res.returncode == 0, res
    assert "warning: negative weight" in res.stderr


def test_json_summary(two_berts, tmp_path, cli):
    a, b = two_berts
    res = cli("merge", "--models", a, b, "--output", tmp_path / "out", "--json")
    assert res.returncode == 0, res
    summary = json.loads(res.stdout)
    assert summary["weights"] == [0.5, 0.5]
    assert summary["merged_tensors"] == len(read_folder_tensors(a))
    assert "model.safetensors" in summary["files"] and "cocktail_recipe.yaml" in summary["files"]


def test_dry_run_prints_the_plan_and_writes_nothing(two_berts, tmp_path, cli):
    a, b = two_berts
    res = cli("merge", "--models", a, b, "--output", tmp_path / "out", "--dry-run")
    assert res.returncode == 0, res
    assert "dry run" in res.stdout and "tensors merged" in res.stdout
    assert not (tmp_path / "out").exists()
    before = sorted(p.name for p in tmp_path.iterdir())
    unset = cli("merge", "--models", a, b, "--dry-run", cwd=tmp_path)  # no --output: still a dry run
    assert unset.returncode == 0, unset
    assert "dry run: nothing written (no output given; a merge would write 1 safetensors file)" in unset.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("case", ["missing", "weights", "sum", "exists", "vocab", "arch", "no-output", "input",
                                  "under-a-file", "negative-seed", "config-from-corrupt", "config-from-empty",
                                  "config-from-missing"])
def test_every_error_is_one_line_exit_2_and_nothing_written(tmp_path, cli, case):
    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2)
    args = {
        "missing": ["--models", a, tmp_path / "nope", "-o", tmp_path / "out"],
        "weights": ["--models", a, b, "--weights", "1", "-o", tmp_path / "out"],
        "sum": ["--models", a, b, "--weights", "0.6", "0.6", "-o", tmp_path / "out"],
        "exists": ["--models", a, b, "-o", tmp_path / "existing"],
        "vocab": ["--models", a, make_bert(tmp_path / "c", seed=3, vocab_size=200, tokenizer=False), "-o", tmp_path / "out"],
        "arch": ["--models", a, make_xlmr(tmp_path / "x", seed=3), "-o", tmp_path / "out"],
        "no-output": ["--models", a, b],
        "input": ["--models", a, b, "-o", b, "--force"],
        "under-a-file": ["--models", a, b, "-o", tmp_path / "a-file" / "out"],
        "negative-seed": ["--models", a, b, "--seed", "-1", "-o", tmp_path / "out"],
        "config-from-corrupt": ["--models", a, b, "--config-from", tmp_path / "corrupt", "-o", tmp_path / "out"],
        "config-from-empty": ["--models", a, b, "--config-from", tmp_path / "existing", "-o", tmp_path / "out"],
        "config-from-missing": ["--models", a, b, "--config-from", tmp_path / "nope", "-o", tmp_path / "out"],
    }[case]
    (tmp_path / "existing").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    before = sorted(p.name for p in tmp_path.iterdir())
    inputs = snapshot(a)
    res = cli("merge", *args)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert snapshot(a) == inputs


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, cli, where):
    args = ["merge", "--models", tmp_path / "nope", tmp_path / "nope2", "-o", tmp_path / "out"]
    # a fresh process: the traceback is what the interpreter prints of the exception --debug lets through
    res = cli(*(["--debug", *args] if where == "before" else [*args, "--debug"]), fresh_process=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "InputError" in res.stderr, res


def test_inspect_reports_mergeable_models(two_berts, cli):
    a, b = two_berts
    res = cli("inspect", a, b)
    assert res.returncode == 0, res
    assert "mergeable: yes" in res.stdout and "BertModel" in res.stdout
    report = json.loads(cli("inspect", a, b, "--json").stdout)
    assert report["mergeable"] is True
    assert report["models"][0]["parameters"] == sum(t.numel() for t in read_folder_tensors(a).values() if t.is_floating_point())
    assert report["models"][0]["layout"] == "safetensors"


def test_inspect_says_what_differs(tmp_path, cli):
    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2, vocab_size=200, tokenizer=False)
    res = cli("inspect", a, b)
    assert res.returncode == 1, res
    assert "mergeable: no" in res.stdout and "word_embeddings" in res.stdout
    assert "vocab_size:" in res.stdout  # the config difference that explains it


def test_a_killed_merge_leaves_nothing_behind(tmp_path, minilm_path):
    """SIGTERM in the middle of a merge: no output, no temporary folder."""
    import os
    import signal
    import time

    from conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cocktail", "merge", "--models", minilm_path, minilm_path,
                             "--output", out], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the merge finished before it could be interrupted")
    assert proc.returncode == 130 and "interrupted" in stderr
    assert list(tmp_path.iterdir()) == []


def test_inspect_reads_gpt2_style_config_names(tmp_path, cli):
    from conftest import make_gpt2

    report = json.loads(cli("inspect", make_gpt2(tmp_path / "g", seed=1), "--json").stdout)
    model = report["models"][0]
    assert (model["hidden_size"], model["num_layers"], model["vocab_size"]) == (32, 2, 120)


def test_a_shard_size_without_a_unit_is_refused(two_berts, tmp_path, cli):
    a, b = two_berts
    res = cli("merge", "--models", a, b, "-o", tmp_path / "out", "--max-shard-size", "500")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res
    assert "shard size '500' has no unit: write e.g. 500MB or 500GB" in res.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_counts_the_shards_and_a_long_write_is_summarised(two_berts, tmp_path, cli):
    a, b = two_berts
    dry = cli("merge", "--models", a, b, "-o", tmp_path / "out", "--max-shard-size", "10KB", "--dry-run")
    assert dry.returncode == 0, dry
    written = cli("merge", "--models", a, b, "-o", tmp_path / "out", "--max-shard-size", "10KB", "--json")
    shards = sorted(f for f in json.loads(written.stdout)["files"] if f.endswith(".safetensors"))
    assert len(shards) > 3
    assert f"(output {tmp_path / 'out'} would hold {len(shards)} safetensors files)" in dry.stdout
    # tensors bigger than a shard each get a file of their own, and the user is told
    big = [name for name, t in read_folder_tensors(a).items() if t.numel() * t.element_size() > 10_000]
    assert big and f"{len(big)} tensor" in dry.stderr and "larger than max_shard_size 10KB" in dry.stderr
    again = cli("merge", "--models", a, b, "-o", tmp_path / "again", "--max-shard-size", "10KB")
    line = next(l for l in again.stdout.splitlines() if l.startswith("wrote "))
    assert f"{len(shards)} safetensors files: {shards[0]} ... {shards[-1]}" in line, line


def test_recipe_help_offers_no_force_of_its_own(cli):
    res = cli("recipe", "--help")
    assert res.returncode == 0
    assert "--force " not in res.stdout.replace("\n", " ").split("cocktail run")[0]
    assert "--force" not in [opt for line in res.stdout.splitlines() for opt in line.split()[:2]]


def test_each_door_names_options_its_own_way(two_berts, tmp_path, cli):
    """The same mistake, told as a flag on the command line, as a key in a recipe, as an argument in Python."""
    import cocktail

    a, b = two_berts
    res = cli("merge", "--models", a, b, "--weights", "0.3", "0.3", "-o", tmp_path / "out")
    assert res.returncode == 2 and "pass --normalize" in res.stderr, res
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{{path: {a}, weight: 0.3}}, {{path: {b}, weight: 0.3}}]\noutput: {tmp_path / 'o'}\n")
    res = cli("run", recipe)
    assert res.returncode == 2 and "pass normalize: true" in res.stderr, res
    with pytest.raises(cocktail.InputError, match=r"pass normalize=True"):
        cocktail.merge([a, b], [0.3, 0.3], tmp_path / "py")
    (tmp_path / "taken").mkdir()
    with pytest.raises(cocktail.OutputError, match=r"use force=True to replace it"):
        cocktail.merge([a, b], [0.5, 0.5], tmp_path / "taken")
    res = cli("merge", "--models", a, b, "-o", tmp_path / "taken")
    assert res.returncode == 2 and "use --force to replace it" in res.stderr, res


def test_the_cli_run_in_process_leaves_the_python_spelling_to_python(two_berts, tmp_path):
    """A notebook or a test that calls the click group in-process still gets Python's spellings afterwards."""
    from click.testing import CliRunner

    import cocktail
    from cocktail.cli import cli

    a, b = two_berts
    res = CliRunner().invoke(cli, ["merge", "--models", str(a), str(b), "--weights", "0.3", "0.3",
                                   "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "pass --normalize" in res.output, res.output
    with pytest.raises(cocktail.InputError, match=r"pass normalize=True"):
        cocktail.merge([a, b], [0.3, 0.3], tmp_path / "py")
