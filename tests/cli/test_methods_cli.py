"""Every merge method end to end on tiny real BERT checkpoints: through ``cocktail merge`` (and the API
for per-tensor weights), output tensors compared with computations made here from the input files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, make_bert, read_folder_tensors, run_cli, snapshot
from safetensors.torch import load_file, save_file

import cocktail
from cocktail.errors import CocktailWarning
from cocktail.recipe.recipe import Recipe
from cocktail.runner import run


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    """A base and two fine-tunes of it (base + a small random change), as BertModel folders."""
    root = tmp_path_factory.mktemp("berts")
    base = make_bert(root / "base", seed=0)
    paths = {"base": base}
    base_tensors = load_file(str(base / "model.safetensors"))
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        make_bert(root / name, seed=0)
        generator = torch.Generator().manual_seed(seed)
        tuned = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in base_tensors.items()}
        save_file(tuned, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        paths[name] = root / name
    return paths


def tensors_of(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def merge_cli(out, *args):
    result = run_cli("merge", *args, "--output", out, "--quiet")
    assert result.returncode == 0, result
    return read_folder_tensors(out), result


def test_task_arithmetic(berts, tmp_path):
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], "--weights", "0.7", "0.3",
                       "--base", berts["base"], "--method", "task_arithmetic", "--param", "lambda=1.5")
    a, b, base = tensors_of(berts["a"]), tensors_of(berts["b"]), tensors_of(berts["base"])
    assert set(out) == set(base)
    for name in base:
        expected = base[name] + 1.5 * (0.7 * (a[name] - base[name]) + 0.3 * (b[name] - base[name]))
        assert torch.allclose(out[name], expected, atol=1e-5), name


def _ties_reference(base, deltas, weights, density, lam):
    """TIES with sorting (not topk), written from the paper's three steps."""
    trimmed = []
    for delta in deltas:
        flat = delta.flatten()
        k = max(1, math.ceil(density * flat.numel() - 1e-9))
        order = torch.sort(flat.abs(), descending=True).indices
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order[:k]] = True
        trimmed.append(torch.where(keep, flat, 0.0).view_as(delta))
    elected = torch.sign(sum(w * t for w, t in zip(weights, trimmed)))
    agree = [(torch.sign(t) == elected) & (t != 0) for t in trimmed]
    numerator = sum(w * torch.where(m, t, 0.0) for w, t, m in zip(weights, trimmed, agree))
    denominator = sum(w * m.float() for w, m in zip(weights, agree))
    merged = torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), 0.0)
    return base + lam * merged


def test_ties(berts, tmp_path):
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], berts["c"], "--weights", "0.5", "0.3",
                       "0.2", "--base", berts["base"], "--method", "ties", "--param", "density=0.4")
    models = [tensors_of(berts[k]) for k in "abc"]
    base = tensors_of(berts["base"])
    for name in base:
        deltas = [m[name] - base[name] for m in models]
        expected = _ties_reference(base[name], deltas, [0.5, 0.3, 0.2], 0.4, 1.0)
        assert torch.allclose(out[name], expected, atol=1e-5), name


def test_ties_output_loads_and_runs_in_transformers(berts, tmp_path):
    from transformers import AutoModel

    merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], "--base", berts["base"], "--method", "ties")
    model = AutoModel.from_pretrained(str(tmp_path / "out"))
    hidden = model(input_ids=torch.tensor([[2, 10, 11, 3]])).last_hidden_state
    assert hidden.shape == (1, 4, 32) and torch.isfinite(hidden).all()


def test_dare_linear_drops_and_rescales_and_records_its_seed(berts, tmp_path):
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], "--weights", "1", "--base", berts["base"],
                       "--method", "dare_linear", "--param", "density=0.5", "--seed", "42")
    a, base = tensors_of(berts["a"]), tensors_of(berts["base"])
    kept = total = 0
    for name in base:
        change, delta = out[name] - base[name], a[name] - base[name]
        dropped = change.abs() <= 1e-6
        assert torch.allclose(change[~dropped], 2 * delta[~dropped], atol=1e-5), name
        kept += int((~dropped).sum())
        total += change.numel()
    assert abs(kept / total - 0.5) < 0.02  # ~23k entries
    recipe = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    assert recipe["seed"] == 42 and recipe["merge_method"] == "dare_linear"
    assert recipe["parameters"] == {"density": 0.5}

    # the same seed from Python gives the same bytes; another seed other masks
    for name, seed in (("again", 42), ("other", 43)):
        cocktail.merge([berts["a"]], [1.0], tmp_path / name, base=berts["base"], method="dare_linear",
                       parameters={"density": 0.5}, seed=seed)
    other = read_folder_tensors(tmp_path / "other")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    assert any(not torch.equal(out[n], other[n]) for n in out)


def test_dare_ties_entries_are_dropped_agreeing_deltas(berts, tmp_path):
    density, weights = 0.5, (0.6, 0.4)
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], "--weights", *map(str, weights),
                       "--base", berts["base"], "--method", "dare_ties", "--param", f"density={density}")
    a, b, base = tensors_of(berts["a"]), tensors_of(berts["b"]), tensors_of(berts["base"])
    for name in base:
        da, db = (a[name] - base[name]) / density, (b[name] - base[name]) / density
        same_sign = torch.sign(da) == torch.sign(db)
        both = (weights[0] * da + weights[1] * db) / sum(weights)
        # each entry: nothing kept, one model's rescaled delta, or (signs agreeing) their weighted mean
        candidates = torch.stack([torch.zeros_like(da), da, db, torch.where(same_sign, both, da)])
        change = out[name] - base[name]
        assert ((candidates - change).abs().min(dim=0).values <= 1e-5).all(), name


def _slerp_reference(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    x, y = a.double().flatten(), b.double().flatten()
    cos = float(x @ y / (x.norm() * y.norm()))
    omega = math.acos(cos)
    out = (math.sin((1 - t) * omega) * x + math.sin(t * omega) * y) / math.sin(omega)
    return out.view_as(a).float()


def test_slerp(berts, tmp_path):
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], "--method", "slerp", "--param", "t=0.3")
    a, b = tensors_of(berts["a"]), tensors_of(berts["b"])
    for name in a:
        x, y = a[name].double().flatten(), b[name].double().flatten()
        if abs(float(x @ y / (x.norm() * y.norm()))) > 0.9995:  # (nearly) parallel: linear
            expected = 0.7 * a[name] + 0.3 * b[name]
        else:
            expected = _slerp_reference(a[name], b[name], 0.3)
        assert torch.allclose(out[name], expected, atol=1e-5), name
    recipe = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    assert all("weight" not in m for m in recipe["models"])  # slerp takes none; re-running must not add any


def test_slerp_gradient_over_layers_gives_first_then_second_model(berts, tmp_path):
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], "--method", "slerp", "--param", "t=0,1")
    a, b = tensors_of(berts["a"]), tensors_of(berts["b"])
    for name in a:
        expected = b[name] if name.startswith("encoder.layer.1.") else a[name]  # layer 0 and non-layer: t=0
        assert torch.allclose(out[name], expected, atol=1e-6), name


def test_model_stock(berts, tmp_path):
    out, _ = merge_cli(tmp_path / "out", "--models", berts["a"], berts["b"], berts["c"], "--base", berts["base"],
                       "--method", "model_stock")
    models = [tensors_of(berts[k]) for k in "abc"]
    base = tensors_of(berts["base"])
    for name in base:
        d = [(m[name] - base[name]).double().flatten() for m in models]
        cos = sum(float(d[i] @ d[j] / (d[i].norm() * d[j].norm())) for i in range(3) for j in range(i + 1, 3)) / 3
        cos = max(cos, 0.0)
        t = 3 * cos / (1 + 2 * cos)
        expected = t * sum(m[name] for m in models) / 3 + (1 - t) * base[name]
        assert torch.allclose(out[name], expected, atol=1e-5), name


def test_method_errors_are_one_line_and_write_nothing(berts, tmp_path):
    before = snapshot(berts["a"])
    cases = [
        (["--models", berts["a"], berts["b"], "--method", "ties"], "merge method ties needs a base model"),
        (["--models", berts["a"], berts["b"], "--base", berts["base"], "--method", "ties",
          "--param", 'density=[{"filter": "layer.(", "value": 1}]'], "is not a valid regular expression"),
    ]
    for args, message in cases:
        result = run_cli("merge", *args, "--output", tmp_path / "out", "--quiet")
        assert result.returncode == 2, (args, result)
        assert result.stderr.startswith("error: ") and message in result.stderr, (args, result)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()
    assert snapshot(berts["a"]) == before


@pytest.mark.parametrize("models, options, message", [
    ("abc", {"method": "slerp"}, "slerp merges exactly 2 models, got 3"),
    ("ab", {"method": "slerp", "base": "base"}, "slerp takes no base model"),
    ("a", {"method": "model_stock", "base": "base"}, "model_stock needs at least 2 models besides the base"),
    ("ab", {"method": "ties", "base": "base", "parameters": {"density": 1.5}}, r"parameters.density must be in \(0, 1\]"),
    ("ab", {"method": "dare_linear", "base": "base", "parameters": {"density": 0}}, r"parameters.density must be in \(0, 1\]"),
    ("ab", {"method": "slerp", "parameters": {"t": [0.5, 1.2]}}, r"parameters.t must be in \[0, 1\].*\(tensor "),
    ("ab", {"method": "slerp", "weights": [0.5, 0.5]}, "slerp takes no weights"),
    ("ab", {"method": "ties", "base": "base", "weights": [1.2, -0.2]}, "ties needs non-negative weights"),
    ("ab", {"method": "nope"}, "unknown merge method 'nope'"),
])
def test_method_errors_through_the_api(berts, tmp_path, models, options, message):
    options = dict(options)
    weights = options.pop("weights", None)
    if "base" in options:
        options["base"] = berts[options["base"]]
    with pytest.raises(cocktail.CocktailError, match=message):
        cocktail.merge([berts[m] for m in models], weights, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_filter_matching_no_tensor_warns(berts, tmp_path):
    result = run_cli("merge", "--models", berts["a"], berts["b"], "--base", berts["base"], "--method", "ties",
                     "--param", 'density=[{"filter": "embedings", "value": 1.0}, {"value": 0.5}]',
                     "--output", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result
    assert "warning: parameters.density[0].filter 'embedings' is never used: it matches no merged tensor" in result.stderr


# --- per-tensor weights and parameters (Python API: same engine, no subprocess) -----------------------

def test_filter_weights_keep_one_models_embeddings_and_average_the_rest(berts, tmp_path):
    weights = [[{"filter": "embeddings", "value": 1.0}, {"value": 0.5}],
               [{"filter": "embeddings", "value": 0.0}, {"value": 0.5}]]
    result = cocktail.merge([berts["a"], berts["b"]], weights, tmp_path / "out")
    out, a, b = read_folder_tensors(tmp_path / "out"), tensors_of(berts["a"]), tensors_of(berts["b"])
    for name in a:
        if "embeddings" in name:
            assert torch.equal(out[name], a[name]), name
        else:
            assert torch.allclose(out[name], 0.5 * a[name] + 0.5 * b[name], atol=1e-6), name
    assert result.weights == weights
    recipe = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    assert [m["weight"] for m in recipe["models"]] == weights  # the schedule is recorded, re-runnable


def test_layer_gradient_weights(berts, tmp_path):
    cocktail.merge([berts["a"], berts["b"]], [[0.2, 0.8], [0.8, 0.2]], tmp_path / "out")
    out, a, b = read_folder_tensors(tmp_path / "out"), tensors_of(berts["a"]), tensors_of(berts["b"])
    for name in a:
        wa = 0.8 if name.startswith("encoder.layer.1.") else 0.2  # 2 layers: first and last value; others: first
        assert torch.allclose(out[name], wa * a[name] + (1 - wa) * b[name], atol=1e-6), name


def test_per_tensor_weights_must_sum_to_one_per_tensor(berts, tmp_path):
    with pytest.raises(cocktail.CocktailError, match=r"weights for tensor encoder\.layer\.1\.\S+ sum to 1\.6, not 1"):
        cocktail.merge([berts["a"], berts["b"]], [[0.2, 0.8], 0.8], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cocktail.merge([berts["a"], berts["b"]], [[0.2, 0.8], 0.8], tmp_path / "out", normalize=True)
    out, a, b = read_folder_tensors(tmp_path / "out"), tensors_of(berts["a"]), tensors_of(berts["b"])
    name = "encoder.layer.1.output.dense.weight"
    assert torch.allclose(out[name], 0.5 * a[name] + 0.5 * b[name], atol=1e-6)


def test_weight_filters_without_default_must_cover_every_tensor(berts, tmp_path):
    with pytest.raises(cocktail.CocktailError, match=r"(models\[1\]\.weight|weights\[1\]): no entry matches tensor \S+; add a default"):
        cocktail.merge([berts["a"], berts["b"]], [[{"value": 0.5}], [{"filter": "encoder", "value": 0.5}]],
                       tmp_path / "out")


def test_per_tensor_parameter_with_filter(berts, tmp_path):
    density = [{"filter": "^embeddings", "value": 1.0}, {"value": 0.3}]
    cocktail.merge([berts["a"], berts["b"]], None, tmp_path / "out", method="ties", base=berts["base"],
                   parameters={"density": density, "lambda": 0.9})
    out, base = read_folder_tensors(tmp_path / "out"), tensors_of(berts["base"])
    models = [tensors_of(berts["a"]), tensors_of(berts["b"])]
    for name in base:
        d = 1.0 if name.startswith("embeddings") else 0.3
        expected = _ties_reference(base[name], [m[name] - base[name] for m in models], [0.5, 0.5], d, 0.9)
        assert torch.allclose(out[name], expected, atol=1e-5), name


def test_unused_weight_filter_warns_through_the_api(berts, tmp_path):
    weights = [[{"filter": "classifier", "value": 1.0}, {"value": 0.5}], 0.5]
    with pytest.warns(CocktailWarning, match=r"(models\[0\]\.weight|weights\[0\])\[0\]\.filter 'classifier' is never used"):
        cocktail.merge([berts["a"], berts["b"]], weights, tmp_path / "out")


def test_integer_tensors_are_copied_by_every_method(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        generator = torch.Generator().manual_seed(seed)
        save_file({"layers.0.w": torch.randn(3, 4, generator=generator), "position_ids": torch.arange(6)},
                  str(inputs / f"{name}.safetensors"))
    for method in ("task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock", "slerp"):
        base = None if method == "slerp" else inputs / "base.safetensors"
        cocktail.merge([inputs / "a.safetensors", inputs / "b.safetensors"], None, tmp_path / method,
                       method=method, base=base, model_type="decoder")
        out = load_file(str(tmp_path / method / "model.safetensors"))
        assert out["position_ids"].dtype == torch.int64 and torch.equal(out["position_ids"], torch.arange(6))


# --- shipped recipes ----------------------------------------------------------------------------------

METHOD_RECIPES = [REPO / "recipes" / name for name in (
    "task-arithmetic.yaml", "ties-with-base.yaml", "dare-linear.yaml", "dare-ties.yaml", "slerp-two-models.yaml",
    "model-stock.yaml", "per-layer-weights.yaml")]


def test_every_new_method_has_a_recipe():
    shipped = {yaml.safe_load(p.read_text())["merge_method"] for p in METHOD_RECIPES}
    assert shipped >= {"task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "model_stock"}


@pytest.mark.parametrize("path", METHOD_RECIPES, ids=lambda p: p.name)
def test_shipped_method_recipe_runs_on_tiny_models(path, berts, tmp_path):
    """Put tiny models where the recipe expects them (relative to its folder) and run it."""
    data = yaml.safe_load(path.read_text())
    folder = tmp_path / "recipe"
    folder.mkdir()
    spare = iter(["a", "b", "c"])
    local = []
    for entry in data["models"]:
        target = (folder / entry["path"]).resolve()
        shutil.copytree(berts[next(spare)], target)
        local.append({**entry, "path": str(target)})
    data["models"] = local
    if data.get("base_model"):
        data["base_model"] = str((folder / data["base_model"]).resolve())
        shutil.copytree(berts["base"], data["base_model"])
    data["output"] = str((folder / data["output"]).resolve())
    result = run(Recipe.from_dict(data))
    assert (Path(data["output"]) / "model.safetensors").is_file()
    assert result.recipe.merge_method == data["merge_method"]


def test_linear_refuses_a_base_it_would_ignore(tmp_path):
    a, b, base = (make_bert(tmp_path / n, seed=s) for n, s in (("a", 1), ("b", 2), ("base", 3)))
    result = run_cli("merge", "--models", a, b, "--base", base, "--output", tmp_path / "out")
    assert result.returncode == 2, result
    assert "merge method linear takes no base model" in result.stderr and "task_arithmetic" in result.stderr
    assert not (tmp_path / "out").exists()
