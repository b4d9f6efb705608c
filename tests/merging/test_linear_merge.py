"""The linear merge: exact arithmetic, dtypes, shards, side files, provenance, loadable output."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, make_bert, make_gpt2, make_xlmr, read_folder_tensors, snapshot

import cocktail
from cocktail.errors import IncompatibleModelsError, InputError, OutputError


def test_weights_one_zero_reproduce_the_first_model_bit_for_bit(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [1.0, 0.0], tmp_path / "out")
    out, ref = read_folder_tensors(tmp_path / "out"), read_folder_tensors(a)
    assert set(out) == set(ref)
    for name in ref:
        assert torch.equal(out[name], ref[name]), name


def test_half_half_is_the_mean_computed_independently(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    for name in ta:
        expected = (ta[name].double() + tb[name].double()) / 2
        assert out[name].dtype == torch.float32
        assert torch.equal(out[name], expected.float()), name


def test_three_models_uneven_weights(tmp_path):
    paths = [make_bert(tmp_path / f"m{i}", seed=i) for i in range(3)]
    weights = [0.2, 0.3, 0.5]
    cocktail.merge(paths, weights, tmp_path / "out")
    out = read_folder_tensors(tmp_path / "out")
    inputs = [read_folder_tensors(p) for p in paths]
    for name in out:
        expected = sum(w * t[name].double() for w, t in zip(weights, inputs))
        torch.testing.assert_close(out[name].double(), expected, rtol=0, atol=1e-6)


def test_equal_weights_when_none_are_given(tmp_path):
    paths = [make_bert(tmp_path / f"m{i}", seed=i) for i in range(4)]
    result = cocktail.merge(paths, None, tmp_path / "out")
    assert result.weights == [0.25] * 4


def test_float64_weights_one_zero_reproduce_the_model_bit_for_bit(tmp_path):
    """float64 inputs accumulate in float64: a float32 pass would round every entry to 24 bits."""
    a = make_bert(tmp_path / "a", seed=1, dtype=torch.float64)
    b = make_bert(tmp_path / "b", seed=2, dtype=torch.float64)
    for weights, out in (([1.0, 0.0], "first"), ([0.0, 1.0], "second")):
        cocktail.merge([a, b], weights, tmp_path / out)
    first, second, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "first", tmp_path / "second", a, b))
    for name in ta:
        assert first[name].dtype == second[name].dtype == ta[name].dtype
        assert torch.equal(first[name], ta[name]), name
        assert torch.equal(second[name], tb[name]), name


def test_float64_inputs_are_averaged_in_float64(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, dtype=torch.float64)
    b = make_bert(tmp_path / "b", seed=2, dtype=torch.float64)
    cocktail.merge([a, b], [0.3, 0.7], tmp_path / "out")
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    floats = [name for name in ta if ta[name].is_floating_point()]
    for name in floats:
        exact = ta[name] * 0.3 + tb[name] * 0.7
        scale = ta[name].abs() * 0.3 + tb[name].abs() * 0.7
        # float64 rounding is within a few 1e-16 of the terms' size; float32 accumulation ~1e-8
        assert bool(((out[name] - exact).abs() <= 1e-15 * scale).all()), name
    assert not all(torch.equal(out[n].float().double(), out[n]) for n in floats)  # not float32 in disguise


def test_fp16_inputs_accumulate_in_float32_and_keep_their_dtype(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, dtype=torch.float16)
    b = make_bert(tmp_path / "b", seed=2, dtype=torch.float16)
    weights = [0.3, 0.7]
    cocktail.merge([a, b], weights, tmp_path / "out")
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    for name in ta:
        assert out[name].dtype == torch.float16
        exact = ta[name].double() * 0.3 + tb[name].double() * 0.7
        # float32 accumulation, one rounding to float16: within one float16 ulp of the exact value
        torch.testing.assert_close(out[name], exact.half(), rtol=2**-10, atol=2**-24, msg=name)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_output_dtype_is_chosen_with_dtype(two_berts, tmp_path, dtype, torch_dtype):
    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", dtype=dtype)
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    for name in ta:
        assert out[name].dtype == torch_dtype
        assert torch.equal(out[name], (ta[name] * 0.5 + tb[name] * 0.5).to(torch_dtype))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    assert config[key] == dtype and ({"dtype", "torch_dtype"} - {key}).isdisjoint(config)
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "out")).dtype == torch_dtype


def test_sharded_output_has_an_index_and_loads(two_berts, tmp_path):
    from transformers import AutoModel

    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "one")
    result = cocktail.merge([a, b], [0.5, 0.5], tmp_path / "many", max_shard_size="30KB")
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:
        assert (tmp_path / "many" / shard).stat().st_size <= 30_000 + 8_000  # header + one oversize tensor at most
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in read_folder_tensors(tmp_path / "one").values())
    assert not (tmp_path / "many" / "model.safetensors").exists()
    one, many = read_folder_tensors(tmp_path / "one"), read_folder_tensors(tmp_path / "many")
    assert one.keys() == many.keys() and all(torch.equal(one[k], many[k]) for k in one)
    model = AutoModel.from_pretrained(str(tmp_path / "many"))
    assert torch.equal(model.state_dict()["encoder.layer.0.attention.self.query.weight"],
                       one["encoder.layer.0.attention.self.query.weight"])
    assert any(f.endswith("index.json") for f in result.files)


def test_output_loads_with_automodel_and_sentence_transformers_with_bge_cls_pooling(two_berts, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    out = tmp_path / "out"
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    sentences = ["the cat is red", "a dog on the sea"]
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        cls = model(**tok(sentences, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    expected = torch.nn.functional.normalize(cls, dim=-1)
    got = SentenceTransformer(str(out), device="cpu").encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_side_files_are_copied_and_config_records_dtype(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "out" / name).exists(), name
    assert (tmp_path / "out" / "vocab.txt").read_bytes() == (a / "vocab.txt").read_bytes()


def test_config_from_takes_side_files_from_another_model(two_berts, tmp_path):
    a, b = two_berts
    (b / "special_note.json").write_text('{"from": "b"}')
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", config_from=b)
    assert json.loads((tmp_path / "out" / "special_note.json").read_text()) == {"from": "b"}


def _sentence_transformers_in_subfolder(model, folder):
    """``model``'s files moved into ``folder/0_Transformer``, as older sentence-transformers saved them."""
    import shutil

    shutil.copytree(model, folder / "0_Transformer")
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


def test_config_from_laid_out_unlike_the_first_model_is_refused_before_writing(two_berts, tmp_path):
    """Weights go where the first model keeps them; a config_from whose config.json lives elsewhere
    (a 0_Transformer subfolder) would leave the output's config apart from its weights."""
    a, b = two_berts
    other = _sentence_transformers_in_subfolder(b, tmp_path / "st")
    for dry_run in (True, False):
        with pytest.raises(InputError, match="config_from .*0_Transformer"):
            cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", config_from=other, dry_run=dry_run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "st"]
    out = cocktail.merge([other, b], [0.5, 0.5], tmp_path / "out", config_from=other).output
    assert (out / "0_Transformer" / "config.json").is_file() and (out / "0_Transformer" / "model.safetensors").is_file()


def test_sentence_transformers_input_keeps_its_pooling(minilm_path, tmp_path):
    """MiniLM uses mean pooling: the output must keep it, not get BGE's CLS."""
    cocktail.merge([minilm_path, minilm_path], [0.5, 0.5], tmp_path / "out")
    pooling = json.loads((tmp_path / "out" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False
    assert json.loads((tmp_path / "out" / "modules.json").read_text()) == json.loads((minilm_path / "modules.json").read_text())


def test_reranker_gets_no_sentence_transformers_files(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, model_class="BertForSequenceClassification")
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForSequenceClassification")
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", model_type="reranker")
    assert not (tmp_path / "out" / "modules.json").exists()
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    assert torch.equal(out["classifier.weight"], ta["classifier.weight"] * 0.5 + tb["classifier.weight"] * 0.5)
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    scores = CrossEncoder(str(tmp_path / "out"), device="cpu").predict([("the cat", "a cat")])
    assert len(scores) == 1


def test_dense_module_weights_are_merged_too(tmp_path):
    from safetensors.torch import load_file, save_file

    folders = []
    for seed in (1, 2):
        root = make_bert(tmp_path / f"st{seed}", seed=seed)
        (root / "2_Dense").mkdir()
        torch.manual_seed(seed)
        save_file({"linear.weight": torch.randn(8, 32)}, str(root / "2_Dense" / "model.safetensors"))
        (root / "2_Dense" / "config.json").write_text('{"in_features": 32, "out_features": 8}')
        (root / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        ]))
        folders.append(root)
    cocktail.merge(folders, [0.25, 0.75], tmp_path / "out")
    merged = load_file(str(tmp_path / "out" / "2_Dense" / "model.safetensors"))["linear.weight"]
    d1, d2 = (load_file(str(f / "2_Dense" / "model.safetensors"))["linear.weight"] for f in folders)
    torch.testing.assert_close(merged, d1 * 0.25 + d2 * 0.75, rtol=0, atol=1e-6)
    assert (tmp_path / "out" / "2_Dense" / "config.json").exists()


def test_prefixed_and_bare_names_are_matched_and_heads_reported(tmp_path):
    bare = make_bert(tmp_path / "bare", seed=1)
    cls = make_bert(tmp_path / "cls", seed=2, model_class="BertForSequenceClassification")
    messages = []
    result = cocktail.runner.run(cocktail.Recipe.from_models([cls, bare], [0.5, 0.5], output=str(tmp_path / "out")),
                                 on_warning=messages.append)
    out, tc, tb = (read_folder_tensors(p) for p in (tmp_path / "out", cls, bare))
    name = "bert.encoder.layer.1.output.dense.weight"  # first model's naming
    assert torch.equal(out[name], tc[name] * 0.5 + tb["encoder.layer.1.output.dense.weight"] * 0.5)
    assert torch.equal(out["classifier.weight"], tc["classifier.weight"])  # a head: copied, not averaged
    assert any("classifier.weight" in m and "head" in m for m in messages)
    assert result.warnings == messages


def test_non_float_buffers_are_copied_not_averaged(tmp_path, minilm_path):
    a = tmp_path / "a"
    import shutil

    shutil.copytree(minilm_path, a)
    cocktail.merge([minilm_path, a], [0.5, 0.5], tmp_path / "out")
    out, ref = read_folder_tensors(tmp_path / "out"), read_folder_tensors(minilm_path)
    assert out["embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(out["embeddings.position_ids"], ref["embeddings.position_ids"])


def test_xlmr_and_gpt2_merge_and_load(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    x1, x2 = make_xlmr(tmp_path / "x1", 1), make_xlmr(tmp_path / "x2", 2)
    cocktail.merge([x1, x2], [0.5, 0.5], tmp_path / "xout")
    AutoModel.from_pretrained(str(tmp_path / "xout"))
    g1, g2 = make_gpt2(tmp_path / "g1", 1), make_gpt2(tmp_path / "g2", 2)
    cocktail.merge([g1, g2], [0.5, 0.5], tmp_path / "gout", model_type="decoder")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gout"))
    t1, t2 = read_folder_tensors(g1), read_folder_tensors(g2)
    name = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(model.state_dict()[name], t1[name] * 0.5 + t2[name] * 0.5)
    assert not (tmp_path / "gout" / "modules.json").exists()


def test_provenance_recipe_and_model_card(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [0.25, 0.75], tmp_path / "out")
    recipe = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    assert [m["weight"] for m in recipe["models"]] == [0.25, 0.75]
    assert recipe["merge_method"] == "linear" and recipe["provenance"]["cocktail_version"] == cocktail.__version__
    for entry, folder in zip(recipe["provenance"]["inputs"], (a, b)):
        assert entry["sha256"]["model.safetensors"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["tags"] == ["merge", "cocktail"]
    assert "base_model" not in front  # local folders with no card of their own: no hub id to name
    assert front["library_name"] == "sentence-transformers"
    assert "| `a` | 0.25 |" in card and "| `b` | 0.75 |" in card
    assert str(tmp_path) not in card  # never a local absolute path on a card meant for the hub
    assert "seed" not in card  # linear draws no random numbers


def test_model_card_links_to_this_project_not_to_pypis_cocktail(two_berts, tmp_path):
    """PyPI's `cocktail` is an unrelated project: the card names this distribution (pyproject's name)."""
    from cocktail.version import DISTRIBUTION, PROJECT_PAGE

    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^name = "([^"]+)"', pyproject, re.M).group(1) == DISTRIBUTION != "cocktail"
    assert f"[{DISTRIBUTION}](https://pypi.org/project/{DISTRIBUTION}/)" in card and PROJECT_PAGE in card
    assert "pypi.org/project/cocktail/" not in card


def write_card(folder: Path, **front) -> None:
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(front) + "---\n\n# A fine-tune\n")


def test_model_card_names_hub_models_and_keeps_the_licence(tmp_path):
    """Base models come from the inputs' own cards and from Hugging Face cache folders, as hub ids."""
    cached = make_bert(tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "0123abcd", seed=1)
    tuned = make_bert(tmp_path / "my-finetune", seed=2)
    write_card(cached, license="mit")
    write_card(tuned, base_model="BAAI/bge-small-en-v1.5", license="mit", tags=["sentence-transformers"])
    cocktail.merge([tuned, cached], [0.5, 0.5], tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == ["BAAI/bge-small-en-v1.5"] and front["license"] == "mit"
    assert "| `my-finetune` | 0.5 |" in card and "| `BAAI/bge-small-en-v1.5` | 0.5 |" in card
    assert str(tmp_path) not in card


def test_model_card_says_when_licences_differ_and_ignores_a_hostile_card(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    write_card(a, license="apache-2.0")
    (b / "README.md").write_text("---\nx: &x [1, 2]\ny: [*x, *x, *x]\nlicense: mit\n---\n")  # aliases: not read
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", method="ties", base=make_bert(tmp_path / "base", seed=3),
                   parameters={"density": 0.5})
    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "license" not in front
    assert "licences differ (`a`: apache-2.0, `b`: not stated, `base`: not stated)" in card
    assert "(seed 0)" not in card  # ties draws no random numbers either


def test_same_inputs_same_bytes(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [0.3, 0.7], tmp_path / "one")
    cocktail.merge([a, b], [0.3, 0.7], tmp_path / "two")
    assert (tmp_path / "one" / "model.safetensors").read_bytes() == (tmp_path / "two" / "model.safetensors").read_bytes()


def test_dry_run_checks_everything_and_writes_nothing(two_berts, tmp_path):
    a, b = two_berts
    result = cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", dry_run=True)
    assert result.dry_run and not (tmp_path / "out").exists()
    assert result.summary()["merged_tensors"] == len(read_folder_tensors(a))


# -- bad input: a clear error, and nothing on disk ---------------------------------------------------

def _bad_merge(tmp_path, models, weights, exc, match, **kwargs):
    before = {p.name for p in tmp_path.iterdir()}
    inputs = {str(m): snapshot(m) for m in models if (tmp_path / m).is_dir()}
    with pytest.raises(exc, match=match):
        cocktail.merge(models, weights, tmp_path / "out", **kwargs)
    assert {p.name for p in tmp_path.iterdir()} == before  # no output, no temporary folder
    for m, files in inputs.items():
        assert snapshot(m) == files


def test_vocab_size_mismatch_names_tensor_models_and_sizes(tmp_path):
    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2, vocab_size=120, tokenizer=False)
    _bad_merge(tmp_path, [a, b], [0.5, 0.5], IncompatibleModelsError,
               r"embeddings.word_embeddings.weight is \[\d+, 32\] in .*a but \[120, 32\] in .*b")


def test_different_architectures_are_refused(tmp_path):
    a = make_bert(tmp_path / "a", seed=1)
    x = make_xlmr(tmp_path / "x", seed=1)
    _bad_merge(tmp_path, [a, x], [0.5, 0.5], IncompatibleModelsError, "different architectures.*bert.*xlm-roberta")


def test_missing_float_tensor_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2)
    tensors = load_file(str(b / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.bias"]
    save_file(tensors, str(b / "model.safetensors"), metadata={"format": "pt"})
    _bad_merge(tmp_path, [a, b], [0.5, 0.5], IncompatibleModelsError, "missing from .*b: encoder.layer.1.output.dense.bias")


@pytest.mark.parametrize("weights, match", [
    ([0.5], "got 1 weights for 2 models"),
    ([0.5, 0.6], "sum to 1.1, not 1"),
    ([float("nan"), 1.0], "finite"),
])
def test_bad_weights_are_refused(two_berts, tmp_path, weights, match):
    _bad_merge(tmp_path, list(two_berts), weights, InputError, match)


def test_normalize_divides_by_the_sum(two_berts, tmp_path):
    a, b = two_berts
    result = cocktail.merge([a, b], [1, 3], tmp_path / "out", normalize=True)
    assert result.weights == [0.25, 0.75]


def test_a_warning_points_at_the_callers_line(two_berts, tmp_path):
    import inspect
    import warnings

    a, b = two_berts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        cocktail.merge([a, b], [-0.5, 1.5], tmp_path / "out")
    ours = [w for w in caught if issubclass(w.category, cocktail.CocktailWarning)]
    assert ours and all((w.filename, w.lineno) == (__file__, line) for w in ours), [(w.filename, w.lineno) for w in ours]


def test_negative_weights_extrapolate_with_a_warning(two_berts, tmp_path):
    a, b = two_berts
    with pytest.warns(cocktail.CocktailWarning, match="negative weight"):
        cocktail.merge([a, b], [-0.5, 1.5], tmp_path / "out")
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    name = "pooler.dense.weight"
    torch.testing.assert_close(out[name], ta[name] * -0.5 + tb[name] * 1.5, rtol=0, atol=1e-6)


def test_existing_output_is_refused_unless_force(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [0.3, 0.7], tmp_path / "out")  # a previous merge: the only folder force replaces
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"already exists \(use force=True to replace it\)"):
        cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


@pytest.mark.parametrize("where", ["a", "a/merged", "."])
def test_output_that_is_near_an_input_is_refused_even_with_force(two_berts, tmp_path, where):
    a, b = two_berts
    before = snapshot(a)
    with pytest.raises(OutputError, match="input model"):
        cocktail.merge([a, b], [0.5, 0.5], tmp_path / where, force=True)
    assert snapshot(a) == before


def test_failure_while_writing_leaves_nothing(tmp_path):
    from cocktail.io.output import OutputFolder

    target = tmp_path / "deep" / "out"
    with pytest.raises(RuntimeError):
        with OutputFolder(target) as folder:
            (folder.tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_invalid_shard_size(two_berts, tmp_path):
    _bad_merge(tmp_path, list(two_berts), [0.5, 0.5], InputError, "invalid shard size", max_shard_size="lots")


def test_mix_models_returns_a_loaded_model_like_lm_cocktail(two_berts, tmp_path):
    a, b = two_berts
    model = cocktail.mix_models([str(a), str(b)], model_type="encoder", weights=[0.5, 0.5],
                                output_path=str(tmp_path / "mixed"))
    assert type(model).__name__ == "BertModel"
    ta, tb = read_folder_tensors(a), read_folder_tensors(b)
    name = "encoder.layer.0.output.dense.weight"
    assert torch.equal(model.state_dict()[name], ta[name] * 0.5 + tb[name] * 0.5)
    assert (tmp_path / "mixed" / "modules.json").exists()
    in_memory = cocktail.mix_models_by_layers([str(a), str(b)], model_type="encoder", weights=[0.5, 0.5])
    assert torch.equal(in_memory.state_dict()[name], model.state_dict()[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "mixed"]


def test_a_clean_merge_reports_nothing_non_finite(two_berts, tmp_path):
    import warnings

    a, b = two_berts
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    assert result.warnings == []
