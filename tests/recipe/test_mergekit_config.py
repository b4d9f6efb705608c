"""Reading mergekit configs: which files are mergekit's, what they become, and what is refused in one line.
(That the merges give mergekit's tensors is in ``tests/merging/test_against_mergekit.py``.)"""

from __future__ import annotations

import pytest
import yaml

from cocktail.errors import RecipeError
from cocktail.recipe.mergekit_config import is_mergekit_config, recipe_data
from cocktail.recipe.recipe import Recipe


def test_mergekit_configs_are_told_from_cocktail_recipes_by_their_keys():
    assert is_mergekit_config({"merge_method": "ties", "models": [{"model": "a"}, {"model": "b"}]})
    assert is_mergekit_config({"merge_method": "passthrough", "slices": [{"sources": []}]})
    assert not is_mergekit_config({"merge_method": "ties", "models": [{"path": "a"}, {"path": "b"}]})
    assert not is_mergekit_config({"models": [{"model": "a"}]})  # no merge_method: neither
    assert not is_mergekit_config({"merge_method": "linear", "models": ["./a", "./b"]})


def test_precedence_becomes_one_schedule_and_filters_match_substrings(tmp_path):
    data = yaml.safe_load("""
merge_method: della
base_model: org/base
models:
  - model: org/a
    parameters:
      weight: [{filter: mlp.up, value: 0.8}]
      density: 0.4
  - model: org/b
parameters:
  weight: 0.5
  density: [0.9, 0.3]
  epsilon: 0.1
  int8_mask: true
""")
    recipe = recipe_data(data, cwd=tmp_path)
    first, second = recipe["models"]
    assert first["weight"] == [{"filter": r"mlp\.up", "value": 0.8}, {"value": 0.5}]
    assert first["parameters"] == {"density": 0.4, "epsilon": 0.1}
    assert second == {"path": "org/b", "weight": 0.5, "parameters": {"density": [0.9, 0.3], "epsilon": 0.1}}
    assert recipe["base_model"] == "org/base" and "int8_mask" not in recipe["parameters"]


def test_mergekit_defaults_become_explicit_parameters(tmp_path):
    data = {"merge_method": "dare_ties", "base_model": "org/base",
            "models": [{"model": "org/a", "parameters": {"weight": 1.0}}]}
    assert recipe_data(data, cwd=tmp_path)["parameters"] == {
        "density": 1.0, "rescale": "l1", "zero_sign": "positive", "normalize": False}
    data["parameters"] = {"rescale": False, "normalize": True}
    parameters = recipe_data(data, cwd=tmp_path)["parameters"]
    assert parameters["rescale"] == "none" and parameters["normalize"] is True


def test_slerp_takes_the_base_as_its_first_model_and_linear_normalizes(tmp_path):
    slerp = recipe_data({"merge_method": "slerp", "base_model": "org/a", "parameters": {"t": 0.3},
                         "models": [{"model": "org/a"}, {"model": "org/b"}]}, cwd=tmp_path)
    assert [m["path"] for m in slerp["models"]] == ["org/a", "org/b"] and "base_model" not in slerp
    linear = recipe_data({"merge_method": "linear", "models": [{"model": "org/a", "parameters": {"weight": 2}},
                                                                {"model": "org/b", "parameters": {"weight": 1}}]},
                         cwd=tmp_path)
    assert linear["normalize"] is True


@pytest.mark.parametrize("extra, message", [
    ({"merge_method": "frankenmerge"}, "merge_method 'frankenmerge' is not one cocktail reproduces"),
    ({"tokenizer_source": "union"}, "tokenizer_source: union .* is not supported"),
    ({"chat_template": "chatml"}, "chat_template is not supported"),
    ({"modules": {"text": {}}}, "modules .* are not supported"),
    ({"parameters": {"normalize": [{"filter": "mlp", "value": False}, {"value": True}]}},
     "parameter normalize is given per tensor"),
    ({"dtype": "int8"}, "dtype 'int8' is not one cocktail writes"),
    ({"merged_by": "me"}, "unknown key 'merged_by'"),
])
def test_what_a_recipe_cannot_express_is_refused_in_one_line(extra, message, tmp_path):
    config = {"merge_method": "ties", "base_model": "org/base",
              "models": [{"model": "org/a", "parameters": {"weight": 1.0}}], **extra}
    path = tmp_path / "mergekit.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RecipeError, match=message) as caught:
        Recipe.from_yaml(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{path}: mergekit config: ")


def test_a_method_that_needs_weights_refuses_a_model_without_one(tmp_path):
    with pytest.raises(RecipeError, match=r"models\[1\] has no weight \(mergekit's ties needs one per model\)"):
        recipe_data({"merge_method": "ties", "base_model": "org/base",
                     "models": [{"model": "org/a", "parameters": {"weight": 1.0}}, {"model": "org/b"}]}, cwd=tmp_path)


def test_local_paths_are_relative_to_the_current_folder_as_mergekit_reads_them(tmp_path):
    (tmp_path / "a").mkdir()
    recipe = recipe_data({"merge_method": "passthrough", "models": [{"model": "./a"}]}, cwd=tmp_path)
    assert recipe["models"] == [{"path": str((tmp_path / "a").resolve())}]


def test_slices_that_cut_layers_are_refused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"num_hidden_layers": 4}')
    slices = [{"sources": [{"model": "./a", "layer_range": [0, 2]}, {"model": "./b", "layer_range": [0, 2]}]}]
    with pytest.raises(RecipeError, match=r"the slices take layers 0 to 2 of ./a, which has 4"):
        recipe_data({"merge_method": "slerp", "base_model": "./a", "slices": slices}, cwd=tmp_path)
    slices.append({"sources": [{"model": "./a", "layer_range": [2, 4]}, {"model": "./b", "layer_range": [2, 4]}]})
    recipe = recipe_data({"merge_method": "slerp", "base_model": "./a", "slices": slices,
                          "parameters": {"t": 0.3}}, cwd=tmp_path)
    assert recipe["parameters"] == {"t": 0.3}  # the same value for every layer of every slice: one number
