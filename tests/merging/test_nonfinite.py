"""NaN and infinity never reach an output unnoticed: every float tensor written is checked, merged,
copied and cast ones alike, and an output that would hold them is refused (naming the tensors, nothing
written, inputs untouched) unless ``--allow-nonfinite`` / ``allow_nonfinite: true`` / ``allow_nonfinite=True``."""

import warnings

import pytest
import torch
import yaml
from conftest import make_bert, read_folder_tensors, run_cli, snapshot
from safetensors.torch import load_file, save_file

import cocktail
from cocktail.merging.engine import all_finite


def _set(folder, name, index, value):
    """Write ``value`` into entry ``index`` of tensor ``name`` of a model folder's weights."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors[name].view(-1)[index] = value
    save_file(tensors, str(path), metadata={"format": "pt"})


def _refused(result, *names):
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # one line, no traceback
    assert "NaN or infinite" in lines[0] and "--allow-nonfinite" in lines[0] and "nothing was written" in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_fast_check_agrees_with_isfinite(dtype):
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        tensor = (torch.randn(int(torch.randint(1, 300, (1,), generator=generator)), generator=generator)
                  * 10.0 ** float(torch.randint(-3, 4, (1,), generator=generator))).to(dtype)
        for _ in range(trial % 3):  # 0, 1 or 2 bad entries
            bad = [float("nan"), float("inf"), float("-inf")][int(torch.randint(0, 3, (1,), generator=generator))]
            tensor[int(torch.randint(0, tensor.numel(), (1,), generator=generator))] = bad
        assert all_finite(tensor) == bool(torch.isfinite(tensor).all())
    assert all_finite(torch.full((3,), torch.finfo(dtype).max, dtype=dtype))
    assert all_finite(torch.empty(0, dtype=dtype))


def test_an_input_holding_inf_is_refused_naming_the_tensor(two_berts, tmp_path):
    a, b = two_berts
    _set(b, "pooler.dense.bias", 0, float("inf"))
    before = snapshot(tmp_path)
    refused = run_cli("merge", "--models", a, b, "--weights", "1", "0", "-o", tmp_path / "out", "--quiet")
    _refused(refused, "pooler.dense.bias")  # 0 * inf is NaN: weight 0 does not hide it
    assert snapshot(tmp_path) == before  # nothing written, inputs unchanged


def test_allow_nonfinite_writes_it_with_a_warning(two_berts, tmp_path):
    a, b = two_berts
    _set(b, "pooler.dense.bias", 0, float("inf"))
    with pytest.warns(cocktail.CocktailWarning, match=r"1 output tensor would hold NaN or infinite values: "
                                                      r"pooler.dense.bias.*allow_nonfinite=True"):
        result = cocktail.merge([a, b], [1.0, 0.0], tmp_path / "out", allow_nonfinite=True)
    assert any("pooler.dense.bias" in w for w in result.warnings)
    assert torch.isnan(read_folder_tensors(tmp_path / "out")["pooler.dense.bias"][0])
    written = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    assert written["allow_nonfinite"] is True  # the recorded recipe reruns as it ran


def test_the_python_api_refuses_with_the_error_class(two_berts, tmp_path):
    a, b = two_berts
    _set(a, "embeddings.word_embeddings.weight", 5, float("nan"))
    with pytest.raises(cocktail.InputError, match=r"embeddings.word_embeddings.weight.*allow_nonfinite=True"):
        cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no output, no temporary folder


def test_a_float16_overflow_of_a_copied_head_tensor_is_caught(tmp_path):
    """A classifier only the first model has is copied, not merged; cast to float16 a 1e6 becomes inf."""
    head = make_bert(tmp_path / "head", seed=1, model_class="BertForSequenceClassification")
    plain = make_bert(tmp_path / "plain", seed=2)
    _set(head, "classifier.weight", 3, 1e6)
    with pytest.warns(cocktail.CocktailWarning, match="head tensors"):
        with pytest.raises(cocktail.InputError, match=r"^1 output tensor would hold NaN or infinite values: "
                                                      r"classifier.weight \(.*dtype=.*allow_nonfinite=True"):
            cocktail.merge([head, plain], None, tmp_path / "out", dtype="float16")
        assert not (tmp_path / "out").exists()
        cocktail.merge([head, plain], None, tmp_path / "f32")  # float32 holds 1e6
        with pytest.warns(cocktail.CocktailWarning, match="classifier.weight"):
            cocktail.merge([head, plain], None, tmp_path / "f16", dtype="float16", allow_nonfinite=True)
    assert read_folder_tensors(tmp_path / "f32")["classifier.weight"].view(-1)[3] == 1e6
    assert torch.isinf(read_folder_tensors(tmp_path / "f16")["classifier.weight"].view(-1)[3])


def test_a_merged_tensor_cast_to_float16_that_overflows_is_caught(two_berts, tmp_path):
    a, b = two_berts
    _set(a, "encoder.layer.1.output.dense.weight", 7, 3e5)
    _set(b, "encoder.layer.1.output.dense.weight", 7, 3e5)
    with pytest.raises(cocktail.InputError, match=r"^1 output tensor .*: encoder.layer.1.output.dense.weight \("):
        cocktail.merge([a, b], None, tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists()


def test_a_huge_parameter_is_refused_naming_the_tensors(tmp_path):
    """lambda=1e300 is inf in float32: every tensor (LayerNorm ones too, as inf * 0 is NaN) is refused."""
    a, b, base = (make_bert(tmp_path / n, seed=i) for i, n in enumerate(["a", "b", "base"]))
    count = sum(t.is_floating_point() for t in read_folder_tensors(a).values())
    with pytest.raises(cocktail.InputError, match=rf"^{count} output tensors would hold NaN or infinite values: "
                                                  rf"embeddings\.\S+, .* \(and {count - 4} more\)"):
        cocktail.merge([a, b], None, tmp_path / "out", method="task_arithmetic", base=base,
                       parameters={"lambda": 1e300})
    assert not (tmp_path / "out").exists()


def test_the_recipe_key_allows_it_and_the_run_flag_too(two_berts, tmp_path):
    a, b = two_berts
    _set(b, "pooler.dense.bias", 0, float("inf"))
    recipe = {"models": [{"path": str(a), "weight": 1.0}, {"path": str(b), "weight": 0.0}],
              "output": str(tmp_path / "out")}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(recipe))
    refused = run_cli("run", tmp_path / "plain.yaml", "--quiet")
    assert refused.returncode == 2 and "pooler.dense.bias" in refused.stderr, refused
    assert "(allow_nonfinite: true writes them anyway)" in refused.stderr  # the recipe door names its key
    flag = run_cli("run", tmp_path / "plain.yaml", "--quiet", "--allow-nonfinite")
    assert flag.returncode == 0, flag
    assert torch.isnan(read_folder_tensors(tmp_path / "out")["pooler.dense.bias"][0])
    (tmp_path / "allow.yaml").write_text(yaml.safe_dump({**recipe, "output": str(tmp_path / "out2"),
                                                         "allow_nonfinite": True}))
    with pytest.warns(cocktail.CocktailWarning, match="pooler.dense.bias"):
        cocktail.run(tmp_path / "allow.yaml")
    assert torch.isnan(read_folder_tensors(tmp_path / "out2")["pooler.dense.bias"][0])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**recipe, "allow_nonfinite": "yes"}))
    with pytest.raises(cocktail.RecipeError, match=r"allow_nonfinite: expected true or false"):
        cocktail.Recipe.from_yaml(tmp_path / "bad.yaml")


def test_integer_buffers_and_a_clean_merge_raise_nothing(two_berts, tmp_path):
    a, b = two_berts
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", dtype="float16")
    assert result.warnings == []


def test_a_merge_held_in_memory_is_checked_too(two_berts):
    """No output folder, nothing written: a merged state dict or model holding NaN is refused all the same."""
    a, b = (load_file(str(folder / "model.safetensors")) for folder in two_berts)
    b["pooler.dense.bias"][0] = float("inf")
    b["encoder.layer.0.output.dense.weight"][1, 2] = float("nan")
    kept = {name: tensor.clone() for name, tensor in b.items()}
    with pytest.raises(cocktail.InputError, match=r"^2 output tensors would hold NaN or infinite values: "
                                                  r".*encoder.layer.0.output.dense.weight.*pooler.dense.bias.*"
                                                  r"nothing was returned \(allow_nonfinite=True"):
        cocktail.merge_state_dicts([a, b], [0.5, 0.5])
    torch.testing.assert_close(b, kept, rtol=0, atol=0, equal_nan=True)  # the input is untouched
    with pytest.warns(cocktail.CocktailWarning, match=r"2 output tensors .*returned as allow_nonfinite=True asks"):
        merged = cocktail.merge([a, b], [0.5, 0.5], allow_nonfinite=True)
    assert torch.isinf(merged["pooler.dense.bias"][0]) and torch.isnan(merged["encoder.layer.0.output.dense.weight"][1, 2])


def test_a_loaded_model_merged_in_memory_is_checked(two_berts):
    import transformers

    a, b = (transformers.AutoModel.from_pretrained(str(folder)) for folder in two_berts)
    with torch.no_grad():
        b.pooler.dense.bias[0] = float("nan")
    with pytest.raises(cocktail.InputError, match=r"^1 output tensor would hold NaN .*: pooler.dense.bias"):
        cocktail.merge([a, b], [0.5, 0.5])
    with pytest.warns(cocktail.CocktailWarning, match="pooler.dense.bias"):
        merged = cocktail.merge([a, b], [0.5, 0.5], allow_nonfinite=True)
    assert torch.isnan(merged.pooler.dense.bias[0]) and not torch.isnan(a.pooler.dense.bias).any()
