"""Reading few-shot example files: the three layouts, and a clear error for every kind of bad file."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from cocktail.errors import InputError
from cocktail.fewshot.examples import load_examples

GOOD = {"query": "the cat", "pos": ["a red cat"], "neg": ["a dog", "the sea"]}


def write_lines(path, *lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reads_every_example_with_its_fields(tmp_path):
    f = write_lines(tmp_path / "few.jsonl", json.dumps(GOOD), "",
                    json.dumps({"query": "q2", "pos": ["p"], "neg": [], "prompt": "Represent: ", "type": "x"}))
    examples = load_examples(f).examples
    assert [e.query for e in examples] == ["the cat", "q2"]
    assert examples[0].pos == ("a red cat",) and examples[0].neg == ("a dog", "the sea")
    assert examples[0].prompt is None and examples[1].prompt == "Represent: "
    assert examples[1].where == "few.jsonl line 3"


def test_json_list_and_python_list_give_the_same_examples(tmp_path):
    items = [GOOD, {"query": "q2", "pos": ["p"], "neg": ["n"]}]
    f = tmp_path / "few.json"
    f.write_text(json.dumps(items, indent=2))
    assert load_examples(f).examples[1].to_dict() == load_examples(items).examples[1].to_dict() == items[1]


def test_task_keyed_file_uses_all_tasks_or_the_chosen_ones(tmp_path):
    f = tmp_path / "tasks.json"
    f.write_text(json.dumps({"ArguAna": [GOOD], "FiQA": [GOOD, {"query": "money", "pos": ["p"], "neg": ["n"]}]}))
    assert len(load_examples(f)) == 3
    chosen = load_examples(f, task="FiQA")
    assert [e.query for e in chosen.examples] == ["the cat", "money"] and chosen.tasks == ["FiQA"]
    assert len(load_examples(f, task=["ArguAna", "FiQA"])) == 3
    with pytest.raises(InputError, match=r"no task 'SciFact' \(tasks in the file: ArguAna, FiQA\)"):
        load_examples(f, task="SciFact")


def test_decoder_examples(tmp_path):
    f = write_lines(tmp_path / "llm.jsonl", json.dumps({"input": "2+2=", "output": "4"}))
    (example,) = load_examples(f, "decoder").examples
    assert (example.input, example.output) == ("2+2=", "4")


def test_the_shipped_example_file_is_valid():
    examples = load_examples(REPO / "examples" / "few-shot.jsonl").examples
    assert len(examples) >= 8 and all(e.pos and len(e.neg) == 7 for e in examples)


@pytest.mark.parametrize("lines, message", [
    ([json.dumps(GOOD), json.dumps({"query": "q", "neg": []})], r"few\.jsonl line 2: missing field 'pos'"),
    ([json.dumps(GOOD), "", json.dumps({"query": 3, "pos": ["p"], "neg": []})],
     r"line 3: field 'query' must be a string, not a number"),
    ([json.dumps({"query": "q", "pos": [], "neg": []})], r"line 1: 'pos' is empty"),
    ([json.dumps({"query": "q", "pos": "p", "neg": []})], r"line 1: field 'pos' must be a list of strings, not a single"),
    ([json.dumps({"query": "q", "pos": ["p", 5], "neg": []})], r"line 1: pos\[1\] must be a string, not a number"),
    ([json.dumps({"query": "q", "pos": ["p"], "neg": "n"})], r"line 1: field 'neg' must be a list of strings"),
    ([json.dumps(GOOD), '{"query": "q", "pos": ["p"],'], r"few\.jsonl line 2: invalid JSON"),
    ([json.dumps(GOOD), "[1, 2]"], r"line 2: an example must be a JSON object, not a list"),
    ([json.dumps({"input": "a", "output": "b"})], r"line 1: missing field 'query' .*looks like a decoder example"),
])
def test_bad_lines_name_the_line_and_the_fault(tmp_path, lines, message):
    f = write_lines(tmp_path / "few.jsonl", *lines)
    with pytest.raises(InputError, match=message):
        load_examples(f)


def test_bad_items_of_a_json_list_name_their_line(tmp_path):
    f = tmp_path / "few.json"
    f.write_text("[\n  " + json.dumps(GOOD) + ",\n\n  " + json.dumps({"query": "q", "pos": ["p"], "neg": 1}) + "\n]\n")
    with pytest.raises(InputError, match=r"few\.json line 4: field 'neg' must be a list of strings, not a number"):
        load_examples(f)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty.jsonl: the examples file is empty"):
        load_examples(empty)
    with pytest.raises(InputError, match="examples file not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="no examples"):
        load_examples([])


def test_reranker_needs_a_negative_and_decoder_needs_input(tmp_path):
    f = write_lines(tmp_path / "few.jsonl", json.dumps(GOOD), json.dumps({"query": "q", "pos": ["p"], "neg": []}))
    assert len(load_examples(f, "encoder")) == 2  # in-batch negatives are enough for an embedder
    with pytest.raises(InputError, match="line 2: 'neg' is empty"):
        load_examples(f, "reranker")
    with pytest.raises(InputError, match="line 1: missing field 'input'"):
        load_examples(f, "decoder")


def test_task_on_a_plain_file_is_refused(tmp_path):
    f = write_lines(tmp_path / "few.jsonl", json.dumps(GOOD))
    with pytest.raises(InputError, match="not keyed by task|not tasks"):
        load_examples(f, task="FiQA")


def test_reading_never_modifies_the_file(tmp_path):
    f = write_lines(tmp_path / "few.jsonl", json.dumps(GOOD))
    before = f.read_bytes()
    load_examples(f)
    assert f.read_bytes() == before
