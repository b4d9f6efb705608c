"""One clear ``error:`` line, exit 2, for the faults that once ended in ``unexpected ...`` (item 12),
no word of torch's when a legacy ``.bin`` is refused (item 15), messages that say what is wrong
(item 16), read-only inputs (item 13), and a ``--config-from`` that must fit the weights (item 9)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import make_bert, make_xlmr, read_folder_tensors

from hostile.conftest import refuse, run_in_process


def few_shot_file(path: Path, query: str = "the sun") -> Path:
    path.write_text(json.dumps({"query": query, "pos": ["sun moon"], "neg": ["cat dog"]}) + "\n"
                    + json.dumps({"query": "red car", "pos": ["car red"], "neg": ["blue sea"]}) + "\n")
    return path


@pytest.mark.parametrize("weights, says", [
    (["1e308", "1e308", "--normalize"], "too large to add up"),
    (["1" + "0" * 400, "0"], "finite"),
    (["0.6", "0.6"], "sum to 1.2"),
])
def test_weights_that_cannot_be_used(models, tmp_path, weights, says):
    a, b = models
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "--weights", *weights, "-o", out], inputs=[a, b], outputs=[out], contains=says)


def test_a_400_digit_weight_in_a_recipe(models, tmp_path):
    a, b = models
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models:\n  - path: {a}\n    weight: 1{'0' * 400}\n  - path: {b}\n    weight: 0\n"
                      f"output: {tmp_path / 'out'}\n")
    refuse(["run", recipe], inputs=[a, b, recipe], outputs=[tmp_path / "out"], contains="too large for a float")


def test_tiny_weights_normalize_instead_of_summing_to_zero(models, tmp_path):
    a, b = models
    result = run_in_process(["merge", "--models", a, b, "--weights", "1e-13", "3e-13", "--normalize",
                             "-o", tmp_path / "out", "--json"])
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["weights"] == pytest.approx([0.25, 0.75])


def test_a_path_of_invalid_utf8_is_refused_before_any_work(models, tmp_path):
    a, b = models
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/A\xff"))
    shutil.copytree(a, odd)
    refuse(["merge", "--models", odd, b, "-o", tmp_path / "out", "--quiet"], inputs=[odd, b],
           outputs=[tmp_path / "out"], contains="not valid UTF-8")
    refuse(["merge", "--models", a, b, "-o", Path(os.fsdecode(bytes(tmp_path) + b"/out\xfe")), "--quiet"],
           inputs=[a, b], contains="not valid UTF-8")
    assert sorted(os.listdir(tmp_path)) == sorted(["A", "B", os.fsdecode(b"A\xff")])


def test_an_empty_model_path_is_not_the_current_folder(models, tmp_path):
    a, b = models
    refuse(["merge", "--models", a, "", "-o", tmp_path / "out"], inputs=[a], outputs=[tmp_path / "out"],
           cwd=b, contains="empty")


def test_a_symlink_loop_is_called_a_symlink_not_a_hub_id(models, tmp_path):
    a, _ = models
    (tmp_path / "loop").symlink_to("loop")
    result = refuse(["merge", "--models", a, "loop", "-o", tmp_path / "out"], inputs=[a], cwd=tmp_path,
                    outputs=[tmp_path / "out"], contains="symlink")
    assert "hub" not in result.line


def test_a_lone_surrogate_in_examples(models, tmp_path):
    a, b = models
    few = few_shot_file(tmp_path / "few.jsonl", query="\ud800 sun")
    refuse(["weights", "--models", a, b, "--examples", few, "--quiet"], inputs=[a, b, few], contains="few.jsonl line 1: query holds a lone surrogate")


def test_a_tokenizer_larger_than_the_model(tmp_path):
    small = [make_bert(tmp_path / name, seed=seed, vocab_size=40) for name, seed in (("s1", 1), ("s2", 2))]
    few = few_shot_file(tmp_path / "few.jsonl")
    refuse(["weights", "--models", *small, "--examples", few, "--quiet"], inputs=[*small, few],
           contains="embeddings have 40 rows")


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('COCKTAIL_MARKER', '/nonexistent/marker')}",))


def test_a_legacy_bin_is_refused_in_one_line_without_torchs_advice(models, tmp_path, monkeypatch):
    a, b = models
    marker = tmp_path / "ran"
    monkeypatch.setenv("COCKTAIL_MARKER", str(marker))
    (a / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": torch.ones(2), "x": Evil()}, a / "pytorch_model.bin")
    result = refuse(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"], inputs=[a, b],
                    outputs=[tmp_path / "out"], contains="cannot be loaded safely")
    assert "weights_only" not in result.stderr and "trusted source" not in result.stderr
    assert not marker.exists()


def test_read_only_inputs_give_an_ordinary_output(models, tmp_path):
    a, b = models
    for path in [p for m in (a, b) for p in sorted(m.rglob("*"), reverse=True)] + [a, b]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        result = run_in_process(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"])
        assert result.returncode == 0, result
        for path in (tmp_path / "out").rglob("*"):
            assert path.stat().st_mode & stat.S_IWUSR, f"{path} is read-only"
        assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "bert"
    finally:
        for path in [a, b, *a.rglob("*"), *b.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("case", ["hidden 64", "xlm-r", "fewer layers"])
def test_a_config_from_that_does_not_fit_the_weights(models, tmp_path, case):
    a, b = models
    config = {"hidden 64": lambda p: make_bert(p, seed=5, hidden_size=64, intermediate_size=128),
              "xlm-r": lambda p: make_xlmr(p, seed=5),
              "fewer layers": lambda p: make_bert(p, seed=5, num_hidden_layers=1)}[case](tmp_path / "cfg")
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "--config-from", config, "-o", out, "--quiet"], inputs=[a, b, config],
           outputs=[out], contains="does not fit the merged weights")


def test_a_config_from_that_fits_is_used(models, tmp_path):
    a, b = models
    config = make_bert(tmp_path / "cfg", seed=5)
    cfg = json.loads((config / "config.json").read_text())
    cfg["id2label"] = {"0": "FITS"}
    (config / "config.json").write_text(json.dumps(cfg))
    result = run_in_process(["merge", "--models", a, b, "--config-from", config, "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {"0": "FITS"}
    assert read_folder_tensors(tmp_path / "out").keys() == read_folder_tensors(a).keys()


def test_an_input_that_fails_while_it_is_read_is_named_not_the_output(models, tmp_path, monkeypatch):
    """A disk error or a file cut short in the middle of a merge is the input's fault: the error names the
    file and the tensor, not 'cannot write the output'."""
    import errno

    from cocktail.io import safetensors_format

    a, b = models
    real = os.preadv
    spoiled = os.path.realpath(b / "model.safetensors")

    def failing(fd, buffers, offset):
        if os.path.realpath(f"/proc/self/fd/{fd}") == spoiled:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(safetensors_format.os, "preadv", failing)
    out = tmp_path / "out"
    line = refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], outputs=[out],
                  contains="Input/output error").line
    assert f"{b / 'model.safetensors'}: cannot read tensor " in line and "cannot write" not in line
    monkeypatch.setattr(safetensors_format.os, "preadv", lambda fd, buffers, offset: (
        0 if os.path.realpath(f"/proc/self/fd/{fd}") == spoiled else real(fd, buffers, offset)))
    line = refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], outputs=[out],
                  contains="before the tensor does (did the file change while it was read?)").line
    assert line.startswith(f"error: {b / 'model.safetensors'}: tensor ")
