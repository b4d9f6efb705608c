"""The model type is read off config.json when it is not given, and a given type the config
contradicts is refused (a reranker merged as an embedder would get bi-encoder files and be scored as one)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, make_bert, make_decoder, run_cli, snapshot

import cocktail
from cocktail.recipe import model_type
from cocktail.recipe.model_type import detect


@pytest.fixture
def rerankers(tmp_path):
    return [make_bert(tmp_path / f"r{i}", seed=i, model_class="BertForSequenceClassification") for i in (1, 2)]


def test_a_reranker_merged_without_a_type_is_merged_as_a_reranker(rerankers, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    res = run_cli("merge", "--models", *rerankers, "--weights", "0.3", "0.7", "-o", tmp_path / "m", "--json")
    assert res.returncode == 0, res
    assert json.loads(res.stdout)["model_type"] == "reranker"
    out = tmp_path / "m"
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()  # no bi-encoder files
    assert yaml.safe_load((out / "cocktail_recipe.yaml").read_text())["model_type"] == "reranker"
    # the merged cross-encoder scores what the hand-made merge of the two scores
    a, b = (AutoModelForSequenceClassification.from_pretrained(str(r)) for r in rerankers)
    expected = {k: 0.3 * v + 0.7 * b.state_dict()[k] for k, v in a.state_dict().items()}
    a.load_state_dict(expected)
    merged = AutoModelForSequenceClassification.from_pretrained(str(out))
    batch = AutoTokenizer.from_pretrained(str(out))(["a query"], ["a passage"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(**batch).logits, a.eval()(**batch).logits)


def test_an_embedder_merged_without_a_type_still_gets_sentence_transformers_files(two_berts, tmp_path):
    cocktail.merge(list(two_berts), [0.5, 0.5], tmp_path / "m")
    assert (tmp_path / "m" / "modules.json").exists()
    assert yaml.safe_load((tmp_path / "m" / "cocktail_recipe.yaml").read_text())["model_type"] == "encoder"


@pytest.mark.parametrize("door", ["cli", "python"])
def test_a_type_the_config_contradicts_is_refused(rerankers, tmp_path, door):
    before = [snapshot(r) for r in rerankers]
    if door == "cli":
        res = run_cli("merge", "--models", *rerankers, "--model-type", "encoder", "-o", tmp_path / "m")
        assert res.returncode == 2, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --model-type encoder contradicts"), res
        assert "BertForSequenceClassification, a reranker model" in lines[0]
    else:
        with pytest.raises(cocktail.InputError, match=r"model_type= encoder contradicts .*a reranker model"):
            cocktail.merge(rerankers, [0.5, 0.5], tmp_path / "m", model_type="encoder")
    assert not (tmp_path / "m").exists()
    assert [snapshot(r) for r in rerankers] == before


def test_a_recipe_type_the_config_contradicts_is_refused(two_berts, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_type: reranker\nmodels: [{two_berts[0]}, {two_berts[1]}]\noutput: {tmp_path / 'm'}\n")
    res = run_cli("run", recipe)
    assert res.returncode == 2 and "model_type: reranker contradicts" in res.stderr, res
    assert "its config.json says BertModel, an encoder model" in res.stderr, res


def test_the_first_model_decides_the_type_as_it_gives_the_output_its_config(two_berts, rerankers, tmp_path):
    """An encoder merges with the encoder inside a classifier (its ``bert.`` names are matched)."""
    result = cocktail.merge([two_berts[0], rerankers[0]], [0.5, 0.5], tmp_path / "m")
    assert result.recipe.model_type == "encoder" and (tmp_path / "m" / "modules.json").exists()


def test_causal_lms_are_detected_and_take_the_llm_types_that_build_on_them(tmp_path):
    lms = [make_decoder(tmp_path / f"d{i}", seed=i) for i in (1, 2)]
    result = cocktail.merge(lms, [0.5, 0.5], tmp_path / "m")
    assert result.recipe.model_type == "decoder"
    assert not (tmp_path / "m" / "modules.json").exists()
    assert cocktail.merge(lms, [0.5, 0.5], tmp_path / "r", model_type="llm-reranker").recipe.model_type == "llm-reranker"
    with pytest.raises(cocktail.InputError, match="contradicts"):
        cocktail.merge(lms, [0.5, 0.5], tmp_path / "x", model_type="reranker")


def test_detect_reads_the_architecture():
    assert detect({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}) == "encoder"
    assert detect({"architectures": ["BertForMaskedLM"], "model_type": "bert"}) == "encoder"
    assert detect({"architectures": ["MistralModel"], "model_type": "mistral"}) == "llm-embedder"  # bge-en-icl
    assert detect({"architectures": ["Gemma2Model"], "model_type": "gemma2"}) == "llm-embedder"
    assert detect({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}) == "decoder"
    assert detect({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}) == "decoder"
    assert detect({"architectures": ["XLMRobertaForSequenceClassification"]}) == "reranker"
    assert detect({"model_type": "bert"}) is None  # says nothing: any type is taken
    assert detect({"architectures": ["MyNet"], "model_type": "my-net", "auto_map": {}}) is None  # custom code


def test_weights_from_examples_detect_the_type_too(rerankers, tmp_path):
    examples = tmp_path / "ex.jsonl"
    examples.write_text("".join(json.dumps({"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"]}) + "\n"
                                for i in range(3)))
    res = run_cli("weights", "--models", *rerankers, "--examples", examples, "--json")
    assert res.returncode == 0, res
    assert json.loads(res.stdout)["model_type"] == "reranker"
    res = run_cli("weights", "--models", *rerankers, "--examples", examples, "--model-type", "encoder")
    assert res.returncode == 2 and "--model-type encoder contradicts" in res.stderr, res


def names_to_check():
    """(class name, family) pairs: every one the name tables decide, and those the test models use."""
    pairs = [(prefix + head, family) for family, prefix in model_type.ENCODER_FAMILIES.items()
             for head in (*model_type.ENCODER_HEADS, "ForSequenceClassification", "ForCausalLM")]
    pairs += [(bare, family) for family, bare in model_type.BARE_DECODERS.items()]
    pairs += [(name, None) for name in sorted(model_type.CAUSAL_LM_HEADS)]
    pairs += [(prefix + head, family) for family, prefix in
              {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "gemma2": "Gemma2", "gemma": "Gemma"}.items()
              for head in ("ForCausalLM", "Model", "ForSequenceClassification")]
    return pairs + [("GPT2LMHeadModel", "gpt2"), ("XLMRobertaModel", "xlm-roberta")]


def test_the_types_read_from_names_alone_are_transformers_answers():
    """The shortcut that spares the import of transformers gives what transformers' tables give."""
    from transformers.models.auto import modeling_auto as auto

    for family, prefix in model_type.ENCODER_FAMILIES.items():  # the prefixes are the families' own
        assert auto.MODEL_MAPPING_NAMES[family] == prefix + "Model", family
    for family, bare in model_type.BARE_DECODERS.items():
        assert auto.MODEL_MAPPING_NAMES[family] == bare, family
    assert model_type.CAUSAL_LM_HEADS <= set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    for arch, family in names_to_check():
        by_name = model_type.detect_by_name(arch, family)
        assert by_name is not None and by_name == model_type.detect_with_transformers(arch, family), (arch, family)
    assert model_type.detect_by_name("NomicBertModel", "nomic_bert") is None  # not in the tables: transformers decides
    assert detect({"architectures": ["BertModel"], "model_type": ["bert"]}) is None  # a family that is no string


def test_a_merge_of_encoders_or_rerankers_does_not_import_transformers(two_berts, rerankers, tmp_path):
    """Reading the model type must not cost the import of transformers (over a second) when the names decide it."""
    code = (f"import sys, cocktail\n"
            f"cocktail.merge([{str(two_berts[0])!r}, {str(two_berts[1])!r}], [0.5, 0.5], {str(tmp_path / 'e')!r})\n"
            f"cocktail.merge([{str(rerankers[0])!r}, {str(rerankers[1])!r}], [0.5, 0.5], {str(tmp_path / 'r')!r})\n"
            f"assert 'transformers' not in sys.modules, 'transformers was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "e" / "modules.json").exists() and not (tmp_path / "r" / "modules.json").exists()
