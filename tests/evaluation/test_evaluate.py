"""`cocktail eval`: metrics against hand-computed values, data readers and their errors, scoring end to end."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_bert, make_remote_code_model, run_cli, shared_data

from cocktail.evaluation.datasets import DataError, RetrievalSet, STSSet, load_dataset
from cocktail.evaluation.metrics import average_ranks, mrr_at_k, ndcg_at_k, recall_at_k, retrieval_scores, spearman

LOG2_3 = math.log2(3)


# -- metrics, against values worked out by hand --------------------------------------------------------
def test_ndcg_binary_by_hand():
    # relevant at ranks 2 and 3: DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3)
    expected = (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3)
    assert ndcg_at_k(["x", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(expected)
    assert expected == pytest.approx(0.693426, abs=1e-6)


def test_ndcg_graded_and_cut_off():
    # grades 2 (a) and 1 (b), ranked b then a: DCG = 1 + 2/log2(3); ideal = 2 + 1/log2(3)
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx((1 + 2 / LOG2_3) / (2 + 1 / LOG2_3))
    # a relevant document below the cut-off does not count, but the ideal still expects it
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert ndcg_at_k(["a", "x"], {"a": 1}, 1) == 1.0
    # ideal ranking truncated at k: two relevant, k=1, best one first -> 1
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, 1) == 1.0


def test_mrr_and_recall_by_hand():
    assert mrr_at_k(["x", "y", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert mrr_at_k(["x", "a"], {"a": 1, "x": 0}, 10) == 0.5  # grade 0 is not relevant
    assert recall_at_k(["a", "x", "y"], {"a": 1, "b": 1}, 10) == 0.5
    assert recall_at_k(["x", "b", "a"], {"a": 1, "b": 1}, 2) == 0.5
    assert recall_at_k(["x", "b", "a"], {"a": 1, "b": 1}, 3) == 1.0


def test_retrieval_scores_average_over_queries_with_relevant_documents():
    rankings = {"q1": ["a", "x"], "q2": ["x", "b"], "q3": ["a"]}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"a": 0}}  # q3 has nothing relevant: left out
    scores = retrieval_scores(rankings, qrels)
    assert scores["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    assert scores["recall@10"] == 1.0 and scores["recall@100"] == 1.0


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert average_ranks([7, 7, 7]) == [2, 2, 2]


def test_spearman_by_hand():
    # ranks of y = [1, 2, 3.5, 5, 3.5]; deviations from 3: x -2 -1 0 1 2, y -2 -1 .5 2 .5
    # sum xy = 8, sum xx = 10, sum yy = 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [10, 200, 3000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))


# -- data files -----------------------------------------------------------------------------------------
def _write(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


DOCS = {"d1": "the cat is red", "d2": "the dog is blue", "d3": "one two three", "d4": "sun moon star sky"}
QUERIES = {"q1": "red cat", "q2": "blue dog", "q3": "sky star", "q9": "not in qrels"}


def make_beir(folder: Path, gz: bool = False, docs=DOCS, queries=QUERIES, qrels=None, doc_prefix="") -> Path:
    qrels = qrels or [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d4", 1)]
    _write(folder / "corpus.jsonl", _jsonl({"_id": k, "title": "", "text": doc_prefix + v} for k, v in docs.items()), gz)
    _write(folder / "queries.jsonl", _jsonl({"_id": k, "text": v} for k, v in queries.items()), gz)
    _write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels), gz)
    return folder


def test_beir_folder_plain_and_gzipped_read_the_same(tmp_path):
    plain = load_dataset(make_beir(tmp_path / "plain"))
    zipped = load_dataset(make_beir(tmp_path / "zipped", gz=True))
    assert isinstance(plain, RetrievalSet)
    assert plain.corpus == zipped.corpus == DOCS
    assert plain.qrels == zipped.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}}
    assert set(plain.queries) == {"q1", "q2", "q3"}  # only queries with relevance judgements
    assert plain.candidates is None


def test_beir_title_joins_text(tmp_path):
    folder = tmp_path / "b"
    _write(folder / "corpus.jsonl", _jsonl([{"_id": 7, "title": "A title.", "text": "Body."}]))
    _write(folder / "queries.jsonl", _jsonl([{"_id": "q", "text": "query"}]))
    _write(folder / "qrels" / "test.tsv", "q\t7\t1\n")
    assert load_dataset(folder).corpus == {"7": "A title. Body."}


def test_shared_scifact_reads(tmp_path):
    data = load_dataset(shared_data("scifact"))
    assert len(data.corpus) == 5183 and len(data.qrels) == 300
    assert sum(len(r) for r in data.qrels.values()) == 339


@pytest.mark.parametrize("breakage, message", [
    (lambda f: _write(f / "corpus.jsonl", _jsonl([{"_id": "d1", "text": "x"}]) + "{not json\n"),
     "corpus.jsonl, line 2: not valid JSON"),
    (lambda f: _write(f / "corpus.jsonl", _jsonl([{"_id": "d1", "text": "x"}, {"_id": "d2"}])),
     "corpus.jsonl, line 2: missing field 'text'"),
    (lambda f: _write(f / "queries.jsonl", _jsonl([{"_id": "q1", "text": "x"}, ["a list"]])),
     "queries.jsonl, line 2: expected a JSON object"),
    (lambda f: _write(f / "qrels" / "test.tsv", "q1\td1\t1\nq2\td2\tmany\n"), "test.tsv, line 2: score 'many'"),
    (lambda f: _write(f / "qrels" / "test.tsv", "q1\td1\t1\nq2\tnope\t1\n"), "test.tsv, line 2: document 'nope'"),
    (lambda f: _write(f / "qrels" / "test.tsv", "q1\td1\t1\nq7\td1\t1\n"), "test.tsv, line 2: query 'q7'"),
    (lambda f: _write(f / "qrels" / "test.tsv", "q1\td1\n"), "test.tsv, line 1: expected 3 tab-separated"),
    (lambda f: (f / "queries.jsonl").unlink(), "missing queries.jsonl"),
])
def test_beir_errors_name_file_and_line(tmp_path, breakage, message):
    folder = make_beir(tmp_path / "b")
    breakage(folder)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_dataset(folder)


def test_missing_split_lists_the_ones_there(tmp_path):
    folder = make_beir(tmp_path / "b")
    with pytest.raises(DataError, match=r"missing qrels/dev.tsv \(qrels splits here: test\)"):
        load_dataset(folder, split="dev")


def test_query_pos_neg_jsonl(tmp_path):
    path = _write(tmp_path / "d.jsonl", _jsonl([
        {"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two"]},
        {"query": "blue dog", "pos": ["the dog is blue"], "neg": ["the cat is red"]},
    ]), gz=True)
    data = load_dataset(path)
    assert len(data.queries) == 2 and len(data.corpus) == 3  # identical passages share an id
    first, second = data.candidates.values()
    assert len(first) == 3 and len(second) == 2
    assert [data.corpus[d] for d in data.qrels[list(data.qrels)[1]]] == ["the dog is blue"]


@pytest.mark.parametrize("line, message", [
    ({"pos": ["a"]}, "line 2: missing field 'query'"),
    ({"query": "q", "neg": ["a"]}, "line 2: missing field 'pos'"),
    ({"query": "q", "pos": []}, "line 2: field 'pos' is empty"),
    ({"query": "q", "pos": ["a"], "neg": [1, 2]}, "line 2: field 'neg' must be a list of strings"),
])
def test_query_pos_neg_errors(tmp_path, line, message):
    path = _write(tmp_path / "d.jsonl", _jsonl([{"query": "q", "pos": ["a"]}, line]))
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_sts_formats(tmp_path):
    three = load_dataset(_write(tmp_path / "a.tsv", 'a man "plays"\ta man plays\t4.5\nx\ty\t1\n'))
    assert isinstance(three, STSSet) and three.pairs == [('a man "plays"', "a man plays", 4.5), ("x", "y", 1.0)]
    header = load_dataset(_write(tmp_path / "b.csv", 'score,sentence1,sentence2\n3,"a, b",c\n1,d,e\n', gz=True))
    assert header.pairs == [("a, b", "c", 3.0), ("d", "e", 1.0)]
    stsb = load_dataset(_write(tmp_path / "c.tsv", "main-captions\tMSRvid\t2012test\t0001\t5.000\tA\tB\n"
                                                   "main-news\theadlines\t2013\t0002\t0.400\tC\tD\textra\tcols\n"))
    assert stsb.pairs == [("A", "B", 5.0), ("C", "D", 0.4)]
    sick = load_dataset(_write(tmp_path / "SICK.txt", "pair_ID\tsentence_A\tsentence_B\tentailment_label\t"
                                                      "relatedness_score\r\n1\tA\tB\tNEUTRAL\t4.5\r\n2\tC\tD\tNEUTRAL\t1"))
    assert sick.pairs == [("A", "B", 4.5), ("C", "D", 1.0)]


@pytest.mark.parametrize("text, message", [
    ("a\tb\t1\nc\td\tlots\n", "line 2: score 'lots' is not a number"),
    ("a\tb\t1\n\nc\td\n", "line 3: expected at least 3 tab-separated columns, got 2"),
    ("a\tb\tc\td\n", "line 1: cannot tell which columns"),
    ("a\tb\t1\n", "needs at least 2 sentence pairs"),
    ("a\tb\t1\nc\td\t1\n", "same score"),
])
def test_sts_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_write(tmp_path / "s.tsv", text))


def test_unknown_format_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(_write(tmp_path / "x.parquet", "x"))
    with pytest.raises(DataError, match="data not found"):
        load_dataset(tmp_path / "nope.tsv")


# -- scoring models -------------------------------------------------------------------------------------
def cls_embeddings(folder: Path, texts: list[str]) -> torch.Tensor:
    """BGE's recipe, written out: last_hidden_state[:, 0], then L2 normalise."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return torch.nn.functional.normalize(model(**batch).last_hidden_state[:, 0], dim=-1)


def test_instruction_goes_before_queries_only(tmp_path):
    from cocktail.evaluation.evaluate import evaluate_models

    model = make_bert(tmp_path / "m", seed=3)
    instruction = "search the passage for "
    # each document is the instruction + its query's text, so only queries that get the instruction
    # are identical to their document (cosine 1, ranked first)
    docs = {"d1": "red cat", "d2": "blue dog", "d3": "sky star", "d4": "one two three"}
    data = make_beir(tmp_path / "b", docs=docs, doc_prefix=instruction,
                     qrels=[("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d3", 1)])
    rows = evaluate_models([str(model)], [str(data)], instruction)
    values = {r["metric"]: r["value"] for r in rows}
    assert values == {"ndcg@10": pytest.approx(1.0), "mrr@10": pytest.approx(1.0), "recall@10": 1.0, "recall@100": 1.0}
    assert {(r["model"], r["data"]) for r in rows} == {(str(model), str(data))}


def test_sts_score_matches_cls_recipe(tmp_path):
    from cocktail.evaluation.evaluate import evaluate_models

    model = make_bert(tmp_path / "m", seed=4)
    pairs = [("the cat is red", "the cat is red", 5.0), ("the dog is blue", "a dog", 3.0),
             ("one two three", "sun moon", 1.0), ("big small", "fast slow car", 2.0), ("tree", "sea", 0.5)]
    path = _write(tmp_path / "sts.tsv", "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    a = cls_embeddings(model, [p[0] for p in pairs])
    b = cls_embeddings(model, [p[1] for p in pairs])
    expected = spearman((a * b).sum(-1).tolist(), [p[2] for p in pairs])
    rows = evaluate_models([str(model)], [str(path)])
    assert rows == [{"model": str(model), "data": str(path), "metric": "spearman", "value": pytest.approx(expected, abs=1e-6)}]


def test_query_pos_neg_ranking_matches_cls_recipe(tmp_path):
    from cocktail.evaluation.evaluate import evaluate_models

    model = make_bert(tmp_path / "m", seed=5)
    records = [{"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two", "sun moon"]},
               {"query": "blue sky", "pos": ["the sky is blue", "blue sea"], "neg": ["fire", "the cat is red"]}]
    path = _write(tmp_path / "d.jsonl", _jsonl(records))
    mrr = []
    for r in records:
        passages = r["pos"] + r["neg"]
        q = cls_embeddings(model, [r["query"]])[0]
        scores = (cls_embeddings(model, passages) @ q).tolist()
        order = sorted(range(len(passages)), key=lambda i: -scores[i])
        first = min(order.index(i) for i in range(len(r["pos"])))
        mrr.append(1 / (first + 1))
    rows = evaluate_models([str(model)], [str(path)])
    assert {r["metric"]: r["value"] for r in rows}["mrr@10"] == pytest.approx(sum(mrr) / 2)


def test_cli_eval_table_and_json(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    beir = make_beir(tmp_path / "beir", gz=True)
    sts = _write(tmp_path / "sts.tsv", "the cat\ta cat\t4\nthe dog\tsun moon\t1\nred\tblue\t2\n")
    result = run_cli("eval", "--models", a, b, "--data", beir, sts, "--json")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert {(r["model"], r["data"], r["metric"]) for r in rows} == {
        (str(m), str(d), metric) for m in (a, b)
        for d, metrics in ((beir, ("ndcg@10", "mrr@10", "recall@10", "recall@100")), (sts, ("spearman",)))
        for metric in metrics}
    assert all(isinstance(r["value"], float) for r in rows)
    table = run_cli("eval", "--models", a, "--data", beir, sts, "--quiet")
    assert table.returncode == 0, table
    assert "ndcg@10" in table.stdout and "spearman" in table.stdout and str(beir) in table.stdout
    values = {(r["data"], r["metric"]): r["value"] for r in rows if r["model"] == str(a)}
    assert f"{values[(str(sts), 'spearman')]:.4f}" in table.stdout


def test_cli_eval_bad_data_is_one_line(tmp_path):
    model = make_bert(tmp_path / "m")
    bad = _write(tmp_path / "bad.jsonl", '{"query": "q", "pos": ["a"]}\n{"query": 3}\n')
    result = run_cli("eval", "--models", model, "--data", bad)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bad}, line 2: field 'query' must be a string, got int"]


def make_gpt2_embedder(folder: Path) -> Path:
    """A tiny GPT-2 with last-token pooling and a tokenizer that has no pad token and pads on the
    left (as decoder embedders' tokenizers often do)."""
    from conftest import VOCAB, make_gpt2
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    make_gpt2(folder)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB + ["<eos>"])}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]",
                            padding_side="left").save_pretrained(str(folder))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                  "pooling_mode_lasttoken": True}))
    return folder


def test_last_token_pooling_of_a_batch_equals_one_text_at_a_time(tmp_path):
    """A text's embedding must not depend on the texts batched (and padded) with it."""
    from cocktail.modeling.encoder import Encoder

    encoder = Encoder.open(str(make_gpt2_embedder(tmp_path / "g")), device="cpu", batch_size=4)
    texts = ["the cat is red and the dog is blue", "sun", "one two three"]
    batched = encoder.encode(texts)
    alone = torch.cat([encoder.encode([t]) for t in texts])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["no-tokenizer", "unknown-device"])
def test_cli_eval_bad_model_or_device_is_one_line(tmp_path, case):
    model = make_bert(tmp_path / "m", tokenizer=case != "no-tokenizer")
    sts = _write(tmp_path / "sts.tsv", "the cat\ta cat\t4\nthe dog\tsun moon\t1\nred\tblue\t2\n")
    extra = ["--device", "abacus"] if case == "unknown-device" else []
    result = run_cli("eval", "--models", model, "--data", sts, "--quiet", *extra)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ("tokenizer" in lines[0] or "device" in lines[0]), result


def test_a_shrunk_retrieval_set_keeps_the_first_queries_their_documents_and_some_distractors(tmp_path):
    data = load_dataset(make_beir(tmp_path / "b"))
    small = data.shrunk(2, 1)
    assert list(small.qrels) == list(data.qrels)[:2] and set(small.queries) == set(small.qrels)
    relevant = {d for rel in small.qrels.values() for d in rel}
    assert relevant <= set(small.corpus) and len(set(small.corpus) - relevant) == 1
    assert data.shrunk(0, 1) is data


def eval_in_process(*args):
    """``cocktail eval ARGS`` in this process (stderr apart from stdout), so a test can reach its code."""
    from click.testing import CliRunner

    from cocktail.cli import cli

    return CliRunner().invoke(cli, ["eval", *map(str, args)], catch_exceptions=False)


def test_cli_eval_shows_progress_on_stderr_for_a_slow_step_whatever_its_size_and_none_with_quiet(tmp_path, monkeypatch):
    from cocktail.modeling import progress

    monkeypatch.setattr(progress, "DELAY_S", 0)  # the test machine may be fast: count every step as slow
    model = make_bert(tmp_path / "m")
    beir = make_beir(tmp_path / "beir")
    sts = _write(tmp_path / "sts.tsv", "the cat\ta cat\t4\nthe dog\tsun moon\t1\nred\tblue\t2\n")
    shown = eval_in_process("-m", model, "--data", beir, sts)
    assert shown.exit_code == 0, shown.output
    assert f"corpus {model}: " in shown.stderr and "/4 [" in shown.stderr  # the 4 documents' bar
    assert f"sentences {model}: " in shown.stderr and "/3 [" in shown.stderr  # the 3 pairs' bar
    assert "ndcg@10" in shown.stdout and "sentences" not in shown.stdout
    quiet = eval_in_process("-m", model, "--data", beir, sts, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == shown.stdout


def test_a_reranker_shows_progress_while_it_scores_pairs(tmp_path, monkeypatch):
    from cocktail.modeling import progress

    monkeypatch.setattr(progress, "DELAY_S", 0)
    model = make_bert(tmp_path / "r", model_class="BertForSequenceClassification")
    data = _write(tmp_path / "qpn.jsonl", _jsonl([{"query": "red cat", "pos": ["the cat is red"], "neg": ["sun"]}]))
    shown = eval_in_process("-m", model, "--data", data)
    assert shown.exit_code == 0, shown.output
    assert f"scoring {model}: " in shown.stderr and "/2 [" in shown.stderr


SLOW = '''
import os
import time
from pathlib import Path
from transformers import BertConfig, BertModel


class SlowConfig(BertConfig):
    model_type = "slowbert"


class SlowModel(BertModel):
    """A BERT that, once it is asked to encode, says so in a file and waits for Ctrl-C."""
    config_class = SlowConfig

    def forward(self, *args, **kwargs):
        Path(os.environ["COCKTAIL_TEST_MARKER"]).write_text("scoring")
        time.sleep(600)
        return super().forward(*args, **kwargs)
'''


def make_slow_model(folder: Path) -> Path:
    """A tiny BERT whose own code (``auto_map``, run with ``--trust-remote-code``) waits in its forward."""
    return make_remote_code_model(folder, 3, "slow", SLOW)


def test_ctrl_c_in_eval_keeps_the_scores_of_the_models_finished_before(tmp_path):
    first, slow = make_bert(tmp_path / "first", seed=1), make_slow_model(tmp_path / "slow")
    sts = _write(tmp_path / "sts.tsv", "the cat\ta cat\t4\nthe dog\tsun moon\t1\nred\tblue\t2\n")
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COCKTAIL_TEST_MARKER": str(marker),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.Popen([sys.executable, "-m", "cocktail", "eval", "-m", first, slow, "--data", sts,
                             "--trust-remote-code"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not inherited ignored
    try:
        while not marker.exists() and proc.poll() is None:  # the second model has started encoding
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.strip().splitlines()[-1] == (f"error: interrupted while scoring model 2 of 2 ({slow}) on data set "
                                               f"1 of 1 ({sts}); the scores finished before it are above")
    assert stdout.startswith("partial results (interrupted):\n")
    assert re.search(rf"^  {re.escape(str(first))} +-?[01]\.\d{{4}}$", stdout, re.MULTILINE), stdout
    assert str(slow) not in stdout
