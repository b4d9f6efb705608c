"""`cocktail eval` guides: it reads the model type off config.json, says how it scores each model
(type, pooling) and where it is, calls out data that cannot rank anything, and keeps to one split."""

from __future__ import annotations

import json

import pytest
from conftest import make_bert, make_decoder, run_cli

from cocktail.errors import CocktailWarning, InputError
from cocktail.evaluation.datasets import load_dataset
from cocktail.evaluation.evaluate import evaluate_models

STS = "".join(f"{a}\t{b}\t{s}\n" for a, b, s in [("the cat is red", "a red cat", 4), ("the dog", "sun moon", 1),
                                                ("red", "blue", 2), ("one two three", "one two", 3.5)])


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_reranker_is_scored_as_one_without_being_told(tmp_path):
    reranker = make_bert(tmp_path / "r", seed=1, model_class="BertForSequenceClassification")
    data = _jsonl(tmp_path / "d.jsonl", [{"query": "red cat", "pos": ["the cat is red"], "neg": ["sun moon", "blue"]},
                                         {"query": "blue dog", "pos": ["the dog is blue"], "neg": ["red cat"]}])
    told = evaluate_models([str(reranker)], [str(data)], model_type="reranker")
    assert evaluate_models([str(reranker)], [str(data)]) == told
    with pytest.raises(InputError, match="model_type= encoder contradicts .*a reranker model"):
        evaluate_models([str(reranker)], [str(data)], model_type="encoder")


def test_a_causal_lm_must_be_told_how_to_be_scored(tmp_path):
    lm = make_decoder(tmp_path / "lm", seed=1)
    (tmp_path / "sts.tsv").write_text(STS)
    res = run_cli("eval", "--models", lm, "--data", tmp_path / "sts.tsv")
    assert res.returncode == 2 and "a decoder model (a causal LM)" in res.stderr and "say which" in res.stderr, res
    res = run_cli("eval", "--models", lm, "--data", tmp_path / "sts.tsv", "--model-type", "llm-reranker", "--json")
    assert res.returncode == 0, res


def test_eval_says_how_it_scores_each_model_and_where_it_is(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    (tmp_path / "sts.tsv").write_text(STS)
    res = run_cli("eval", "--models", a, b, "--data", tmp_path / "sts.tsv")
    assert res.returncode == 0, res
    lines = res.stderr.splitlines()
    assert f"eval [1/2] {a}: encoder, pooling cls (default (BGE: [CLS])); float32 (auto: float32 on CPU) on cpu" \
        in lines, res
    assert f"eval [2/2] {b}: encoder, pooling cls (default (BGE: [CLS])); float32 (auto: float32 on CPU) on cpu" \
        in lines, res
    assert sum(line.strip() == f"[1/1] {tmp_path / 'sts.tsv'}" for line in lines) == 2, res
    quiet = run_cli("eval", "--models", a, "--data", tmp_path / "sts.tsv", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet


def test_data_without_negatives_is_called_out_in_one_line(tmp_path):
    a = make_bert(tmp_path / "a", seed=1)
    data = _jsonl(tmp_path / "nonegs.jsonl", [{"query": "red cat", "pos": ["the cat is red"]},
                                              {"query": "blue dog", "pos": ["the dog is blue", "a blue dog"]}])
    res = run_cli("eval", "--models", a, "--data", data, "-q", "--json")
    assert res.returncode == 0, res
    assert {row["value"] for row in json.loads(res.stdout)} == {1.0}
    assert res.stderr.strip().splitlines() == [
        f"warning: {data}: 2 of 2 queries have no negatives (only relevant passages to rank), so every model "
        "scores 1 on them: add 'neg' passages to rank against"], res
    with pytest.warns(CocktailWarning, match="2 of 2 queries have no negatives"):
        evaluate_models([str(a)], [str(data)])


def test_an_sts_file_with_a_split_column_gives_the_split_asked_for(tmp_path):
    header = "sentence1\tsentence2\tscore\tsplit\n"
    test = [("the cat is red", "a red cat", 4), ("the dog", "sun moon", 1), ("red", "blue", 2)]
    train = [("fire", "water", 5), ("one", "one two", 0)]
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text(header + "".join(f"{a}\t{b}\t{s}\ttest\n" for a, b, s in test)
                     + "".join(f"{a}\t{b}\t{s}\tTRAIN\n" for a, b, s in train))
    assert load_dataset(mixed).pairs == [(a, b, float(s)) for a, b, s in test]
    assert load_dataset(mixed, split="train").pairs == [(a, b, float(s)) for a, b, s in train]
    res = run_cli("eval", "--models", make_bert(tmp_path / "a", seed=1), "--data", mixed, "--split", "dev")
    assert res.returncode == 2 and "needs at least 2 sentence pairs of split dev, found 0" in res.stderr, res
