"""FlagEmbedding (1.4.2), the BGE models' own client, loads cocktail's outputs and computes what the
hand-computed merge computes: ``FlagModel`` (dense, CLS), ``BGEM3FlagModel`` (dense, lexical weights,
ColBERT vectors) and ``FlagReranker``.

FlagEmbedding 1.4.2 imports ``transformers.modeling_attn_mask_utils`` (for its decoder rerankers), which
transformers 5 removed: where it is missing, the ``flag`` fixture puts a stand-in module under that name
for the import only (it is never used by the encoder classes tested here, and never shipped by cocktail).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

import pytest
import torch
from conftest import M3_WORDS, make_bert, make_m3, read_folder_tensors, run_cli

MASK_UTILS = "transformers.modeling_attn_mask_utils"
MASK_UTILS_NAMES = ("AttentionMaskConverter", "_prepare_4d_attention_mask", "_prepare_4d_causal_attention_mask",
                    "_prepare_4d_causal_attention_mask_for_sdpa")
W = (0.3, 0.7)
TOL = dict(atol=2e-6, rtol=1e-5)  # float32: the same sums, batched differently


@pytest.fixture(scope="module")
def flag():
    """The FlagEmbedding package (skipped where the ``flag`` extra is not installed)."""
    if importlib.util.find_spec("FlagEmbedding") is None:
        pytest.skip("FlagEmbedding is not installed (pip install -e '.[flag]')")
    stand_in = None
    try:
        importlib.import_module(MASK_UTILS)
    except ImportError:  # transformers 5: a stand-in for the removed module, for the import only
        stand_in = types.ModuleType(MASK_UTILS)
        for name in MASK_UTILS_NAMES:
            setattr(stand_in, name, type(name, (), {}))
        sys.modules[MASK_UTILS] = stand_in
    try:
        import FlagEmbedding

        yield FlagEmbedding
    finally:
        if stand_in is not None and sys.modules.get(MASK_UTILS) is stand_in:
            del sys.modules[MASK_UTILS]


def merged_by_hand(a, b) -> dict[str, torch.Tensor]:
    ta, tb = read_folder_tensors(a), read_folder_tensors(b)
    return {k: (W[0] * ta[k] + W[1] * tb[k]) if ta[k].is_floating_point() else ta[k] for k in ta}


def merge(a, b, out, *extra):
    result = run_cli("merge", "--models", a, b, "--weights", *map(str, W), "-o", out, "--quiet", *extra)
    assert result.returncode == 0, result
    return out


def hand_model(model_class, folder, state):
    import transformers

    model = getattr(transformers, model_class).from_pretrained(str(folder)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing)
    return model


TEXTS = ["the red cat is fast", "a big dog", "science paper on protein and gene study in the brain cell"]


def test_flag_model_loads_a_merged_bge_as_the_hand_computed_merge(tmp_path, flag):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    out = merge(a, b, tmp_path / "merged")
    got = torch.from_numpy(flag.FlagModel(str(out), use_fp16=False, devices="cpu").encode(TEXTS))
    from transformers import AutoTokenizer

    model = hand_model("BertModel", a, merged_by_hand(a, b))
    batch = AutoTokenizer.from_pretrained(str(a))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(**batch).last_hidden_state[:, 0], dim=-1)
    torch.testing.assert_close(got, expected, **TOL)


def test_flag_model_loads_a_regmean_merge_as_transformers_runs_it(tmp_path, flag):
    """A data-aware merge is a checkpoint like any other: FlagModel embeds with its weights, which are
    not the linear average."""
    import json

    from transformers import AutoModel, AutoTokenizer

    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    examples = tmp_path / "few.jsonl"
    examples.write_text("".join(json.dumps({"query": q, "pos": [p], "neg": [n]}) + "\n" for q, p, n in
                                [("red cat", "the red cat is fast", "a big dog"),
                                 ("protein", "science paper on protein and gene", "the cat")]))
    out = tmp_path / "regmean"
    result = run_cli("merge", "--models", a, b, "--base", b, "--method", "regmean", "--examples", examples,
                     "--keep", examples, "-o", out, "--quiet")
    assert result.returncode == 0, result
    got = torch.from_numpy(flag.FlagModel(str(out), use_fp16=False, devices="cpu").encode(TEXTS))
    model = AutoModel.from_pretrained(str(out)).eval()
    batch = AutoTokenizer.from_pretrained(str(out))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(**batch).last_hidden_state[:, 0], dim=-1)
    torch.testing.assert_close(got, expected, **TOL)
    name = "encoder.layer.0.attention.self.query.weight"
    ta, tb, merged = read_folder_tensors(a), read_folder_tensors(b), read_folder_tensors(out)
    assert not torch.allclose(merged[name], 0.5 * ta[name] + 0.5 * tb[name], atol=1e-4)


def m3_by_hand(a, b, texts):
    """dense, lexical weights and ColBERT vectors of the hand-merged tiny bge-m3, as BGEM3FlagModel defines them."""
    from transformers import AutoTokenizer

    heads = {}
    for head in ("colbert_linear", "sparse_linear"):
        ha, hb = (torch.load(f / f"{head}.pt", weights_only=True) for f in (a, b))
        heads[head] = {k: W[0] * ha[k] + W[1] * hb[k] for k in ha}
    model = hand_model("XLMRobertaModel", a, merged_by_hand(a, b))
    tokenizer = AutoTokenizer.from_pretrained(str(a))
    special = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    dense, lexical, colbert = [], [], []
    for text in texts:  # one at a time: no padding to think about
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0]
        dense.append(torch.nn.functional.normalize(hidden[0], dim=-1))
        weights = torch.relu(hidden @ heads["sparse_linear"]["weight"].T + heads["sparse_linear"]["bias"])[:, 0]
        mine: dict[str, float] = {}
        for token, weight in zip(ids["input_ids"][0].tolist(), weights.tolist()):
            if token not in special and weight > 0:
                mine[str(token)] = max(mine.get(str(token), 0.0), weight)
        lexical.append(mine)
        vectors = hidden[1:] @ heads["colbert_linear"]["weight"].T + heads["colbert_linear"]["bias"]
        colbert.append(torch.nn.functional.normalize(vectors, dim=-1))
    return torch.stack(dense), lexical, colbert


def test_bgem3_flag_model_loads_every_head_of_a_merged_m3(tmp_path, flag, caplog):
    a, b = make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)
    out = merge(a, b, tmp_path / "merged")
    texts = [" ".join(M3_WORDS[i:i + n]) for i, n in ((0, 3), (5, 9), (12, 6))] + ["cat cat dog the cat"]
    with caplog.at_level(logging.INFO):
        model = flag.BGEM3FlagModel(str(out), use_fp16=False, devices="cpu")
    assert "loading existing colbert_linear and sparse_linear" in caplog.text
    got = model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    dense, lexical, colbert = m3_by_hand(a, b, texts)
    torch.testing.assert_close(torch.from_numpy(got["dense_vecs"]), dense, **TOL)
    for theirs, ours in zip(got["lexical_weights"], lexical):
        assert set(theirs) == set(ours)  # the same tokens, each with its highest weight
        torch.testing.assert_close(torch.tensor([float(theirs[k]) for k in ours]),
                                   torch.tensor(list(ours.values())), **TOL)
    assert sum(len(ours) for ours in lexical) >= 12  # the comparison above is not of empty dicts
    for theirs, ours in zip(got["colbert_vecs"], colbert):
        torch.testing.assert_close(torch.from_numpy(theirs), ours, **TOL)


def test_flag_reranker_scores_a_merged_cross_encoder_as_the_hand_computed_merge(tmp_path, flag):
    from transformers import AutoTokenizer

    a = make_bert(tmp_path / "a", seed=1, model_class="BertForSequenceClassification")
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForSequenceClassification")
    out = merge(a, b, tmp_path / "merged", "--model-type", "reranker")
    pairs = [("red cat", "the cat is red"), ("blue dog", "a big science paper on the brain"), ("sun", "moon star")]
    got = torch.tensor(flag.FlagReranker(str(out), use_fp16=False, devices="cpu").compute_score(pairs))
    model = hand_model("BertForSequenceClassification", a, merged_by_hand(a, b))
    tokenizer = AutoTokenizer.from_pretrained(str(a))
    batch = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits.view(-1)
    torch.testing.assert_close(got, expected, **TOL)


def test_flag_auto_model_needs_the_model_class_for_a_merged_folder(tmp_path, flag):
    """FlagAutoModel picks the class from the folder's name: a merged folder's name is not in its table."""
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    out = merge(a, b, tmp_path / "my-merge")
    with pytest.raises(Exception, match="not found in the model mapping"):
        flag.FlagAutoModel.from_finetuned(str(out), devices="cpu")
    model = flag.FlagAutoModel.from_finetuned(str(out), model_class="encoder-only-base", pooling_method="cls",
                                              use_fp16=False, devices="cpu")
    assert model.encode(TEXTS).shape == (3, 32)


# -- cocktail's own scorers compute what FlagEmbedding computes -------------------------------------------------
def test_cocktail_m3_encoder_and_scores_are_bgem3_flag_models(tmp_path, flag):
    """Every mode `cocktail eval` scores bge-m3 in: the vectors, and the scores FlagEmbedding gives them."""
    from cocktail.evaluation.evaluate import open_scorer
    from cocktail.modeling.m3 import HYBRID_WEIGHTS, M3Encoder

    a, b = make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)
    out = merge(a, b, tmp_path / "merged")
    queries = ["red cat", "science paper on the brain", "sun moon star"]
    docs = ["the cat is red and fast", "a study of the brain cell and gene", "the sea is blue", "one two three cat"]
    ours = open_scorer("encoder", str(out), device="cpu", batch_size=2)
    assert isinstance(ours, M3Encoder) and ours.modes == ("dense", "sparse", "colbert", "hybrid")
    theirs = flag.BGEM3FlagModel(str(out), use_fp16=False, devices="cpu")
    q, d = ours.encode(queries), ours.encode(docs)
    tq, td = (theirs.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True, batch_size=2)
              for texts in (queries, docs))
    torch.testing.assert_close(q.dense, torch.from_numpy(tq["dense_vecs"]), **TOL)
    for mine, flags in zip(q.sparse + d.sparse, tq["lexical_weights"] + td["lexical_weights"]):
        assert {str(k) for k in mine} == set(flags)
    for mine, flags in zip(q.colbert + d.colbert, tq["colbert_vecs"] + td["colbert_vecs"]):
        torch.testing.assert_close(mine, torch.from_numpy(flags), **TOL)
    expected = {
        "dense": torch.from_numpy(tq["dense_vecs"] @ td["dense_vecs"].T),
        "sparse": torch.tensor(theirs.compute_lexical_matching_score(tq["lexical_weights"], td["lexical_weights"])),
        "colbert": torch.tensor([[float(theirs.colbert_score(x, y)) for y in td["colbert_vecs"]]
                                 for x in tq["colbert_vecs"]]),
    }
    expected["hybrid"] = sum(w * expected[m] for m, w in HYBRID_WEIGHTS.items())
    for mode, scores in expected.items():
        torch.testing.assert_close(ours.similarity(q, d, mode), scores.float(), atol=1e-5, rtol=1e-5)


def test_cocktail_eval_of_a_merged_m3_ranks_as_flagembedding_scores(tmp_path, flag):
    """`cocktail eval` rows, one set per mode, equal the metrics of rankings made from FlagEmbedding's scores."""
    import json

    from cocktail.evaluation.datasets import load_dataset
    from cocktail.evaluation.metrics import retrieval_scores

    a, b = make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)
    out = merge(a, b, tmp_path / "merged")
    records = [{"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two", "sun moon"]},
               {"query": "blue sky sea", "pos": ["the sky is blue", "blue sea"], "neg": ["fire", "the cat is red"]},
               {"query": "brain gene", "pos": ["a gene study"], "neg": ["brain cell water", "tree", "big car"]}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_cli("eval", "--models", out, "--data", path, "--json")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    data = load_dataset(path)
    model = flag.BGEM3FlagModel(str(out), use_fp16=False, devices="cpu")
    weights = [0.4, 0.2, 0.4]
    names = {"dense": "dense", "sparse": "sparse", "colbert": "colbert", "hybrid": "colbert+sparse+dense"}
    for mode, key in names.items():
        rankings = {}
        for query, pool in data.candidates.items():
            pairs = [(data.queries[query], data.corpus[doc]) for doc in pool]
            scores = model.compute_score(pairs, weights_for_different_modes=weights)[key]
            rankings[query] = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -scores[i])]
        expected = retrieval_scores(rankings, data.qrels)
        assert {r["metric"]: r["value"] for r in rows if r["mode"] == mode} == pytest.approx(expected)
    table = run_cli("eval", "--models", out, "--data", path, "--quiet").stdout
    assert all(f"ndcg@10[{mode}]" in table for mode in names)


def test_cocktail_cross_encoder_scores_are_flag_rerankers(tmp_path, flag):
    from cocktail.evaluation.evaluate import open_scorer

    folder = make_bert(tmp_path / "rr", seed=3, model_class="BertForSequenceClassification")
    short = [("red cat", "the cat is red"), ("moon", "star"), ("a big dog", "the dog is blue and fast")]
    ours = open_scorer("reranker", str(folder), device="cpu", batch_size=2)
    theirs = flag.FlagReranker(str(folder), use_fp16=False, devices="cpu", batch_size=2)
    torch.testing.assert_close(torch.tensor(ours.score(short)), torch.tensor(theirs.compute_score(short)), **TOL)
    # max_length 24: the query is cut to 3/4 of it, the passage to what is left. FlagReranker 1.4.2 pads a
    # batch of truncated pairs wrongly under transformers 5, so it scores them one at a time here.
    long = " ".join(M3_WORDS * 2)
    cut = [(long, "a big dog"), ("sun", long), (long, long)]
    ours = open_scorer("reranker", str(folder), device="cpu", batch_size=2, max_length=24)
    theirs = flag.FlagReranker(str(folder), use_fp16=False, devices="cpu", max_length=24, batch_size=1)
    expected = [theirs.compute_score([pair])[0] for pair in cut]
    torch.testing.assert_close(torch.tensor(ours.score(cut)), torch.tensor(expected), **TOL)
