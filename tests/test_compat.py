"""A merged model loads with the tools users load models with, and embeds / scores the same way.

Encoders: ``transformers.AutoModel`` and ``sentence_transformers.SentenceTransformer`` give the same
normalised CLS embeddings as BGE's documented recipe (``last_hidden_state[:, 0]``, L2 normalise), and
so does cocktail's own encoder (the one ``cocktail eval`` uses). Rerankers:
``AutoModelForSequenceClassification`` and ``sentence_transformers.CrossEncoder`` give the same scores.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_bert

import cocktail

sentence_transformers = pytest.importorskip("sentence_transformers")

SENTENCES = ["the cat is red", "a dog is searching for the blue car", "science paper about a protein and a gene",
             "sun"]


def bge_recipe(folder, texts) -> torch.Tensor:
    """BGE's documentation: CLS token of the last hidden state, then L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        output = model(**encoded)
    return torch.nn.functional.normalize(output.last_hidden_state[:, 0], p=2, dim=1)


@pytest.fixture
def merged_encoder(tmp_path):
    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2)
    cocktail.merge([a, b], [0.3, 0.7], tmp_path / "merged")
    return tmp_path / "merged"


def test_merged_encoder_loads_in_automodel_and_sentence_transformers(merged_encoder):
    expected = bge_recipe(merged_encoder, SENTENCES)
    model = sentence_transformers.SentenceTransformer(str(merged_encoder), device="cpu")
    st = model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True).cpu()
    torch.testing.assert_close(st, expected, atol=1e-5, rtol=0)
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]


def test_cocktail_encoder_matches_the_recipe(merged_encoder):
    from cocktail.modeling.encoder import Encoder

    encoder = Encoder.open(str(merged_encoder), device="cpu", batch_size=3)
    assert encoder.pooling.modes == ("cls",)
    torch.testing.assert_close(encoder.encode(SENTENCES), bge_recipe(merged_encoder, SENTENCES), atol=1e-5, rtol=0)


def test_cocktail_encoder_follows_sentence_transformers_pooling(minilm_path):
    """The real all-MiniLM-L6-v2 pools by mean: cocktail's encoder must agree with sentence-transformers."""
    from cocktail.modeling.encoder import Encoder

    encoder = Encoder.open(str(minilm_path), device="cpu", batch_size=2)
    assert encoder.pooling.modes == ("mean",) and encoder.max_length == 256
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby. " * 80]
    st = sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu")
    expected = st.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu()
    torch.testing.assert_close(encoder.encode(texts), expected, atol=1e-5, rtol=0)


def test_merged_reranker_loads_in_sequence_classification_and_cross_encoder(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    a = make_bert(tmp_path / "a", seed=1, model_class="BertForSequenceClassification")
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForSequenceClassification")
    out = tmp_path / "merged"
    cocktail.merge([a, b], [0.5, 0.5], out, model_type="reranker")
    pairs = [("red cat", "the cat is red"), ("blue dog", "one two three"), ("protein", "a gene and a cell")]

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        encoded = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, truncation=True,
                            return_tensors="pt")
        logits = model(**encoded).logits.view(-1)
    # the merge really is the average of the two heads, not a copy or a fresh random head
    merged_head = model.classifier.weight
    heads = [AutoModelForSequenceClassification.from_pretrained(str(m)).classifier.weight for m in (a, b)]
    torch.testing.assert_close(merged_head, (heads[0] + heads[1]) / 2)

    cross = sentence_transformers.CrossEncoder(str(out), device="cpu")
    scores = torch.as_tensor(cross.predict(pairs, activation_fn=torch.nn.Identity()))
    torch.testing.assert_close(scores.float(), logits, atol=1e-5, rtol=0)


def test_a_model_saved_by_sentence_transformers_5_or_later_keeps_its_pooling(minilm_path, tmp_path):
    """sentence-transformers >= 5 writes ``"pooling_mode": "mean"`` instead of the old flags: eval and the
    few-shot losses must read both."""
    from cocktail.modeling.encoder import Encoder
    from cocktail.modeling.pooling import read_pooling

    st = sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu")
    st.save(str(tmp_path / "saved"))
    pooling_config = json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())
    assert read_pooling(tmp_path / "saved").modes == ("mean",)
    assert read_pooling(minilm_path).modes == ("mean",)  # the old flags, as shipped
    texts = ["A man is eating food.", "The girl is carrying a baby."]
    expected = st.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu()
    torch.testing.assert_close(Encoder.open(str(tmp_path / "saved"), device="cpu").encode(texts), expected,
                               atol=1e-5, rtol=0)
    assert pooling_config.get("pooling_mode", "mean") == "mean"


def test_encoder_takes_weights_saved_with_the_base_model_prefix(tmp_path):
    """Weights named as a ``BertFor...`` checkpoint names them (``bert.`` prefix, a head) fill the
    encoder's bare model, as the merge plan matches them."""
    import shutil

    from conftest import make_bert, read_folder_tensors
    from safetensors.torch import save_file

    from cocktail.modeling.encoder import Encoder

    other = make_bert(tmp_path / "other", seed=2)
    prefixed = tmp_path / "prefixed"
    shutil.copytree(other, prefixed)
    tensors = {f"bert.{name}": t for name, t in read_folder_tensors(other).items()}
    tensors["classifier.weight"] = torch.zeros(1, 32)  # a head the encoder has no place for
    save_file(tensors, str(prefixed / "model.safetensors"))
    expected = Encoder.open(str(other), device="cpu").encode(SENTENCES)
    torch.testing.assert_close(Encoder.open(str(prefixed), device="cpu").encode(SENTENCES), expected, atol=1e-6, rtol=0)


DATA_AWARE_EXAMPLES = [{"query": "the cat", "pos": ["a red cat"], "neg": ["the sea", "one two"]},
                       {"query": "a dog", "pos": ["the blue dog runs"], "neg": ["a gene"]}]
KEEP_EXAMPLES = [{"query": "science paper", "pos": ["a protein and a gene"], "neg": ["the cat is red"]}]


def data_aware_inputs(tmp_path):
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in DATA_AWARE_EXAMPLES) + "\n")
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(e) for e in KEEP_EXAMPLES) + "\n")
    return tmp_path / "t.jsonl", tmp_path / "k.jsonl"


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_a_data_aware_encoder_merge_loads_in_sentence_transformers_as_bge_embeds(tmp_path, method):
    """A RegMean / Fisher merge is an ordinary output: sentence-transformers loads it and embeds as BGE's
    recipe does, and it is not the linear average at the same weights (the statistics moved it)."""
    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2)
    target, keep = data_aware_inputs(tmp_path)
    out = tmp_path / "fitted"
    cocktail.merge([a, b], [0.5, 0.5], out, method=method, base=b, examples=target, keep=keep)
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "linear")
    expected = bge_recipe(out, SENTENCES)
    model = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    st = model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True).cpu()
    torch.testing.assert_close(st, expected, atol=1e-5, rtol=0)
    assert (expected - bge_recipe(tmp_path / "linear", SENTENCES)).abs().max() > 1e-4


def test_a_regmean_reranker_merge_loads_in_cross_encoder(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    a = make_bert(tmp_path / "a", seed=1, model_class="BertForSequenceClassification")
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForSequenceClassification")
    target, keep = data_aware_inputs(tmp_path)
    out = tmp_path / "fitted"
    cocktail.merge([a, b], [0.5, 0.5], out, model_type="reranker", method="regmean", base=b, examples=target,
                   keep=keep)
    pairs = [("red cat", "the cat is red"), ("blue dog", "one two three")]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        encoded = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
        logits = model(**encoded).logits.view(-1)
    cross = sentence_transformers.CrossEncoder(str(out), device="cpu")
    scores = torch.as_tensor(cross.predict(pairs, activation_fn=torch.nn.Identity()))
    torch.testing.assert_close(scores.float(), logits, atol=1e-5, rtol=0)
