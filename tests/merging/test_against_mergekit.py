"""cocktail against mergekit itself (the ``mergekit`` package, in the test extra): every method both have,
tensor by tensor, and mergekit's configs (its own examples folder among them) merged by ``mergekit``'s
``run_merge`` and by ``cocktail run`` on tiny Llama checkpoints, agreeing within 1e-6.

Random methods (dare_*, della*) are compared per tensor with mergekit seeded as cocktail seeds that
tensor: both draw ``torch.rand < p`` (mergekit through ``torch.bernoulli``) from the same stream. A
whole mergekit run draws from one global stream in its own tensor order, which cocktail does not
reproduce (its draws are per tensor, so a merge does not depend on the order tensors are read in).
"""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, make_decoder, read_folder_tensors

if sys.version_info < (3, 10):  # the test extra installs mergekit where it runs (pyproject.toml)
    pytest.skip("mergekit needs Python 3.10 or later", allow_module_level=True)

from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.merge_methods import registry
from mergekit.merge_methods.base import TensorGroup
from mergekit.options import MergeOptions
from safetensors.torch import load_file, save_file

from cocktail.errors import RecipeError
from cocktail.merging.methods import get_method
from cocktail.recipe.mergekit_config import MERGEKIT_DEFAULTS, MERGEKIT_METHODS
from cocktail.recipe.recipe import Recipe
from cocktail.runner import run

TOLERANCE = 1e-6
LAYERS = 4
EXAMPLES = REPO / "tests" / "mergekit_examples"


# --- per tensor --------------------------------------------------------------------------------------------

def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tensors(shape, count, seed=0):
    base = rand(*shape, seed=seed)
    return base, [base + 0.1 * rand(*shape, seed=seed + 1 + i) for i in range(count)]


def by_mergekit(name, models, base=None, shared=None, per_model=None, seed=None, base_first=True):
    """mergekit's method ``name`` on one tensor: ``per_model`` maps a parameter to one value per model."""
    ids = [f"m{i}" for i in range(len(models))]
    inputs, names, base_index = list(models), list(ids), None
    if base is not None:
        inputs, names, base_index = [base] + inputs, ["base"] + names, 0
    group = TensorGroup.from_tensors(inputs, ids=names, base_index=base_index)
    parameters = dict(shared or {})
    for key, values in (per_model or {}).items():
        parameters[key] = dict(zip(ids, values))
    if seed is not None:
        torch.manual_seed(seed)
    return registry.get(name)([group], parameters=parameters)[0]


def assert_agree(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Within 1e-6 of mergekit's tensor, relative to its largest entry (these test tensors are about 1, not 0.02
    like a model's weights: rounding differences in float32 come a few times 1e-7 here)."""
    atol = TOLERANCE * max(1.0, expected.abs().max().item())
    assert torch.allclose(out, expected, rtol=0, atol=atol), (out - expected).abs().max()


def by_cocktail(name, models, base=None, weights=None, seed=None, **params):
    method = get_method(name)
    weights = weights if weights is not None else [1 / len(models)] * len(models)
    extra = {"generator": torch.Generator().manual_seed(seed)} if seed is not None else {}
    return method(models, weights, base, **{**MERGEKIT_DEFAULTS.get(name, {}), **params}, **extra)


W3 = [0.5, 0.3, 0.2]
TASK_VECTOR_CASES = [  # (method, mergekit shared, mergekit per model, cocktail params, seed)
    ("task_arithmetic", {"lambda": 0.7}, {}, {"lambda": 0.7}, None),
    ("ties", {}, {"density": [0.3, 0.5, 0.7]}, {"density": (0.3, 0.5, 0.7)}, None),
    ("ties", {"normalize": False, "rescale": True}, {"density": [0.4] * 3}, {"density": 0.4, "normalize": False,
                                                                             "rescale": "l1"}, None),
    ("dare_ties", {}, {"density": [0.5, 0.6, 0.7]}, {"density": (0.5, 0.6, 0.7)}, 11),
    ("dare_ties", {"normalize": True, "rescale": False}, {"density": [0.5] * 3},
     {"density": 0.5, "normalize": True, "rescale": "none"}, 12),
    ("dare_linear", {"lambda": 1.3}, {"density": [0.3] * 3}, {"density": 0.3, "lambda": 1.3}, 13),
    ("breadcrumbs", {}, {"density": [0.6, 0.8, 0.9], "gamma": [0.02, 0.05, 0.1]},
     {"density": (0.6, 0.8, 0.9), "gamma": (0.02, 0.05, 0.1)}, None),
    ("breadcrumbs_ties", {"normalize": True}, {"density": [0.7] * 3}, {"density": 0.7, "normalize": True}, None),
    ("della", {}, {"density": [0.5, 0.4, 0.6], "epsilon": [0.1, 0.2, 0.15]},
     {"density": (0.5, 0.4, 0.6), "epsilon": (0.1, 0.2, 0.15)}, 14),
    ("della_linear", {"lambda": 0.9}, {"density": [0.5] * 3, "epsilon": [0.1] * 3},
     {"density": 0.5, "epsilon": 0.1, "lambda": 0.9}, 15),
]


@pytest.mark.parametrize("shape", [(16, 24), (24,)])
@pytest.mark.parametrize("name, shared, per_model, params, seed", TASK_VECTOR_CASES)
def test_task_vector_methods_agree_with_mergekit(name, shared, per_model, params, seed, shape):
    base, models = tensors(shape, 3, seed=len(name))
    expected = by_mergekit(name, models, base, shared, {"weight": W3, **per_model}, seed)
    out = by_cocktail(name, models, base, W3, seed, **params)
    assert not torch.allclose(out, base)
    assert_agree(out, expected)


def test_ties_sign_election_where_deltas_cancel_agrees_with_mergekit():
    base = torch.zeros(6)
    models = [torch.tensor([1.0, -1.0, 2.0, 0.0, 1.0, -2.0]), torch.tensor([-1.0, 1.0, -2.0, 0.0, 1.0, 2.0])]
    expected = by_mergekit("ties", models, base, {}, {"weight": [0.5, 0.5], "density": [1.0, 1.0]})
    assert torch.equal(by_cocktail("ties", models, base, [0.5, 0.5], density=1.0), expected)
    assert not torch.equal(by_cocktail("ties", models, base, [0.5, 0.5], density=1.0, zero_sign="base"), expected)


OTHER_CASES = [  # (method, models, with base, mergekit shared, mergekit per model, cocktail weights, params)
    ("linear", 3, False, {}, {"weight": [1.0, 0.3, 0.5]}, [1 / 1.8, 0.3 / 1.8, 0.5 / 1.8], {}),
    ("slerp", 1, True, {"t": 0.3}, {}, None, {"t": 0.3}),
    ("nuslerp", 2, False, {}, {"weight": [1.0, 0.5]}, [1.0, 0.5], {}),
    ("nuslerp", 2, True, {"nuslerp_flatten": False}, {"weight": [0.2, 0.5]}, [0.2, 0.5], {"nuslerp_flatten": False}),
    ("nuslerp", 2, True, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, {"weight": [0.2, 0.5]}, [0.2, 0.5],
     {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("multislerp", 3, False, {}, {"weight": [1.0, 0.5, 0.2]}, [1.0, 0.5, 0.2], {}),
    ("multislerp", 3, True, {}, {"weight": [1.0, 0.5, 0.2]}, [1.0, 0.5, 0.2], {}),
    ("karcher", 3, False, {"max_iter": 20}, {}, None, {"max_iter": 20}),
    ("model_stock", 3, True, {}, {}, None, {}),
    ("model_stock", 3, True, {"filter_wise": True}, {}, None, {"filter_wise": True}),
    ("sce", 3, True, {"select_topk": 0.4}, {}, None, {"select_topk": 0.4}),
    ("ram", 3, True, {"epsilon": 0.05}, {}, None, {"epsilon": 0.05}),
    ("ramplus_tl", 3, True, {"epsilon": 0.05, "r": 0.3}, {}, None, {"epsilon": 0.05, "r": 0.3}),
    ("nearswap", 1, True, {"t": 0.05}, {}, None, {"t": 0.05}),
    ("arcee_fusion", 1, True, {}, {}, None, {"seed": 0}),
    ("passthrough", 1, False, {}, {"scale": [0.7]}, None, {"scale": 0.7}),
]


@pytest.mark.parametrize("shape", [(16, 24), (24,)])
@pytest.mark.parametrize("name, count, with_base, shared, per_model, weights, params", OTHER_CASES)
def test_other_methods_agree_with_mergekit(name, count, with_base, shared, per_model, weights, params, shape):
    base, models = tensors(shape, count, seed=len(name) + count)
    if name == "model_stock":  # deltas pointing apart: mergekit does not clamp their mean cosine at 0
        models[1] = base - (models[0] - base) + 0.02 * rand(*shape, seed=99)
    expected = by_mergekit(name, models, base if with_base else None, shared, per_model)
    if name == "slerp":  # mergekit: t=0 is the base, t=1 the other model; cocktail: the first and second model
        out = by_cocktail(name, [base, models[0]], None, weights, **params)
    else:
        out = by_cocktail(name, models, base if with_base else None, weights, **params)
    assert_agree(out, expected)


def test_every_mergekit_method_is_covered():
    names = {m.spec.name for m in registry.registered_methods()}
    covered = {case[0] for case in TASK_VECTOR_CASES + OTHER_CASES}
    assert names == covered == set(MERGEKIT_METHODS)


# --- whole configs -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    """Tiny Llama checkpoints: a base and three fine-tunes of it (the base plus a small random change)."""
    root = tmp_path_factory.mktemp("llamas")
    base = make_decoder(root / "base", seed=0, num_hidden_layers=LAYERS)
    base_tensors = load_file(str(base / "model.safetensors"))
    paths = {"base": base}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        make_decoder(root / name, seed=0, num_hidden_layers=LAYERS, tokenizer=False)
        generator = torch.Generator().manual_seed(seed)
        tuned = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in base_tensors.items()}
        save_file(tuned, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        paths[name] = root / name
    return paths


def merge_both(text: str, tmp_path: Path) -> tuple[dict, dict]:
    """The tensors mergekit's ``run_merge`` and ``cocktail run`` write for the mergekit config ``text``."""
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "mergekit"),
              MergeOptions(quiet=True, write_model_card=False))
    config = tmp_path / "mergekit.yml"
    config.write_text(text)
    recipe = Recipe.from_yaml(config)
    recipe.output = str(tmp_path / "cocktail")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "negative weights": mergekit configs may extrapolate
        run(recipe)
    return read_folder_tensors(tmp_path / "mergekit"), read_folder_tensors(tmp_path / "cocktail")


def assert_same_tensors(theirs: dict, ours: dict, atol: float = TOLERANCE) -> None:
    assert set(theirs) == set(ours)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        assert torch.allclose(ours[name].float(), theirs[name].float(), rtol=0, atol=atol), \
            (name, (ours[name].float() - theirs[name].float()).abs().max())


def models_block(paths, **parameters) -> str:
    return "models:\n" + "".join(f"  - model: {paths[n]}\n    parameters: {parameters.get(n, '{}')}\n" for n in "abc"
                                 if n in parameters or not parameters)


CONFIGS = {  # mergekit config forms, with "{a}"-style model placeholders
    "linear with a weight gradient": "models:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
                                     "  - model: {b}\n    parameters: {{weight: [0.3, 0.9]}}\n"
                                     "merge_method: linear\ndtype: float32\n",
    "task arithmetic, weights not summing to 1": "models:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
                                                 "  - model: {b}\n    parameters: {{weight: 0.5}}\n"
                                                 "merge_method: task_arithmetic\nbase_model: {base}\n"
                                                 "parameters: {{lambda: 0.8}}\ndtype: float32\n",
    "ties with global density and per-model weight filters":
        "models:\n  - model: {a}\n    parameters:\n      weight:\n        - filter: self_attn\n          value: 0.8\n"
        "        - value: 0.2\n  - model: {b}\n    parameters: {{weight: 0.5, density: [0.9, 0.3]}}\n"
        "  - model: {base}\nmerge_method: ties\nbase_model: {base}\n"
        "parameters: {{density: 0.4, weight: 0.1, rescale: true}}\ndtype: float32\n",
    "breadcrumbs_ties with per-model gamma":
        "models:\n  - model: {a}\n    parameters: {{weight: 1.0, density: 0.6}}\n"
        "  - model: {b}\n    parameters: {{weight: 0.5, density: 0.8, gamma: 0.05}}\n"
        "merge_method: breadcrumbs_ties\nbase_model: {base}\ndtype: float32\n",
    "model_stock": "models:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n"
                   "merge_method: model_stock\nbase_model: {base}\ndtype: float32\n",
    "nuslerp with a base": "models:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
                           "  - model: {b}\n    parameters: {{weight: 0.5}}\n"
                           "merge_method: nuslerp\nbase_model: {base}\ndtype: float32\n",
    "multislerp": "models:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
                  "  - model: {b}\n    parameters: {{weight: 0.5}}\n  - model: {c}\n    parameters: {{weight: 0.2}}\n"
                  "merge_method: multislerp\ndtype: float32\n",
    "karcher with the base as an input": "models:\n  - model: {a}\n  - model: {b}\n"
                                         "merge_method: karcher\nbase_model: {base}\ndtype: float32\n",
    "sce": "models:\n  - model: {a}\n  - model: {b}\n  - model: {c}\nmerge_method: sce\nbase_model: {base}\n"
           "parameters: {{select_topk: 0.5}}\ndtype: float32\n",
    "ramplus_tl": "models:\n  - model: {a}\n  - model: {b}\nmerge_method: ramplus_tl\nbase_model: {base}\n"
                  "dtype: float32\n",
    "two slices with their own gradients and weights":
        "slices:\n"
        "  - sources:\n"
        "      - {{model: {a}, layer_range: [0, 2], parameters: {{weight: [1.0, 0.2], density: 0.6}}}}\n"
        "      - {{model: {b}, layer_range: [0, 2], parameters: {{weight: 0.5}}}}\n"
        "      - {{model: {base}, layer_range: [0, 2]}}\n"
        "    parameters: {{density: [0.3, 0.9], lambda: 1.0}}\n"
        "  - sources:\n"
        "      - {{model: {a}, layer_range: [2, 4], parameters: {{weight: 0.7}}}}\n"
        "      - {{model: {b}, layer_range: [2, 4], parameters: {{weight: [{{filter: self_attn, value: [0.1, 0.9]}}, "
        "{{value: 0.5}}]}}}}\n"
        "      - {{model: {base}, layer_range: [2, 4]}}\n"
        "    parameters: {{lambda: 1.5}}\n"
        "merge_method: ties\nbase_model: {base}\nparameters: {{density: 0.5}}\ndtype: float32\n",
    "nearswap with a t gradient": "models:\n  - model: {a}\nmerge_method: nearswap\nbase_model: {base}\n"
                                  "parameters: {{t: [0.001, 0.02]}}\ndtype: float32\n",
    "passthrough, scaled, written in bfloat16": "models:\n  - model: {a}\n    parameters: {{scale: 0.5}}\n"
                                                "merge_method: passthrough\ndtype: float32\nout_dtype: bfloat16\n",
}


@pytest.mark.parametrize("form", list(CONFIGS))
def test_config_forms_give_mergekit_tensors(form, llamas, tmp_path):
    theirs, ours = merge_both(CONFIGS[form].format(**llamas), tmp_path)
    assert_same_tensors(theirs, ours)


EXAMPLE_MODELS = {  # the models of mergekit's examples, each played by a tiny checkpoint
    "TheBloke/Llama-2-13B-fp16": "base", "mistralai/Mistral-7B-v0.1": "base", "model_a": "base",
    "psmathur/orca_mini_v3_13b": "a", "mistralai/Mistral-7B-Instruct-v0.2": "a", "model_b": "a",
    "garage-bAInd/Platypus2-13B": "b", "BioMistral/BioMistral-7B": "b", "WizardLM/WizardLM-13B-V1.2": "c",
    "WizardLM/WizardMath-13B-V1.0": "c",
}


def example(name: str, llamas, dtype: str = "float32") -> str:
    """mergekit's example config ``name`` pointed at the tiny models (whose 40 layers are 4 here)."""
    text = (EXAMPLES / f"{name}.yml").read_text()
    for model, tiny in EXAMPLE_MODELS.items():
        text = text.replace(model, str(llamas[tiny]))
    text = text.replace("layer_range: [0, 40]", f"layer_range: [0, {LAYERS}]")
    return re.sub(r"^dtype: \w+$", f"dtype: {dtype}", text, flags=re.M)


@pytest.mark.parametrize("name", ["ties", "gradient-slerp", "linear", "bio-merge", "arcee_fusion"])
def test_mergekit_examples_give_mergekit_tensors(name, llamas, tmp_path):
    theirs, ours = merge_both(example(name, llamas), tmp_path)
    assert_same_tensors(theirs, ours)


def test_a_frankenmerge_is_refused_in_one_line(llamas, tmp_path):
    config = tmp_path / "frankenmerge.yml"
    config.write_text(example("orcamini-platy-44layer", llamas))
    with pytest.raises(RecipeError, match=r"slices\[1\] does not take the next layers \(24 on\) from every model of "
                                          r"slices\[0\]: slices that stack, cut or reorder layers make a different "
                                          r"architecture"):
        Recipe.from_yaml(config)


def in_process(*args):
    """``cocktail ARGS`` in this process (a subprocess costs seconds of imports)."""
    from click.testing import CliRunner

    from cocktail.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cocktail_run_and_recipe_from_mergekit_on_the_command_line(llamas, tmp_path):
    config = tmp_path / "ties.yml"
    config.write_text(example("ties", llamas))
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(config.read_text())), str(tmp_path / "mergekit"),
              MergeOptions(quiet=True, write_model_card=False))
    ran = in_process("run", config, "--output", tmp_path / "ran", "--quiet")
    assert ran.exit_code == 0, ran.output
    assert_same_tensors(read_folder_tensors(tmp_path / "mergekit"), read_folder_tensors(tmp_path / "ran"))
    printed = in_process("recipe", "--from-mergekit", config, "--output", tmp_path / "again")
    assert printed.exit_code == 0, printed.output
    recipe = yaml.safe_load(printed.stdout)
    assert recipe["merge_method"] == "ties" and recipe["parameters"]["zero_sign"] == "positive"
    assert recipe["models"][0]["parameters"] == {"density": [1, 0.7, 0.1]}
    (tmp_path / "cocktail.yml").write_text(printed.stdout)
    run(Recipe.from_yaml(tmp_path / "cocktail.yml"))
    assert_same_tensors(read_folder_tensors(tmp_path / "ran"), read_folder_tensors(tmp_path / "again"), atol=0)
    refused = in_process("recipe", "--from-mergekit", config, "--models", llamas["a"])
    assert refused.exit_code == 2 and "--from-mergekit takes the merge from the mergekit config: drop --models" \
        in refused.stderr
    shutil.rmtree(tmp_path / "mergekit")


def test_new_methods_run_by_name_from_cocktail_merge(llamas, tmp_path):
    out = in_process("merge", "--models", llamas["a"], llamas["b"], "--base", llamas["base"], "--method", "della",
                     "--param", "density=0.5", "--param", "epsilon=0.1", "--param", "rescale=density",
                     "--output", tmp_path / "out", "--quiet")
    assert out.exit_code == 0, out.output
    merged, base = read_folder_tensors(tmp_path / "out"), read_folder_tensors(llamas["base"])
    changed = merged["model.layers.0.mlp.up_proj.weight"] != base["model.layers.0.mlp.up_proj.weight"]
    assert 0.5 < changed.float().mean() < 0.9  # some entries of either delta survive, not all
    bad = in_process("merge", "--models", llamas["a"], llamas["b"], "--base", llamas["base"], "--method", "della",
                     "--param", "density=0.9", "--param", "epsilon=0.15", "--output", tmp_path / "bad")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "density ± epsilon must lie in (0, 1)" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_the_recipe_written_beside_a_mergekit_merge_reruns_to_the_same_bytes(llamas, tmp_path):
    config = tmp_path / "ties.yml"
    config.write_text(example("ties", llamas))
    recipe = Recipe.from_yaml(config)
    recipe.output = str(tmp_path / "first")
    run(recipe)
    again = Recipe.from_yaml(tmp_path / "first" / "cocktail_recipe.yaml")
    assert again.models[0].parameters == {"density": [1, 0.7, 0.1]}
    again.output = str(tmp_path / "again")
    run(again)
    first, second = read_folder_tensors(tmp_path / "first"), read_folder_tensors(tmp_path / "again")
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)


def test_slices_where_one_leaves_a_parameter_unset_are_refused_in_one_line(llamas, tmp_path):
    """Filters are matched by RE2 (no lookahead), so the tensors outside the layers cannot say "not a layer":
    a slice that leaves a parameter to the method's default cannot be written as one schedule."""
    config = tmp_path / "mergekit.yml"
    config.write_text(("slices:\n"
                       "  - sources:\n"
                       "      - {{model: {a}, layer_range: [0, 2], parameters: {{weight: 1.0}}}}\n"
                       "      - {{model: {base}, layer_range: [0, 2]}}\n"
                       "  - sources:\n"
                       "      - {{model: {a}, layer_range: [2, 4], parameters: {{weight: 1.0}}}}\n"
                       "      - {{model: {base}, layer_range: [2, 4]}}\n"
                       "    parameters: {{lambda: 1.5}}\n"
                       "merge_method: task_arithmetic\nbase_model: {base}\ndtype: float32\n").format(**llamas))
    with pytest.raises(RecipeError, match="give each slice's parameter a default"):
        Recipe.from_yaml(config)
