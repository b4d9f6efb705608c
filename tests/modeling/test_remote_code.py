"""No code from a model folder runs unless the user passes ``--trust-remote-code``, and nothing asks
on stdin: a folder with ``auto_map`` and its own ``.py`` is refused with one line naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_bert, make_remote_code_model, run_cli

EVIL = '''
import os
from pathlib import Path
from transformers import BertConfig, BertModel

Path(os.environ["COCKTAIL_TEST_MARKER"]).write_text("the folder's code ran")


class EvilConfig(BertConfig):
    model_type = "evilbert"


class EvilModel(BertModel):
    config_class = EvilConfig
'''


def make_custom_code_model(folder: Path, seed: int) -> Path:
    """A tiny BERT whose config asks for its own code (``auto_map`` -> ``evil.py``)."""
    return make_remote_code_model(folder, seed, "evil", EVIL)


@pytest.fixture
def custom(tmp_path):
    return [make_custom_code_model(tmp_path / name, seed) for name, seed in (("a", 1), ("b", 2))]


@pytest.fixture
def env(tmp_path):
    return {"COCKTAIL_TEST_MARKER": str(tmp_path / "marker"), "HF_MODULES_CACHE": str(tmp_path / "modules")}


def data_files(tmp_path: Path) -> tuple[Path, Path]:
    examples = tmp_path / "few.jsonl"
    examples.write_text("\n".join(json.dumps({"query": q, "pos": [p], "neg": ["cat dog"]})
                                  for q, p in (("the sun", "sun moon"), ("red car", "car red"))) + "\n")
    sts = tmp_path / "sts.tsv"
    sts.write_text("the cat\ta cat\t4\nthe dog\tsun moon\t1\nred\tblue\t2\n")
    return examples, sts


@pytest.mark.parametrize("command", ["weights", "eval", "sweep", "merge"])
def test_code_in_a_model_folder_never_runs_without_the_flag(custom, env, tmp_path, command):
    examples, sts = data_files(tmp_path)
    args = {"weights": ["weights", "--models", *custom, "--examples", examples],
            "eval": ["eval", "--models", custom[0], "--data", sts],
            "sweep": ["sweep", "--models", *custom, "--data", sts],
            "merge": ["merge", "--models", *custom, "--examples", examples, "--output", tmp_path / "out"]}[command]
    result = run_cli(*args, "--quiet", env=env, stdin="y\ny\ny\n")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--trust-remote-code" in lines[0], result
    assert not Path(env["COCKTAIL_TEST_MARKER"]).exists()
    assert not (tmp_path / "out").exists()


def test_with_the_flag_the_code_runs_and_the_scores_come(custom, env, tmp_path):
    examples, _ = data_files(tmp_path)
    result = run_cli("weights", "--models", *custom, "--examples", examples, "--quiet", "--json",
                     "--trust-remote-code", env=env)
    assert result.returncode == 0, result
    assert Path(env["COCKTAIL_TEST_MARKER"]).read_text() == "the folder's code ran"
    assert len(json.loads(result.stdout)["weights"]) == 2


def test_a_plain_merge_copies_the_code_but_never_runs_it(custom, env, tmp_path):
    result = run_cli("merge", "--models", *custom, "--output", tmp_path / "out", "--quiet", env=env)
    assert result.returncode == 0, result
    assert not Path(env["COCKTAIL_TEST_MARKER"]).exists()
    assert (tmp_path / "out" / "evil.py").read_text() == EVIL


def test_python_api_refuses_too(custom, env, tmp_path, monkeypatch):
    import cocktail
    from cocktail.errors import InputError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    examples, _ = data_files(tmp_path)
    with pytest.raises(InputError, match="trust_remote_code=True"):
        cocktail.weights_from_examples([str(m) for m in custom], str(examples))
    assert not Path(env["COCKTAIL_TEST_MARKER"]).exists()


def write_recipe(tmp_path: Path, custom, extra: str = "trust_remote_code: true\n") -> Path:
    examples, _ = data_files(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{custom[0]}, {custom[1]}]\nweights_from: {{examples: {examples}}}\n"
                      f"output: {tmp_path / 'out'}\n" + extra)
    return recipe


def assert_refused_before_any_code(result, env, tmp_path):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--trust-remote-code" in lines[0], result
    assert "cannot turn on" in lines[0], result
    assert not Path(env["COCKTAIL_TEST_MARKER"]).exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["key", "--set"])
def test_a_recipe_cannot_turn_on_remote_code(custom, env, tmp_path, how):
    """A recipe is data a user downloads: its ``trust_remote_code: true`` (or a ``--set`` of it) is refused,
    naming the line, before any model is built; the folder's code never runs."""
    recipe = write_recipe(tmp_path, custom, "trust_remote_code: true\n" if how == "key" else "")
    extra = ["--set", "trust_remote_code=true"] if how == "--set" else []
    result = run_cli("run", recipe, *extra, "--quiet", env=env, stdin="y\ny\ny\n")
    assert_refused_before_any_code(result, env, tmp_path)
    assert "trust_remote_code" in result.stderr and (how != "key" or "r.yaml:4" in result.stderr), result


def test_the_command_line_flag_lets_a_recipe_run_the_code(custom, env, tmp_path):
    recipe = write_recipe(tmp_path, custom)
    result = run_cli("run", recipe, "--quiet", "--trust-remote-code", env=env)
    assert result.returncode == 0, result
    assert Path(env["COCKTAIL_TEST_MARKER"]).read_text() == "the folder's code ran"
    assert "trust_remote_code: true" in (tmp_path / "out" / "cocktail_recipe.yaml").read_text()


def test_a_merged_folders_recipe_cannot_turn_it_on_either(custom, env, tmp_path):
    """The ``cocktail_recipe.yaml`` of an output made with the flag says ``trust_remote_code: true``:
    rerunning it needs the flag again; the Python door (``cocktail.run(path)``) refuses it the same way."""
    import cocktail
    from cocktail.errors import RecipeError

    made = run_cli("merge", "--models", *custom, "-o", tmp_path / "made", "--quiet", "--trust-remote-code", env=env)
    assert made.returncode == 0, made
    recipe = tmp_path / "made" / "cocktail_recipe.yaml"
    assert "trust_remote_code: true" in recipe.read_text()
    result = run_cli("run", recipe, "-o", tmp_path / "out", "--quiet", env=env)
    assert_refused_before_any_code(result, env, tmp_path)
    with pytest.raises(RecipeError, match="trust_remote_code=True"):
        cocktail.run(recipe, dry_run=True)


def test_a_tokenizer_that_names_its_own_code_never_runs_it_nor_asks(tmp_path, env):
    """Only ``tokenizer_config.json`` names code (``auto_map``): transformers' own tokenizer class is used
    instead, whatever stdin answers; the folder's code never runs."""
    models = []
    for name, seed in (("a", 1), ("b", 2)):
        folder = make_bert(tmp_path / name, seed=seed)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(EVIL + "\nfrom transformers import BertTokenizerFast as EvilTokenizer\n")
        models.append(folder)
    examples, _ = data_files(tmp_path)
    result = run_cli("weights", "--models", *models, "--examples", examples, "--quiet", env=env, stdin="y\ny\ny\n")
    assert not Path(env["COCKTAIL_TEST_MARKER"]).exists(), result
    assert result.returncode == 0 and result.stderr == "", result
