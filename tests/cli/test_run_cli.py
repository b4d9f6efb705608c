"""``cocktail run`` and ``cocktail recipe`` as a user types them, and every shipped recipe in ``recipes/``
run on tiny models."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, VOCAB, make_bert, read_folder_tensors, run_cli, snapshot

RECIPES = REPO / "recipes"


def assert_weighted_average(merged_folder: Path, inputs: list[Path], weights: list[float], dtype=None) -> None:
    merged = read_folder_tensors(merged_folder)
    sources = [read_folder_tensors(folder) for folder in inputs]
    assert set(merged) == set(sources[0])
    for name, tensor in merged.items():
        if not tensor.is_floating_point():
            continue
        expected = sum(w * s[name].double() for w, s in zip(weights, sources))
        assert tensor.dtype == (dtype or sources[0][name].dtype), name
        tolerance = 1e-6 if tensor.dtype == torch.float32 else 1e-2
        torch.testing.assert_close(tensor.double(), expected.to(tensor.dtype).double(), rtol=0, atol=tolerance)


@pytest.fixture
def project(tmp_path):
    """A project folder: two tiny models and a recipe that names them relatively."""
    make_bert(tmp_path / "models" / "a", seed=1)
    make_bert(tmp_path / "models" / "b", seed=2)
    recipe = tmp_path / "recipes" / "merge.yaml"
    recipe.parent.mkdir()
    recipe.write_text(textwrap.dedent("""\
        # two models, half and half
        model_type: encoder
        models:
          - path: ../models/a
            weight: 0.5
          - path: ../models/b
            weight: 0.5
        output: ../out/merged
        """))
    return tmp_path


def test_run_writes_where_the_recipe_says_from_any_folder(project):
    elsewhere = project / "cwd"
    elsewhere.mkdir()
    result = run_cli("run", "../recipes/merge.yaml", "--quiet", cwd=elsewhere)
    assert result.returncode == 0, result
    assert_weighted_average(project / "out" / "merged", [project / "models" / "a", project / "models" / "b"], [0.5, 0.5])
    assert not (elsewhere / "out").exists()


def test_output_option_and_dry_run_write_nothing(project):
    before = snapshot(project)
    result = run_cli("run", project / "recipes" / "merge.yaml", "--output", "./elsewhere", "--dry-run", cwd=project)
    assert result.returncode == 0, result
    assert "dry run: nothing written" in result.stdout
    assert str(project / "elsewhere") in result.stdout
    assert snapshot(project) == before


def test_set_overrides_without_editing_the_recipe(project):
    recipe = project / "recipes" / "merge.yaml"
    text = recipe.read_text()
    result = run_cli("run", recipe, "--set", "dtype=float16", "--set", "models.0.weight=0.7",
                     "--set", "models[1].weight=0.3", "--output", project / "f16", "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["weights"] == [0.7, 0.3]
    assert_weighted_average(project / "f16", [project / "models" / "a", project / "models" / "b"], [0.7, 0.3],
                            dtype=torch.float16)
    assert recipe.read_text() == text


def test_an_invalid_recipe_is_one_error_line_naming_key_and_line(project):
    recipe = project / "recipes" / "merge.yaml"
    result = run_cli("run", recipe, "--set", "models.1.weight=heavy", "--set", "merge_methd=linear")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "merge_methd (from --set): unknown key; did you mean 'merge_method'?" in result.stderr
    assert "models[1].weight (from --set): expected a number" in result.stderr
    bad = project / "recipes" / "bad.yaml"
    bad.write_text(recipe.read_text().replace("weight: 0.5\n  - path: ../models/b", "weight: 0.5\n  - path: ../models/c"))
    result = run_cli("run", bad)
    assert result.returncode == 2
    assert f"{bad}:6: models[1].path: model not found: ../models/c" in result.stderr
    assert not (project / "out").exists()


def test_rerunning_the_written_recipe_gives_identical_bytes_and_verify_catches_changes(project):
    a, b = project / "models" / "a", project / "models" / "b"
    first = run_cli("merge", "--models", a, b, "--weights", 0.25, 0.75, "--dtype", "bfloat16",
                    "--output", project / "merged", "--quiet")
    assert first.returncode == 0, first
    written = project / "merged" / "cocktail_recipe.yaml"
    again = run_cli("run", written, "--output", "again", "--verify", "--quiet", cwd=project)
    assert again.returncode == 0, again
    side_files = yaml.safe_load(written.read_text())["provenance"]["side_files"]["sha256"]
    assert f"verified: {2 + len(side_files)} input files (weights, config, tokenizer)" in again.stderr
    assert (project / "again" / "model.safetensors").read_bytes() == (project / "merged" / "model.safetensors").read_bytes()

    make_bert(b, seed=5)  # an input changes after the merge
    refused = run_cli("run", written, "--output", "third", "--verify", cwd=project)
    assert refused.returncode == 2
    assert f"error: input changed since the recipe was written: {b / 'model.safetensors'}" in refused.stderr
    assert not (project / "third").exists()


def test_recipe_command_output_runs_to_the_same_result_as_its_command_line(project):
    options = ["--models", "./models/a", "./models/b", "--weights", 3, 1, "--normalize", "--dtype", "float16",
               "--max-shard-size", "40KB"]
    printed = run_cli("recipe", *options, "--output", "from-recipe", cwd=project)
    assert printed.returncode == 0, printed
    data = yaml.safe_load(printed.stdout)
    assert data["models"] == [{"path": "./models/a", "weight": 3.0}, {"path": "./models/b", "weight": 1.0}]
    assert (data["normalize"], data["dtype"], data["max_shard_size"]) == (True, "float16", "40KB")
    (project / "my.yaml").write_text(printed.stdout)

    ran = run_cli("run", "my.yaml", "--quiet", cwd=project)
    merged = run_cli("merge", *options, "--output", "from-merge", "--quiet", cwd=project)
    assert ran.returncode == 0 and merged.returncode == 0, (ran, merged)
    ran_files, merged_files = snapshot(project / "from-recipe"), snapshot(project / "from-merge")
    weight_files = sorted(f for f in merged_files if f.endswith((".safetensors", ".index.json")))
    assert len(weight_files) > 2  # sharded: the shard size came through too
    assert {f: ran_files[f] for f in weight_files} == {f: merged_files[f] for f in weight_files}


def test_recipe_command_checks_what_it_prints(project):
    result = run_cli("recipe", "--models", "./models/a", "./models/missing", cwd=project)
    assert result.returncode == 2
    assert "models[1].path: model not found: ./models/missing" in result.stderr
    absolute = run_cli("recipe", "--models", "./models/a", "./models/b", "--absolute-paths", cwd=project)
    assert yaml.safe_load(absolute.stdout)["models"][1]["path"] == str(project / "models" / "b")


def test_the_commands_are_listed_and_help_stays_light():
    listed = run_cli("--help")
    assert " run " in listed.stdout and " recipe " in listed.stdout
    light = run_cli("recipe", "--help")
    assert "--weights" in light.stdout and "--dry-run" not in light.stdout and "--json" not in light.stdout
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "import sys, cocktail.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.strip() == "False"


# -- the shipped recipes ----------------------------------------------------------------------------

SHIPPED = sorted(p.name for p in RECIPES.glob("*.yaml"))


def examples_jsonl(path: Path) -> None:
    lines = [{"query": "red car fast", "pos": ["a fast red car"], "neg": ["a blue sea", "the moon"]},
             {"query": "cat dog", "pos": ["the cat and the dog"], "neg": ["protein cell gene"]},
             {"query": "science paper", "pos": ["a study with a result"], "neg": ["green tree"]}]
    assert all(w in VOCAB for line in lines for w in " ".join([line["query"], *line["pos"]]).split())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def stage(name: str, folder: Path) -> tuple[Path, list[str], dict]:
    """Copy a shipped recipe into ``folder`` and make tiny models at the local paths it names; hub ids
    become ``--set`` overrides to tiny models. Returns (recipe path, overrides, {model key: folder})."""
    recipe = folder / name
    shutil.copy(RECIPES / name, recipe)
    data = yaml.safe_load(recipe.read_text())
    overrides: list[str] = []
    made: dict[str, Path] = {}
    model_class = {"reranker": "BertForSequenceClassification"}.get(data.get("model_type"), "BertModel")

    def provide(value: str, key: str) -> None:
        if value.startswith("./"):
            target = folder / value
        else:  # a hub id: point it at a local tiny model instead
            target = folder / f"hub-{len(made)}"
            overrides.append(f"{key}={target}")
        if not target.exists():
            make_bert(target, seed=len(made) + 1, model_class=model_class)
        made[key] = target

    for i, entry in enumerate(data["models"]):
        provide(entry["path"] if isinstance(entry, dict) else entry, f"models.{i}.path")
    for key in ("base_model", "config_from"):
        if data.get(key):
            provide(data[key], key)
    if data.get("weights_from"):
        for key in ("examples", "keep"):
            if data["weights_from"].get(key):
                examples_jsonl(folder / data["weights_from"][key])
    return recipe, overrides, made


def test_every_shipped_recipe_is_commented_and_uses_relative_local_paths():
    assert {"bge-instruction-merge.yaml", "keep-general-skill.yaml", "few-shot-weights.yaml"} <= set(SHIPPED)
    for name in SHIPPED:
        text = (RECIPES / name).read_text()
        assert text.startswith("#"), name
        data = yaml.safe_load(text)
        assert str(data["output"]).startswith("./"), name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_runs_on_tiny_models(name, tmp_path):
    from cocktail.merging.methods import METHODS
    from cocktail.recipe.recipe import Recipe

    recipe, overrides, made = stage(name, tmp_path)
    data = yaml.safe_load(recipe.read_text())
    assert data.get("merge_method", "linear") in METHODS
    loaded = Recipe.from_yaml(recipe, overrides)  # the schema accepts it as shipped
    assert loaded.output == str(tmp_path / data["output"])

    result = run_cli("run", recipe, *[arg for o in overrides for arg in ("--set", o)], "--json",
                     cwd=REPO)
    assert result.returncode == 0, result
    summary = json.loads(result.stdout)
    output = Path(summary["output"])
    assert output == tmp_path / data["output"]
    models = [made[f"models.{i}.path"] for i in range(len(data["models"]))]
    weights = summary["weights"]
    numbers = all(isinstance(w, (int, float)) for w in weights)
    if loaded.merge_method == "linear" and loaded.weights_from:  # weights from examples: a convex mix
        assert len(weights) == len(models) and abs(sum(weights) - 1) < 1e-6 and min(weights) >= 0
    if loaded.merge_method == "linear" and numbers:
        assert_weighted_average(output, models, weights)
        if loaded.weights is not None:
            assert weights == pytest.approx(loaded.weights)
    written = Recipe.from_yaml(output / "cocktail_recipe.yaml")  # a valid recipe with the weights used
    assert [m.weight for m in written.models] == weights


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_runs_where_it_lies_with_only_its_folders_set(name, tmp_path):
    """As the README says: point a shipped recipe at your folders with ``--set`` and absolute paths, without
    copying it: its models, its base_model and its examples file are the only paths to set."""
    data = yaml.safe_load((RECIPES / name).read_text())
    model_class = {"reranker": "BertForSequenceClassification"}.get(data.get("model_type"), "BertModel")
    sets, made = [], {}
    for i, entry in enumerate(data["models"]):
        made[entry["path"] if isinstance(entry, dict) else entry] = folder = make_bert(
            tmp_path / f"m{i}", seed=i + 1, model_class=model_class)
        sets.append(f"models.{i}.path={folder}")
    if data.get("base_model"):  # one of the models (RegMean's keep examples feed it), or a folder of its own
        base = made.get(data["base_model"]) or make_bert(tmp_path / "base", seed=9, model_class=model_class)
        sets.append(f"base_model={base}")
    for key in ("examples", "keep"):  # the examples files
        if (data.get("weights_from") or {}).get(key):
            examples_jsonl(tmp_path / f"{key}.jsonl")
            sets.append(f"weights_from.{key}={tmp_path / f'{key}.jsonl'}")
    result = run_cli("run", RECIPES / name, *[arg for s in sets for arg in ("--set", s)], "--output",
                     tmp_path / "out", "--dry-run", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result


def test_set_adds_a_model_with_its_weight_as_the_readme_says(project):
    c = make_bert(project / "models" / "c", seed=3)
    recipe = project / "recipes" / "merge.yaml"
    result = run_cli("run", recipe, "--set", f"models.2.path={c}", "--set", "models.2.weight=0.2",
                     "--set", "normalize=true", "--output", project / "three", "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["weights"] == pytest.approx([0.5 / 1.2, 0.5 / 1.2, 0.2 / 1.2])
    result = run_cli("run", recipe, "--set", f"models.2.path={c}", "--output", project / "none")
    assert result.returncode == 2 and "models[2].weight: missing: give a weight to every model" in result.stderr, result
