"""Recipe files from Python: the schema, its checks (key path and line in every message), path
resolution, ``--set`` overrides, ``cocktail.run`` on a recipe, and ``verify`` against provenance."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_bert, read_folder_tensors

import cocktail
from cocktail.errors import RecipeError
from cocktail.recipe.recipe import ModelEntry, Recipe


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def folder(tmp_path):
    """A recipe folder with two tiny models beside it (./a, ./b) and a few examples."""
    make_bert(tmp_path / "a", seed=1, tokenizer=False)
    make_bert(tmp_path / "b", seed=2, tokenizer=False)
    (tmp_path / "few.jsonl").write_text('{"query": "cat", "pos": ["a cat"], "neg": ["a car"]}\n')
    return tmp_path


@pytest.fixture
def method_with_base():
    """A merge method registered for the test, as later issues register theirs: validation must see it."""
    from cocktail.merging.methods import METHODS, register

    @register("test_task_vector", needs_base=True, scale=1.0)
    def task_vector(tensors, weights, base, scale):
        """base + scale * sum w_i (theta_i - base)."""
        out = base.clone()
        for tensor, weight in zip(tensors, weights):
            out.add_(tensor - base, alpha=weight * scale)
        return out

    yield "test_task_vector"
    METHODS.pop("test_task_vector")


def load_problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(path, overrides)
    return info.value.problems


# -- schema round trip and paths -----------------------------------------------------------------

def test_round_trip_load_dump_load_gives_the_same_recipe(folder, tmp_path):
    path = write(folder / "r.yaml", """
        model_type: reranker
        merge_method: linear
        models:
          - path: ./a
            weight: [0.1, 0.2, 0.3]
          - path: ./b
            weight:
              - {filter: "attention", value: 0.9}
              - {value: 0.1}
        dtype: bfloat16
        normalize: true
        max_shard_size: 200MB
        config_from: ./b
        seed: 7
        output: ./merged
        """)
    recipe = Recipe.from_yaml(path)
    copy = write(tmp_path / "elsewhere" / "copy.yaml", recipe.to_yaml())
    again = Recipe.from_yaml(copy)
    assert again == recipe
    assert again.models[1].weight == [{"filter": "attention", "value": 0.9}, {"value": 0.1}]
    assert (again.model_type, again.dtype, again.normalize, again.seed) == ("reranker", "bfloat16", True, 7)


def test_round_trip_with_weights_from(folder, tmp_path):
    path = write(folder / "r.yaml", """
        models: [./a, ./b]
        weights_from:
          examples: ./few.jsonl
          temperature: 2.5
          query_instruction: "Represent this sentence: "
          search: true
          search_budget: 20
          neg_number: 3
        """)
    recipe = Recipe.from_yaml(path)
    assert recipe.weights_from["examples"] == str(folder / "few.jsonl")
    assert recipe.weights is None
    assert Recipe.from_yaml(write(tmp_path / "other" / "r.yaml", recipe.to_yaml())) == recipe


def test_relative_paths_are_relative_to_the_recipe_not_the_current_folder(folder, tmp_path, monkeypatch):
    write(folder / "r.yaml", """
        models:
          - path: ./a
          - path: b
        output: ../out/merged
        """)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    recipe = Recipe.from_yaml(Path("..") / ".." / "r.yaml")
    assert [m.path for m in recipe.models] == [str(folder / "a"), str(folder / "b")]
    assert recipe.output == str(tmp_path.parent / "out" / "merged")


def test_hub_ids_stay_hub_ids(folder):
    recipe = Recipe.from_yaml(write(folder / "r.yaml", """
        models: [./a, BAAI/bge-base-en-v1.5]
        """))
    assert recipe.models[1].path == "BAAI/bge-base-en-v1.5"


def test_short_model_entries_and_yaml_1_2_floats(folder):
    recipe = Recipe.from_yaml(write(folder / "r.yaml", """
        models:
          - ./a
          - path: ./b
        weights_from: {examples: ./few.jsonl, temperature: 1e-3}
        """))
    assert recipe.models[0] == ModelEntry(str(folder / "a"))
    assert recipe.weights_from["temperature"] == pytest.approx(0.001)


# -- every check names the key path and the line ---------------------------------------------------

BAD_RECIPES = {
    "unknown top-level key": ("""
        models: [./a, ./b]
        weigths_from: {examples: ./few.jsonl}
        """, "r.yaml:2: weigths_from: unknown key; did you mean 'weights_from'?"),
    "unknown model key": ("""
        models:
          - path: ./a
            wieght: 0.5
          - path: ./b
        """, "r.yaml:3: models[0].wieght: unknown key; did you mean 'weight'?"),
    "wrong weight type": ("""
        models:
          - path: ./a
            weight: 0.5
          - path: ./b
            weight: half
        """, "r.yaml:5: models[1].weight: expected a number, a list of numbers or a list of {filter, value} "
             "mappings, got 'half' (a string)"),
    "bad filter regex": ("""
        models:
          - path: ./a
            weight: [{filter: "attention(", value: 1.0}]
          - {path: ./b, weight: 0.0}
        """, "r.yaml:3: models[0].weight[0].filter: not a valid regular expression"),
    "wrong dtype": ("""
        models: [./a, ./b]
        dtype: float61
        """, "r.yaml:2: dtype: did you mean 'float16'? expected one of float32, float16, bfloat16 or null"),
    "wrong model type": ("""
        model_type: embedder
        models: [./a, ./b]
        """, "r.yaml:1: model_type: did you mean 'llm-embedder'? expected one of encoder, reranker, decoder, "
             "llm-embedder, llm-reranker or null, got 'embedder'"),
    "weights both fixed and from examples": ("""
        models:
          - path: ./a
          - path: ./b
            weight: 0.5
        weights_from:
          examples: ./few.jsonl
        """, "r.yaml:4: models[1].weight: weights are given both here and by weights_from"),
    "some weights missing": ("""
        models:
          - {path: ./a, weight: 1.0}
          - path: ./b
        """, "r.yaml:3: models[1].weight: missing: give a weight to every model, or to none"),
    "missing model folder": ("""
        models:
          - path: ./a
          - path: ./not-there
        """, "r.yaml:3: models[1].path: model not found: ./not-there"),
    "missing examples file": ("""
        models: [./a, ./b]
        weights_from:
          examples: ./nope.jsonl
        """, "r.yaml:3: weights_from.examples: examples file not found: ./nope.jsonl"),
    "unknown weights_from key": ("""
        models: [./a, ./b]
        weights_from:
          examples: ./few.jsonl
          temprature: 3
        """, "r.yaml:4: weights_from.temprature: unknown key; did you mean 'temperature'?"),
    "wrong weights_from type": ("""
        models: [./a, ./b]
        weights_from:
          examples: ./few.jsonl
          temperature: hot
        """, "r.yaml:4: weights_from.temperature: expected a positive number, got 'hot'"),
    "unknown method": ("""
        models: [./a, ./b]
        merge_method: lineer
        """, "r.yaml:2: merge_method: unknown merge method 'lineer'; did you mean 'linear'?"),
    "parameter the method does not take": ("""
        models: [./a, ./b]
        parameters: {density: 0.5}
        """, "r.yaml:2: parameters.density: unknown parameter of linear; it takes no parameters"),
    "no models": ("""
        models: []
        """, "r.yaml:1: models: expected a list of models"),
    "models missing": ("""
        output: ./x
        """, "r.yaml: models: missing"),
    "not a mapping": ("""
        - ./a
        - ./b
        """, "r.yaml: (top level): a recipe is a mapping of keys"),
    "duplicate key": ("""
        models: [./a, ./b]
        dtype: float16
        dtype: float32
        """, "r.yaml:3: dtype: duplicate key (first given on line 2)"),
    "not YAML": ("""
        models: [./a, ./b
        dtype: float16
        """, "r.yaml:2: not valid YAML (expected ',' or ']'"),
    "bad shard size": ("""
        models: [./a, ./b]
        max_shard_size: 5 parsecs
        """, "r.yaml:2: max_shard_size: invalid shard size"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_each_problem_names_its_key_path_and_line(folder, case):
    text, expected = BAD_RECIPES[case]
    problems = load_problems(write(folder / "r.yaml", text))
    assert len(problems) == 1, problems
    assert expected in problems[0], problems[0]


def test_a_method_that_needs_a_base_model_without_one(folder, method_with_base):
    path = write(folder / "r.yaml", """
        merge_method: test_task_vector
        models: [./a, ./b]
        """)
    problems = load_problems(path)
    assert problems == [f"{path}:1: base_model: merge method test_task_vector needs a base model: set base_model"]


def test_methods_and_their_parameters_come_from_the_registry(folder, method_with_base):
    path = write(folder / "r.yaml", """
        merge_method: test_task_vector
        base_model: ./b
        models: [./a]
        parameters:
          scale: [{filter: "layer\\\\.0\\\\.", value: 0.5}, {value: 1.0}]
        """)
    assert Recipe.from_yaml(path).parameters["scale"][1] == {"value": 1.0}
    typo = load_problems(path, ["parameters.scael=2"])
    assert typo == [f"{path}: parameters.scael (from --set): unknown parameter of test_task_vector; "
                    "did you mean 'scale'? it takes scale"]


def test_a_method_without_weights_refuses_them(folder):
    from cocktail.merging.methods import METHODS, register

    @register("test_first_model", uses_weights=False)
    def first_model(tensors, weights, base):
        """The first model, unchanged."""
        return tensors[0].clone()

    try:
        path = write(folder / "r.yaml", """
            merge_method: test_first_model
            models:
              - path: ./a
              - path: ./b
                weight: 0.5
            """)
        assert load_problems(path) == [f"{path}:5: models[1].weight: merge method test_first_model takes no "
                                       "weights; remove it"]
    finally:
        METHODS.pop("test_first_model")


def test_per_tensor_values_may_hold_layer_gradients(folder):
    recipe = Recipe.from_yaml(write(folder / "r.yaml", """
        models:
          - path: ./a
            weight: [{filter: embeddings, value: 1.0}, {value: [0.3, 0.8]}]
          - path: ./b
            weight: [{filter: embeddings, value: 0.0}, {value: [0.7, 0.2]}]
        """))
    assert recipe.models[1].weight[1] == {"value": [0.7, 0.2]}
    problems = load_problems(folder / "r.yaml", ["models.1.weight.1.value=[low, high]"])
    assert problems == [f"{folder / 'r.yaml'}: models[1].weight[1].value (from --set): expected a number or a "
                        "list of numbers, got a list"]


def test_every_problem_is_reported_at_once(folder):
    problems = load_problems(write(folder / "r.yaml", """
        model_type: encoder
        models:
          - path: ./missing
            weight: x
        dtype: f16
        colour: red
        """))
    assert sorted(p.split(": ")[1] for p in problems) == ["colour", "dtype", "models[0].path", "models[0].weight"]
    assert str(RecipeError(problems)) == "; ".join(problems)  # the CLI's one line names them all


def test_a_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.from_yaml(tmp_path / "none.yaml")


# -- --set overrides ---------------------------------------------------------------------------------

def test_overrides_are_read_as_yaml_and_applied_before_the_checks(folder):
    path = write(folder / "r.yaml", """
        models:
          - {path: ./a, weight: 0.5}
          - {path: ./b, weight: 0.5}
        output: ./out
        """)
    recipe = Recipe.from_yaml(path, ["dtype=float16", "models.1.weight=0.3", "models[0].weight=0.7",
                                     "output=./elsewhere", "seed=3"])
    assert recipe.dtype == "float16"
    assert recipe.weights == [0.7, 0.3]
    assert recipe.output == str(folder / "elsewhere")  # a path set on the recipe is relative to the recipe
    assert recipe.seed == 3


def test_overrides_can_add_entries_and_nested_keys(folder):
    path = write(folder / "r.yaml", """
        models: [./a]
        """)
    recipe = Recipe.from_yaml(path, ["models.1.path=./b", "weights_from.examples=./few.jsonl",
                                     "weights_from.temperature=2"])
    assert [m.path for m in recipe.models] == [str(folder / "a"), str(folder / "b")]
    assert recipe.weights_from == {"examples": str(folder / "few.jsonl"), "temperature": 2}


@pytest.mark.parametrize("assignment, message", [
    ("dtype", "expected KEY=VALUE"),
    ("models.5.weight=0.1", "models has 2 entries"),
    ("dtype.x=1", "dtype is not a mapping"),
    ("models.x=1", "models is not a mapping"),
    ("models.0.path.x=1", "models[0].path is not a mapping"),
    ("models..weight=1", "not a key path"),
    ("dtype=[unclosed", "is not valid YAML"),
])
def test_bad_overrides(folder, assignment, message):
    path = write(folder / "r.yaml", """
        models: [./a, ./b]
        dtype: float16
        """)
    with pytest.raises(RecipeError, match=re.escape(message)):
        Recipe.from_yaml(path, [assignment])


def test_an_overridden_value_is_reported_as_from_set(folder):
    path = write(folder / "r.yaml", """
        models:
          - {path: ./a, weight: 0.5}
          - {path: ./b, weight: 0.5}
        """)
    assert load_problems(path, ["models.1.weight=abc"]) == [
        f"{path}: models[1].weight (from --set): expected a number, a list of numbers or a list of "
        "{filter, value} mappings, got 'abc' (a string)"]


# -- running recipes from Python --------------------------------------------------------------------

def test_cocktail_run_takes_a_recipe_or_its_path(folder):
    path = write(folder / "r.yaml", """
        models:
          - {path: ./a, weight: 0.75}
          - {path: ./b, weight: 0.25}
        output: ./merged
        """)
    result = cocktail.run(str(path))
    assert result.output == folder / "merged"
    a, b, merged = (read_folder_tensors(folder / name) for name in ("a", "b", "merged"))
    for name, tensor in merged.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.75 * a[name] + 0.25 * b[name], rtol=0, atol=1e-6)
    same = cocktail.run(Recipe.from_yaml(path, ["output=./merged-again"]))
    assert (folder / "merged-again" / "model.safetensors").read_bytes() == \
        (folder / "merged" / "model.safetensors").read_bytes()
    assert same.weights == [0.75, 0.25]


def test_the_written_recipe_is_a_recipe_with_provenance(folder):
    cocktail.merge([folder / "a", folder / "b"], [0.6, 0.4], folder / "merged")
    recipe = Recipe.from_yaml(folder / "merged" / "cocktail_recipe.yaml")
    assert recipe.weights == [0.6, 0.4]
    assert [entry["path"] for entry in recipe.provenance["inputs"]] == [str(folder / "a"), str(folder / "b")]
    assert set(recipe.provenance["inputs"][0]["sha256"]) == {"model.safetensors"}


def test_verify_refuses_a_changed_input_and_names_the_file(folder):
    from cocktail.io.provenance import verify_inputs

    cocktail.merge([folder / "a", folder / "b"], [0.5, 0.5], folder / "merged")
    recipe = Recipe.from_yaml(folder / "merged" / "cocktail_recipe.yaml", ["output=../again"])
    assert verify_inputs(recipe) == 2
    make_bert(folder / "b", seed=3, tokenizer=False)  # b is retrained after the merge
    with pytest.raises(cocktail.InputChangedError, match=f"{folder / 'b' / 'model.safetensors'} has sha256"):
        cocktail.run(recipe, verify=True)
    assert not (folder / "again").exists()


def test_verify_needs_provenance(folder):
    recipe = Recipe.from_yaml(write(folder / "r.yaml", "models: [./a, ./b]\noutput: ./out\n"))
    with pytest.raises(cocktail.InputError, match="verify=True needs a recipe with provenance"):
        cocktail.run(recipe, verify=True)


def test_a_recipe_from_models_passes_the_file_checks(folder, monkeypatch):
    monkeypatch.chdir(folder)
    recipe = Recipe.from_models(["./a", "./b"], [0.5, 0.5], output="./out")
    recipe.check(folder)
    assert Recipe.from_yaml(write(folder / "r.yaml", recipe.to_yaml())) == \
        Recipe.from_models([str(folder / "a"), str(folder / "b")], [0.5, 0.5], output=str(folder / "out"))


def test_rerunning_a_recipe_whose_inputs_changed_warns_without_verify(tmp_path):
    from conftest import make_bert, run_cli

    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    assert run_cli("merge", "--models", a, b, "-o", tmp_path / "first", "--quiet").returncode == 0
    again = run_cli("run", tmp_path / "first" / "cocktail_recipe.yaml", "-o", tmp_path / "same", "--quiet")
    assert again.returncode == 0 and "changed" not in again.stderr, again
    make_bert(tmp_path / "b", seed=3)  # someone retrained b in place
    changed = run_cli("run", tmp_path / "first" / "cocktail_recipe.yaml", "-o", tmp_path / "other", "--quiet")
    assert changed.returncode == 0, changed
    assert f"warning: input {b} changed since its recipe was written (model.safetensors)" in changed.stderr
    assert "--verify" in changed.stderr
