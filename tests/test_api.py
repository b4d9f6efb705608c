"""The Python API with models of every kind: paths, loaded modules, state dicts, mixed.

Every merge is compared bit for bit with what ``cocktail merge`` (the CLI, in a subprocess) writes
for the same weights: the API must be the CLI's engine, not a second one. The CLI's output itself is
checked against a weighted sum computed here from the saved files with plain torch arithmetic.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import make_bert, read_folder_tensors, run_cli, snapshot
from safetensors.torch import load_file

import cocktail

W = (0.3, 0.7)


def weighted(a: dict, b: dict, wa: float = W[0], wb: float = W[1]) -> dict:
    """wa * a + wb * b for float tensors (accumulated in float32), a's value for the others."""
    out = {}
    for name, tensor in a.items():
        if tensor.is_floating_point():
            out[name] = (tensor.float() * wa + b[name].float() * wb).to(tensor.dtype)
        else:
            out[name] = tensor
    return out


def assert_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.allclose(actual[name].float(), expected[name].float(), rtol=1e-6, atol=1e-7), name


def assert_same(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name


def frozen(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    """Two tiny BERTs on disk and loaded, and the CLI's merge of them (``expected``: its tensors)."""
    from transformers import BertModel

    tmp = tmp_path_factory.mktemp("berts")
    a, b = make_bert(tmp / "a", seed=1), make_bert(tmp / "b", seed=2)
    cli = run_cli("merge", "--models", a, b, "--weights", *W, "--output", tmp / "cli", "-q")
    assert cli.returncode == 0, cli
    expected = read_folder_tensors(tmp / "cli")
    assert_close(expected, weighted(load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))))
    return {"a": a, "b": b, "cli": tmp / "cli", "expected": expected,
            "ma": BertModel.from_pretrained(str(a)), "mb": BertModel.from_pretrained(str(b))}


def test_paths_return_merge_result_and_write_the_bytes_the_cli_writes(tmp_path, berts):
    out = berts["cli"]  # the same output path for both: the recipe records it
    moved = tmp_path / "cli"
    shutil.move(out, moved)
    try:
        result = cocktail.merge([berts["a"], berts["b"]], weights=list(W), output=out)
        assert isinstance(result, cocktail.MergeResult)
        assert result.weights == list(W)
        assert snapshot(out) == snapshot(moved)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(moved, out)


def test_modules_give_a_new_module_with_the_cli_tensors_and_are_not_modified(berts):
    ma, mb = berts["ma"], berts["mb"]
    ma.encoder.layer[0].output.dense.weight.grad = torch.ones_like(ma.encoder.layer[0].output.dense.weight)
    before_a, before_b = frozen(ma), frozen(mb)
    merged = cocktail.merge([ma, mb], weights=list(W))
    assert type(merged) is type(ma)
    assert merged is not ma
    assert_same(merged.state_dict(), berts["expected"])
    assert_same(ma.state_dict(), before_a)
    assert_same(mb.state_dict(), before_b)
    assert torch.equal(ma.encoder.layer[0].output.dense.weight.grad,
                       torch.ones_like(ma.encoder.layer[0].output.dense.weight))
    ma.encoder.layer[0].output.dense.weight.grad = None
    assert all(p.grad is None for p in merged.parameters())
    assert all(p.requires_grad for p in merged.parameters())
    # the new model shares no memory with its inputs
    with torch.no_grad():
        merged.embeddings.word_embeddings.weight.add_(1.0)
    assert_same(ma.state_dict(), before_a)


def test_state_dicts_give_a_state_dict_that_shares_nothing_with_inputs(berts):
    sd_a, sd_b = berts["ma"].state_dict(), berts["mb"].state_dict()
    sd_a = {**sd_a, "step": torch.tensor([7, 7])}  # a non-float entry is copied, not averaged
    sd_b = {**sd_b, "step": torch.tensor([7, 7])}
    before = {k: v.clone() for k, v in sd_a.items()}
    merged = cocktail.merge_state_dicts([sd_a, sd_b], weights=list(W))
    assert isinstance(merged, dict)
    assert list(merged) == list(sd_a)  # the first state dict's names and order
    assert_same(merged, {**berts["expected"], "step": torch.tensor([7, 7])})
    assert_same(sd_a, before)
    inputs = {t.untyped_storage().data_ptr() for sd in (sd_a, sd_b) for t in sd.values()}
    assert not any(t.untyped_storage().data_ptr() in inputs for t in merged.values())
    assert_same(cocktail.merge([sd_a, sd_b], weights=list(W)), merged)


def test_state_dicts_of_mixed_dtypes_write_the_bytes_of_the_same_tensors_saved_to_folders(tmp_path, berts):
    from safetensors.torch import save_file

    def state(module):  # a bfloat16 tensor and an int64 one among float32 ones, not in safetensors order
        sd = {"step": torch.tensor([3, 1]), **module.state_dict()}
        sd["pooler.dense.weight"] = sd["pooler.dense.weight"].to(torch.bfloat16)
        return sd

    sds = [state(berts["ma"]), state(berts["mb"])]
    for name, sd in zip(("sa", "sb"), sds):
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(berts["a"] / "config.json", tmp_path / name / "config.json")
    from_folders = cocktail.merge([tmp_path / "sa", tmp_path / "sb"], weights=list(W), output=tmp_path / "folders")
    returned = cocktail.merge(sds, weights=list(W), output=tmp_path / "memory")
    assert (tmp_path / "memory" / "model.safetensors").read_bytes() == \
        (from_folders.output / "model.safetensors").read_bytes()
    assert list(returned) == list(sds[0])
    assert_same(returned, read_folder_tensors(from_folders.output))


@pytest.mark.parametrize("kinds", [("module", "path"), ("state_dict", "path"), ("state_dict", "module"),
                                   ("module", "state_dict")])
def test_mixed_inputs_give_the_same_tensors(berts, kinds):
    def as_kind(kind, key):
        return {"path": berts[key], "module": berts["m" + key], "state_dict": berts["m" + key].state_dict()}[kind]

    merged = cocktail.merge([as_kind(kinds[0], "a"), as_kind(kinds[1], "b")], weights=list(W))
    if kinds[0] == "module":
        assert isinstance(merged, torch.nn.Module)
        merged = merged.state_dict()
    else:
        assert isinstance(merged, dict)
    assert_same(merged, berts["expected"])


def test_module_with_output_writes_the_cli_folder(tmp_path, berts):
    merged = cocktail.merge([berts["ma"], berts["b"]], weights=list(W), output=tmp_path / "api")
    assert isinstance(merged, torch.nn.Module)
    assert_same(merged.state_dict(), berts["expected"])
    api, ref = snapshot(tmp_path / "api"), snapshot(berts["cli"])
    assert set(api) == set(ref)
    provenance = {"README.md", "cocktail_recipe.yaml"}  # they name the input: a folder vs a model in memory
    for name in set(ref) - provenance:
        assert api[name] == ref[name], name
    recipe = (tmp_path / "api" / "cocktail_recipe.yaml").read_text()
    assert "<in memory: BertModel, model 1>" in recipe
    assert "tensors (in memory)" in recipe


def test_tied_weights_are_written_once_and_stay_tied(tmp_path):
    from transformers import BertForMaskedLM

    a = make_bert(tmp_path / "a", seed=1, model_class="BertForMaskedLM")
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForMaskedLM")
    ma, mb = BertForMaskedLM.from_pretrained(str(a)), BertForMaskedLM.from_pretrained(str(b))
    cli = run_cli("merge", "--models", a, b, "--weights", *W, "--output", tmp_path / "cli", "-q")
    assert cli.returncode == 0, cli
    expected = read_folder_tensors(tmp_path / "cli")
    merged = cocktail.merge([ma, mb], weights=list(W), output=tmp_path / "api")
    assert (tmp_path / "api" / "model.safetensors").read_bytes() == (tmp_path / "cli" / "model.safetensors").read_bytes()
    decoder, embeddings = merged.cls.predictions.decoder.weight, merged.bert.embeddings.word_embeddings.weight
    assert decoder.data_ptr() == embeddings.data_ptr()
    assert torch.equal(embeddings, expected["bert.embeddings.word_embeddings.weight"])


def test_dtype_gives_a_module_in_that_dtype(tmp_path, berts):
    merged = cocktail.merge([berts["ma"], berts["mb"]], weights=list(W), dtype="bfloat16")
    expected = cocktail.merge([berts["a"], berts["b"]], weights=list(W), dtype="bfloat16", output=tmp_path / "ref")
    assert_same(merged.state_dict(), read_folder_tensors(expected.output))
    assert berts["ma"].dtype == torch.float32


def test_sentence_transformers_with_dense_module(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    source = make_bert(tmp_path / "bert", seed=1)

    def st_model(seed, folder):
        torch.manual_seed(seed)
        transformer = Transformer(str(source))
        for p in transformer.parameters():
            p.data.add_(0.01 * torch.randn_like(p))
        model = SentenceTransformer(modules=[transformer, Pooling(32, "cls"), Dense(32, 16)], device="cpu")
        model.save(str(folder), create_model_card=False)
        return model

    s1, s2 = st_model(1, tmp_path / "s1"), st_model(2, tmp_path / "s2")
    before = frozen(s1)
    cli = run_cli("merge", "--models", tmp_path / "s1", tmp_path / "s2", "--weights", *W,
                  "--output", tmp_path / "cli", "-q")
    assert cli.returncode == 0, cli
    merged = cocktail.merge([s1, s2], weights=list(W), output=tmp_path / "api")
    assert type(merged) is SentenceTransformer
    assert_same(frozen(s1), before)
    dense = weighted(load_file(str(tmp_path / "s1" / "2_Dense" / "model.safetensors")),
                     load_file(str(tmp_path / "s2" / "2_Dense" / "model.safetensors")))
    assert_close(load_file(str(tmp_path / "cli" / "2_Dense" / "model.safetensors")), dense)
    assert_same(merged[2].state_dict(), load_file(str(tmp_path / "cli" / "2_Dense" / "model.safetensors")))
    for name in ("model.safetensors", "2_Dense/model.safetensors", "2_Dense/config.json", "config.json",
                 "modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer_config.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    reloaded = SentenceTransformer(str(tmp_path / "api"), device="cpu")
    sentences = ["the cat is red", "a dog in the sea"]
    assert torch.allclose(reloaded.encode(sentences, convert_to_tensor=True),
                          merged.encode(sentences, convert_to_tensor=True), atol=1e-5)


def test_errors_are_cocktail_errors_with_the_cli_message(tmp_path, berts):
    wide = make_bert(tmp_path / "wide", seed=3, intermediate_size=48)
    cli = run_cli("merge", "--models", berts["a"], wide, "--output", tmp_path / "x", "-q")
    assert cli.returncode == 2
    with pytest.raises(cocktail.IncompatibleModelsError) as paths_error:
        cocktail.merge([berts["a"], wide], output=tmp_path / "y")
    assert cli.stderr.strip() == f"error: {paths_error.value}"
    from transformers import BertModel

    with pytest.raises(cocktail.IncompatibleModelsError, match="tensor shapes differ: .*<in memory: BertModel, model 2>"):
        cocktail.merge([berts["ma"], BertModel.from_pretrained(str(wide))])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bad_inputs_raise_cocktail_errors(berts):
    sd_a = berts["ma"].state_dict()
    missing = {k: v for k, v in sd_a.items() if k != "pooler.dense.bias"}
    with pytest.raises(cocktail.IncompatibleModelsError, match="missing from .*pooler.dense.bias"):
        cocktail.merge_state_dicts([sd_a, missing])
    as_int = {**sd_a, "pooler.dense.bias": torch.zeros(32, dtype=torch.int64)}
    with pytest.raises(cocktail.IncompatibleModelsError, match="pooler.dense.bias"):
        cocktail.merge_state_dicts([sd_a, as_int])
    with pytest.raises(cocktail.InputError, match="not a tensor"):
        cocktail.merge_state_dicts([sd_a, {**sd_a, "note": "hello"}])
    with pytest.raises(cocktail.InputError, match="expected a state dict"):
        cocktail.merge_state_dicts([sd_a, berts["a"]])
    with pytest.raises(cocktail.InputError, match="expected a model folder, hub id, torch.nn.Module or state dict"):
        cocktail.merge([berts["ma"], 42])
    with pytest.raises(cocktail.InputError, match="got 3 weights for 2 models"):
        cocktail.merge([berts["ma"], berts["mb"]], weights=[0.2, 0.3, 0.5])
    with pytest.raises(cocktail.InputError, match="weights sum to 0.5"):
        cocktail.merge([berts["ma"], berts["mb"]], weights=[0.2, 0.3])
    with pytest.raises(cocktail.InputError, match="list of models"):
        cocktail.merge(berts["ma"])
    with pytest.raises(cocktail.InputError, match="unknown merge method"):
        cocktail.merge_state_dicts([sd_a, sd_a], method="nonsense")
    with pytest.raises(cocktail.InputError, match="model not found"):
        cocktail.merge([berts["ma"], "./no/such/folder"])


def test_every_registered_method_gives_the_same_tensors_from_state_dicts_and_paths(tmp_path, berts):
    base = make_bert(tmp_path / "base", seed=3)
    sds = [berts["ma"].state_dict(), berts["mb"].state_dict()]
    base_sd = load_file(str(base / "model.safetensors"))
    for name, method in sorted(cocktail.METHODS.items()):
        if method.statistics is not None:  # examples or statistics needed: tests/fewshot/test_statistics.py
            continue
        count = min(2, method.max_models or 2)  # nearswap, arcee_fusion, passthrough merge one model
        weights = list(W) if method.uses_weights and count == 2 else None
        required = {key: 0.01 for key, value in method.defaults.items() if value is None}  # nearswap's t
        result = cocktail.merge([berts["a"], berts["b"]][:count], weights=weights, output=tmp_path / f"out-{name}",
                                method=name, base=base if method.needs_base else None, parameters=required)
        merged = cocktail.merge_state_dicts(sds[:count], weights=weights, method=name,
                                            base=base_sd if method.needs_base else None, **required)
        assert_same(merged, read_folder_tensors(result.output))


def test_task_arithmetic_uses_the_base_when_available(berts, tmp_path):
    base_sd = load_file(str(make_bert(tmp_path / "base", seed=3) / "model.safetensors"))
    sd_a, sd_b = berts["ma"].state_dict(), berts["mb"].state_dict()
    merged = cocktail.merge_state_dicts([sd_a, sd_b], weights=[1.0, 0.0], method="task_arithmetic", base=base_sd)
    for name, tensor in merged.items():  # base + 1 * (a - base) + 0 * (b - base) == a
        assert torch.allclose(tensor, sd_a[name], atol=1e-6), name


def test_weights_from_examples(tmp_path, berts):
    examples = [{"query": "the cat is red", "pos": ["a red cat"], "neg": ["blue sea water"]},
                {"query": "fast car", "pos": ["a fast car"], "neg": ["the moon and the sun"]}]
    expected = cocktail.weights_from_examples([berts["a"], berts["b"]], examples, model_type="encoder")
    a = load_file(str(berts["a"] / "model.safetensors"))
    b = load_file(str(berts["b"] / "model.safetensors"))
    merged = cocktail.merge([berts["ma"], berts["b"]], weights="examples", examples=examples)  # in memory
    assert_close(merged.state_dict(), weighted(a, b, *expected))
    cocktail.merge([berts["ma"], berts["b"]], weights="examples", examples=examples,
                   output=tmp_path / "out")  # the folder, through run()
    assert_close(read_folder_tensors(tmp_path / "out"), weighted(a, b, *expected))
    with pytest.raises(cocktail.InputError, match="not state dicts"):
        cocktail.merge([berts["ma"].state_dict(), berts["b"]], weights="examples", examples=examples)


def test_help_explains_the_arguments():
    doc = cocktail.merge.__doc__
    for word in ("models", "weights", "output", "state dict", "torch.nn.Module", "Returns", "Raises", "examples"):
        assert word in doc
    assert "Args" in cocktail.merge_state_dicts.__doc__
    assert "train_end" in cocktail.CocktailCallback.__doc__


def test_a_merge_result_prints_as_a_short_summary_not_every_planned_tensor(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    names = list(read_folder_tensors(a))
    result = cocktail.merge([a, b], weights=[0.3, 0.7], output=tmp_path / "out")
    counts = result.summary()
    shown = str(result)
    assert shown == repr(result) == (
        f"MergeResult(wrote {tmp_path / 'out'}; linear of 2 models, weights [0.3, 0.7]: {counts['merged_tensors']} "
        f"tensors merged, {counts['copied_tensors']} copied, {counts['parameters']:,} parameters; 0 warnings; "
        ".summary() for the rest)")
    assert not any(name in shown for name in names)
    dry = cocktail.merge([a, b], dry_run=True)
    assert str(dry).startswith("MergeResult(dry run, nothing written; linear of 2 models, weights [0.5, 0.5]: ")
    assert repr(dry.plan) == (f"Plan(2 models: {counts['merged_tensors']} tensors merged, {counts['copied_tensors']} "
                              f"copied, {counts['parameters']:,} parameters)")
