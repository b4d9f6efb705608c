"""Evaluation data as its owners distribute it (STS Benchmark, SICK, BEIR), and strict values in it.

Each layout is read from the shared copy of the real files (``../shared/data`` from the repository root;
a test without them is skipped, or fails under CI), and from a small file built here in exactly the same
format.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import shared_data

from cocktail.evaluation.datasets import DataError, RetrievalSet, STSSet, load_dataset


def read_tsv_rows(text: str) -> list[list[str]]:
    """What the owners' readers do: split lines on tabs, quotes are plain characters."""
    return [row for row in csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE) if row]


# -- STS Benchmark: sts-*.csv, tab-separated despite the name, no header, 7 or 9 columns ---------------------
def test_sts_benchmark_csv_as_distributed(tmp_path):
    with tarfile.open(shared_data("stsbenchmark/Stsbenchmark.tar.gz")) as archive:
        text = archive.extractfile("stsbenchmark/sts-test.csv").read().decode("utf-8")
    path = tmp_path / "sts-test.csv"
    path.write_text(text, encoding="utf-8")
    rows = read_tsv_rows(text)
    assert {len(r) for r in rows} == {7, 9}  # the layout this test is about
    data = load_dataset(path)
    assert isinstance(data, STSSet)
    assert len(data.pairs) == 1379
    assert data.pairs == [(r[5], r[6], float(r[4])) for r in rows]
    assert any('"' in a + b for a, b, _ in data.pairs)  # bare quotes stay in the sentences


def test_sts_benchmark_layout_built_here(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_text('main-captions\tMSRvid\t2012test\t0001\t5.000\tA "big" man, sings.\tA man sings.\n'
                    "main-forums\tdeft-forum\t2014\t0002\t0.400\tC, d\tE\tsource\tlicence\n", encoding="utf-8")
    assert load_dataset(path).pairs == [('A "big" man, sings.', "A man sings.", 5.0), ("C, d", "E", 0.4)]


# -- SICK: SICK.txt (12 columns, CRLF, SemEval_set picks the split) and SICK_test_annotated.txt ---------------
def test_sick_txt_as_distributed_gives_the_split_asked_for(tmp_path):
    path = tmp_path / "SICK.txt"
    with gzip.open(shared_data("sick/SICK.txt.gz"), "rb") as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    raw = path.read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")  # CRLF, no final newline: as SICK ships it
    rows = list(csv.DictReader(raw.decode("utf-8").splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    expected = {split: [(r["sentence_A"], r["sentence_B"], float(r["relatedness_score"]))
                        for r in rows if r["SemEval_set"] == name]
                for split, name in (("test", "TEST"), ("train", "TRAIN"), ("dev", "TRIAL"))}
    assert [len(v) for v in expected.values()] == [4906, 4439, 495]
    for split, pairs in expected.items():
        assert load_dataset(path, split=split).pairs == pairs
    with pytest.raises(DataError, match="SemEval_set column, and split 'val' is none of"):
        load_dataset(path, split="val")


def test_sick_test_annotated_txt(tmp_path):
    path = tmp_path / "SICK_test_annotated.txt"
    path.write_bytes(b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
                     b"6\tThere is no boy playing outdoors\tA boy is playing\t3.3\tCONTRADICTION\r\n"
                     b"7\tA man sings\tA man is singing\t4.9\tENTAILMENT\r\n")
    assert load_dataset(path).pairs == [("There is no boy playing outdoors", "A boy is playing", 3.3),
                                        ("A man sings", "A man is singing", 4.9)]


# -- BEIR: folders as unzipped, plain or .gz -----------------------------------------------------------------
def test_beir_folder_plain_and_gz_as_distributed(tmp_path):
    source = shared_data("scifact")
    plain = tmp_path / "scifact"
    (plain / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        with gzip.open(source / f"{name}.gz", "rb") as zipped, open(plain / name, "wb") as target:
            shutil.copyfileobj(zipped, target)
    from_plain, from_gz = load_dataset(plain), load_dataset(source)
    assert isinstance(from_plain, RetrievalSet)
    assert from_plain.qrels == from_gz.qrels and from_plain.corpus == from_gz.corpus
    assert from_plain.queries == from_gz.queries and len(from_plain.qrels) == 300


# -- strict values (issue 11, item 11) ------------------------------------------------------------------------
def small_beir(folder: Path, grade: str) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (folder / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{grade}\n")
    return folder


@pytest.mark.parametrize("grade", ["0.9", "nan", "inf", "1.5"])
def test_a_qrels_grade_that_is_not_an_integer_is_an_error(tmp_path, grade):
    with pytest.raises(DataError, match=f"test.tsv, line 3: score '{grade}' is not an integer relevance grade"):
        load_dataset(small_beir(tmp_path / "b", grade))


def test_integer_grades_written_as_floats_are_read(tmp_path):
    assert load_dataset(small_beir(tmp_path / "b", "2.0")).qrels == {"q1": {"d1": 1, "d2": 2}}


@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-inf"])
def test_an_sts_score_that_is_not_finite_is_an_error(tmp_path, score):
    path = tmp_path / "s.tsv"
    path.write_text(f"a\tb\t1\nc\td\t{score}\ne\tf\t2\n")
    with pytest.raises(DataError, match=f"line 2: score '{score}' is not a finite number"):
        load_dataset(path)


# -- the rule for a missing shared data folder -------------------------------------------------------------
@pytest.mark.parametrize("ci, outcome", [(None, pytest.skip.Exception), ("false", pytest.skip.Exception),
                                         ("true", pytest.fail.Exception), ("1", pytest.fail.Exception)])
def test_missing_shared_data_skips_locally_and_fails_under_ci(tmp_path, monkeypatch, ci, outcome):
    """A checkout without ../shared/data skips the tests that need it; CI, which has it, must not skip in silence."""
    import conftest

    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "no-shared-data")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="shared data scifact not found"):
        shared_data("scifact")
    (tmp_path / "no-shared-data" / "scifact").mkdir(parents=True)  # present: found, whatever CI says
    assert shared_data("scifact") == tmp_path / "no-shared-data" / "scifact"

