"""`cocktail eval --model-type reranker`: cross-encoders score (query, passage) pairs as FlagReranker does,
on query/pos/neg data and on a BEIR folder's candidates from a TREC run file or a first-stage embedder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import make_bert, run_cli

from cocktail.errors import InputError
from cocktail.evaluation.datasets import load_dataset
from cocktail.evaluation.evaluate import evaluate_models
from cocktail.evaluation.metrics import retrieval_scores

DOCS = {"d1": "the cat is red", "d2": "the dog is blue", "d3": "one two three", "d4": "sun moon star sky",
        "d5": "a big red car", "d6": "the sea is green"}
QUERIES = {"q1": "red cat", "q2": "blue dog", "q3": "sky star"}
QRELS = [("q1", "d1", 1), ("q1", "d5", 1), ("q2", "d2", 1), ("q3", "d4", 2)]


def make_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS))
    return folder


@pytest.fixture
def reranker(tmp_path):
    return make_bert(tmp_path / "rr", seed=7, model_class="BertForSequenceClassification")


def logits_by_hand(folder: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """The cross-encoder's logit of each pair, one pair at a time, straight from transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return [model(**tokenizer(q, p, return_tensors="pt")).logits.item() for q, p in pairs]


def rerank_by_hand(folder: Path, data, pools: dict[str, list[str]]) -> dict[str, list[str]]:
    rankings = {}
    for query, pool in pools.items():
        scores = logits_by_hand(folder, [(data.queries[query], data.corpus[d]) for d in pool])
        rankings[query] = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -scores[i])]
    return rankings


def values(rows, model) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in rows if r["model"] == str(model)}


def test_query_pos_neg_ranked_by_the_cross_encoder_logit(tmp_path, reranker):
    records = [{"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two", "sun moon"]},
               {"query": "blue sky", "pos": ["the sky is blue", "blue sea"], "neg": ["fire", "the cat is red"]}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = load_dataset(path)
    expected = retrieval_scores(rerank_by_hand(reranker, data, data.candidates), data.qrels)
    rows = evaluate_models([str(reranker)], [str(path)], model_type="reranker")
    assert values(rows, reranker) == pytest.approx(expected)


def test_beir_candidates_from_a_trec_run(tmp_path, reranker):
    beir = make_beir(tmp_path / "beir")
    run = tmp_path / "run.trec"
    lines = ["q1 Q0 d3 1 9.0 bm25", "q1 Q0 d1 2 8.0 bm25", "q1 Q0 d2 3 7.0 bm25", "q1 Q0 d5 4 1.0 bm25",
             "q2 Q0 d2 1 3.5 bm25", "q2 Q0 d6 2 3.0 bm25", "q3 Q0 d1 1 2 bm25", "q3 Q0 d4 2 1 bm25",
             "q9 Q0 d1 1 5 bm25"]  # q9 is not judged: skipped
    run.write_text("\n".join(lines) + "\n")
    data = load_dataset(beir)
    top3 = {"q1": ["d3", "d1", "d2"], "q2": ["d2", "d6"], "q3": ["d1", "d4"]}  # --top-k 3: d5 is cut
    expected = retrieval_scores(rerank_by_hand(reranker, data, top3), data.qrels)
    result = run_cli("eval", "--model-type", "reranker", "--models", reranker, "--data", beir,
                     "--candidates", run, "--top-k", "3", "--json")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert values(rows, reranker) == pytest.approx(expected)
    assert values(rows, reranker)["recall@100"] == pytest.approx((0.5 + 1 + 1) / 3)  # only reranks what it got


def test_beir_candidates_from_a_first_stage_embedder_computed_once(tmp_path, reranker):
    beir = make_beir(tmp_path / "beir")
    embedder = make_bert(tmp_path / "emb", seed=3)
    second = make_bert(tmp_path / "rr2", seed=8, model_class="BertForSequenceClassification")
    data = load_dataset(beir)
    from cocktail.evaluation.evaluate import open_scorer, rank_corpus

    top2 = rank_corpus(open_scorer("encoder", str(embedder), device="cpu"), data, None, top_k=2)["dense"]
    first_stage = evaluate_models([str(embedder)], [str(beir)])
    result = run_cli("eval", "--model-type", "reranker", "--models", reranker, second, "--data", beir,
                     "--retriever", embedder, "--top-k", "2", "--json")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows].count(f"{embedder} (first stage)") == 4  # once, not once per reranker
    stage = {r["metric"]: r["value"] for r in rows if r["model"] == f"{embedder} (first stage)"}
    assert stage["ndcg@10"] == pytest.approx(retrieval_scores(top2, data.qrels)["ndcg@10"])
    assert stage["mrr@10"] == pytest.approx(values(first_stage, embedder)["mrr@10"])  # top-2 keeps the top-1
    for model in (reranker, second):
        assert values(rows, model) == pytest.approx(retrieval_scores(rerank_by_hand(model, data, top2), data.qrels))


@pytest.mark.parametrize("line, message", [
    ("q1 Q0 d1 1 2.0", "line 2: expected 6 fields 'qid Q0 docid rank score tag' (TREC run format), got 5"),
    ("q1 Q0 d2 first 2.0 x", "line 2: rank 'first' is not an integer"),
    ("q1 Q0 d2 0 2.0 x", "line 2: rank 0 is less than 1"),
    ("q1 Q0 d2 2 nan x", "line 2: score 'nan' is not a finite number"),
    ("q1 Q0 d2 2 high x", "line 2: score 'high' is not a number"),
    ("q1 Q0 nope 2 1.0 x", "line 2: document 'nope' is not in the corpus of"),
    ("q1 Q0 d1 2 1.0 x", "line 2: document 'd1' is listed twice for query 'q1'"),
])
def test_a_bad_run_file_is_refused_naming_its_line(tmp_path, line, message):
    from cocktail.evaluation.datasets import DataError
    from cocktail.evaluation.rerankers import read_run

    run = tmp_path / "run.trec"
    run.write_text(f"q1 Q0 d1 1 3.0 x\n{line}\n")
    with pytest.raises(DataError, match=re.escape(f"{run}, {message}")):
        read_run(run, load_dataset(make_beir(tmp_path / "beir")))


def test_reranker_options_are_checked(tmp_path, reranker):
    beir = str(make_beir(tmp_path / "beir"))
    cases = [(dict(model_type="reranker"), "give candidates= (a TREC run file) or retriever="),
             (dict(model_type="reranker", candidates=str(tmp_path / "none.trec")), "candidates file not found"),
             (dict(model_type="reranker", candidates="x", retriever="y"), "give candidates= or retriever=, not both")]
    for options, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            evaluate_models([str(reranker)], [beir], **options)
    embedder = make_bert(tmp_path / "embedder", seed=3)  # its config says it is no reranker
    with pytest.raises(InputError, match=re.escape("candidates= is for rerankers")):
        evaluate_models([str(embedder)], [beir], candidates="run.trec")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 3.0 x\nq1 Q0 d9 2 1.0 x\n")
    before = run.read_bytes()
    result = run_cli("eval", "--model-type", "reranker", "--models", reranker, "--data", beir, "--candidates", run)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [f"error: {run}, line 2: document 'd9' is not in the corpus of {beir}"]
    assert run.read_bytes() == before


def test_sweep_of_two_rerankers_ends_at_each_one(tmp_path, reranker):
    second = make_bert(tmp_path / "rr2", seed=8, model_class="BertForSequenceClassification")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"query": "red cat", "pos": ["the cat is red"], "neg": ["a dog", "sun", "sea"]}) + "\n"
                    + json.dumps({"query": "sky", "pos": ["blue sky"], "neg": ["red car", "the sea is green"]}) + "\n")
    result = run_cli("sweep", "--model-type", "reranker", "--models", reranker, second, "--data", path,
                     "--steps", "2", "--json")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)["rows"]
    for weight, model in ((1.0, reranker), (0.0, second)):
        expected = evaluate_models([str(model)], [str(path)], model_type="reranker")
        assert {r["metric"]: r["value"] for r in rows if r["weight"] == weight} == pytest.approx(values(expected, model))


def test_a_run_file_that_misses_queries_says_so_once_and_nothing_false(tmp_path, reranker):
    """Queries a run file leaves out have no candidates (they score 0): not 'no negatives, every model scores 1'."""
    beir = make_beir(tmp_path / "beir")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d3 1 9.0 bm25\nq1 Q0 d1 2 8.0 bm25\n")  # 1 of the 3 judged queries
    result = run_cli("eval", "--model-type", "reranker", "--models", reranker, "--data", beir, "--candidates", run,
                     "--quiet")
    assert result.returncode == 0, result
    assert result.stderr.strip().splitlines() == [
        f"warning: {run}: 2 of 3 judged queries have no candidates (they score 0)"]
