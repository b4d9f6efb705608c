"""Reading evaluation data: retrieval sets (BEIR folders, query/pos/neg JSONL) and STS pairs.

``load_dataset(path)`` picks the reader from what ``path`` is:

- a folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (BEIR's layout):
  queries are ranked against the whole corpus;
- a ``.jsonl`` file of ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` records (FlagEmbedding's
  fine-tuning format): each query's own passages are ranked, ``pos`` being the relevant ones;
- a ``.tsv`` / ``.csv`` / ``.txt`` file of sentence pairs with a similarity score (STS).

The standard files are read as their owners distribute them: STS Benchmark's ``sts-train.csv`` /
``sts-dev.csv`` / ``sts-test.csv`` (tab-separated despite the name, no header, 7 columns, some rows
with 2 more, bare ``"`` in sentences), SICK's ``SICK.txt`` (its ``SemEval_set`` column picks the
split) and ``SICK_test_annotated.txt``, BEIR folders as unzipped (plain or ``.gz`` files).

Any file may be gzipped (``corpus.jsonl.gz``). A malformed file raises :class:`DataError` naming the
file and the line; the data is strict: a qrels grade must be an integer, an STS score a finite number.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

from cocktail.errors import InputError
from cocktail.io import json_input
from cocktail.io.text_lines import bounded_lines

STS_FIRST = ("sentence1", "sentence_1", "sentence a", "sentence_a", "sentencea", "s1", "text1", "text_a", "text_1",
             "sent1", "premise", "query")
STS_SECOND = ("sentence2", "sentence_2", "sentence b", "sentence_b", "sentenceb", "s2", "text2", "text_b", "text_2",
              "sent2", "hypothesis", "document")
STS_SCORE = ("score", "similarity", "relatedness_score", "relatedness", "label", "gold", "gold_score", "sim")
DELIMITED = (".tsv", ".csv", ".txt")
SPLIT_COLUMNS = ("semeval_set", "split")  # which split each pair belongs to: SICK.txt's, or a plain "split" column
#: the values a split column holds for each split asked for (compared without case)
SPLIT_VALUES = {"test": ("test",), "train": ("train",), "dev": ("dev", "trial", "validation"),
                "trial": ("dev", "trial", "validation"), "validation": ("dev", "trial", "validation")}


class DataError(InputError):
    """An evaluation data file cannot be read: says which file, which line and what is wrong."""


@dataclass
class RetrievalSet:
    """Queries ranked against documents; ``qrels[query][doc]`` is a relevance grade (> 0: relevant).

    ``candidates`` is ``None`` when every query is ranked against the whole corpus, else the
    documents each query ranks (the query/pos/neg format).
    """

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    candidates: Optional[dict[str, list[str]]] = None
    kind: str = field(default="retrieval", init=False)

    def describe(self) -> str:
        pool = f"{len(self.corpus)} documents" if self.candidates is None else "its own passages each"
        return f"{len(self.qrels)} queries, {pool}"

    def shrunk(self, queries: int, distractors: int) -> "RetrievalSet":
        """The first ``queries`` queries with their relevant documents and the first ``distractors``
        others, for a quick run of a script (``queries`` 0: the whole set)."""
        if not queries:
            return self
        kept = list(self.qrels)[:queries]
        qrels = {q: self.qrels[q] for q in kept}
        relevant = {d for rel in qrels.values() for d in rel}
        others = [d for d in self.corpus if d not in relevant][:distractors]
        corpus = {d: self.corpus[d] for d in self.corpus if d in relevant or d in others}
        candidates = None if self.candidates is None else {q: self.candidates[q] for q in kept}
        return RetrievalSet(self.name, {q: self.queries[q] for q in kept}, corpus, qrels, candidates)


@dataclass
class STSSet:
    """Sentence pairs with a gold similarity score."""

    name: str
    pairs: list[tuple[str, str, float]]
    kind: str = field(default="sts", init=False)

    def describe(self) -> str:
        return f"{len(self.pairs)} pairs"


Dataset = Union[RetrievalSet, STSSet]


# -- files -------------------------------------------------------------------------------------------
def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for every non-blank line; decoding errors become a DataError."""
    try:
        with _open_text(path) as handle:
            for number, line in bounded_lines(handle, path, DataError):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({exc})") from None


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path):
        try:
            record = json_input.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _find(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _base_name(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


# -- BEIR --------------------------------------------------------------------------------------------
def _text_field(path: Path, number: int, record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{path}, line {number}: missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}, line {number}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _id_field(path: Path, number: int, record: dict) -> str:
    value = record.get("_id")
    if value is None:
        raise DataError(f"{path}, line {number}: missing field '_id'")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(f"{path}, line {number}: field '_id' must be a string or an integer")
    return str(value)


def read_beir(folder: Path, split: str = "test", name: Optional[str] = None) -> RetrievalSet:
    """A BEIR folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
    ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``; header optional)."""
    corpus_path, queries_path = _find(folder, "corpus.jsonl"), _find(folder, "queries.jsonl")
    qrels_path = _find(folder / "qrels", f"{split}.tsv")
    missing = [n for n, p in (("corpus.jsonl", corpus_path), ("queries.jsonl", queries_path),
                              (f"qrels/{split}.tsv", qrels_path)) if p is None]
    if missing:
        splits = sorted(_base_name(p)[:-4] for p in (folder / "qrels").glob("*.tsv*")) if (folder / "qrels").is_dir() else []
        hint = f" (qrels splits here: {', '.join(splits)})" if splits and f"qrels/{split}.tsv" in missing else ""
        raise DataError(f"{folder}: not a BEIR folder, missing {', '.join(missing)}{hint}")

    corpus: dict[str, str] = {}
    for number, record in _json_records(corpus_path):
        doc_id = _id_field(corpus_path, number, record)
        title = _text_field(corpus_path, number, record, "title", required=False)
        text = _text_field(corpus_path, number, record, "text")
        corpus[doc_id] = f"{title} {text}".strip()
    queries: dict[str, str] = {}
    for number, record in _json_records(queries_path):
        queries[_id_field(queries_path, number, record)] = _text_field(queries_path, number, record, "text")

    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(qrels_path):
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) == 4:  # TREC style: query, iteration, doc, grade
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise DataError(f"{qrels_path}, line {number}: expected 3 tab-separated columns "
                            f"(query-id, corpus-id, score), got {len(parts)}")
        query_id, doc_id, grade_text = (p.strip() for p in parts)
        try:
            value = float(grade_text)
        except ValueError:
            if number == 1 and not qrels:
                continue  # a header row
            raise DataError(f"{qrels_path}, line {number}: score {grade_text!r} is not a number") from None
        if not value.is_integer():  # nan, inf and 0.9 alike: a grade is a whole number
            raise DataError(f"{qrels_path}, line {number}: score {grade_text!r} is not an integer relevance grade")
        grade = int(value)
        if query_id not in queries:
            raise DataError(f"{qrels_path}, line {number}: query {query_id!r} is not in {queries_path.name}")
        if doc_id not in corpus:
            raise DataError(f"{qrels_path}, line {number}: document {doc_id!r} is not in {corpus_path.name}")
        qrels.setdefault(query_id, {})[doc_id] = grade
    qrels = {q: rel for q, rel in qrels.items() if any(g > 0 for g in rel.values())}
    if not qrels:
        raise DataError(f"{qrels_path}: no query has a relevant document")
    used = {q: queries[q] for q in qrels}
    return RetrievalSet(name or str(folder), used, corpus, qrels)


# -- query / pos / neg JSONL -------------------------------------------------------------------------
def _passages(path: Path, number: int, record: dict, key: str, required: bool) -> list[str]:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{path}, line {number}: missing field {key!r}")
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}, line {number}: field {key!r} must be a list of strings")
    if required and not value:
        raise DataError(f"{path}, line {number}: field {key!r} is empty")
    return value


def read_query_pos_neg(path: Path, name: Optional[str] = None) -> RetrievalSet:
    """FlagEmbedding's format, one JSON object a line: ``query``, ``pos`` (relevant passages) and
    ``neg`` (others). Each query ranks its own ``pos + neg``; identical passages share one id."""
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    candidates: dict[str, list[str]] = {}

    def doc_id(text: str) -> str:
        if text not in ids:
            ids[text] = f"d{len(ids)}"
            corpus[ids[text]] = text
        return ids[text]

    for number, record in _json_records(path):
        query = _text_field(path, number, record, "query")
        pos = _passages(path, number, record, "pos", required=True)
        neg = _passages(path, number, record, "neg", required=False)
        query_id = f"q{number}"
        queries[query_id] = query
        qrels[query_id] = {doc_id(p): 1 for p in pos}
        pool = list(dict.fromkeys(doc_id(p) for p in pos + neg))
        candidates[query_id] = pool
    if not queries:
        raise DataError(f"{path}: no records")
    return RetrievalSet(name or str(path), queries, corpus, qrels, candidates)


# -- STS ---------------------------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _column(header: list[str], names: tuple[str, ...]) -> Optional[int]:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _sts_columns(path: Path, first: list[str]) -> tuple[tuple[int, int, int], bool]:
    """``((sentence 1, sentence 2, score) column indexes, first row is a header)``."""
    a, b, s = _column(first, STS_FIRST), _column(first, STS_SECOND), _column(first, STS_SCORE)
    if a is not None and b is not None and s is not None:
        return (a, b, s), True
    cells = [c.strip() for c in first]
    if len(cells) >= 7 and _is_number(cells[4]):  # STS Benchmark: genre, file, year, id, score, s1, s2
        return (5, 6, 4), False
    if len(cells) == 3 and _is_number(cells[2]):
        return (0, 1, 2), False
    if len(cells) == 3 and _is_number(cells[0]):
        return (1, 2, 0), False
    raise DataError(f"{path}, line 1: cannot tell which columns hold the two sentences and the score "
                    f"(give 3 columns 'sentence1, sentence2, score', or a header row naming them)")


def _tab_separated(path: Path) -> bool:
    """Whether a delimited file is tab-separated: its first non-blank line holds a tab (STS Benchmark's
    ``.csv`` files are), or, for a one-column first line, it is not named ``.csv``."""
    for _, line in _lines(path):
        return "\t" in line or not _base_name(path).lower().endswith(".csv")
    return True


def _split_filter(path: Path, header: list[str], split: str) -> Optional[tuple[int, tuple[str, ...]]]:
    """``(column, values)`` that rows of ``split`` hold (lower case), for a file with a split column
    (SICK.txt's ``SemEval_set``, or a ``split`` column): a file that mixes splits gives only the one asked for."""
    column = _column(header, SPLIT_COLUMNS)
    if column is None:
        return None
    if split.lower() not in SPLIT_VALUES:
        raise DataError(f"{path}: has a {header[column].strip()} column, and split {split!r} is none of "
                        f"{', '.join(sorted(SPLIT_VALUES))}")
    return column, SPLIT_VALUES[split.lower()]


def read_sts(path: Path, name: Optional[str] = None, split: str = "test") -> STSSet:
    """Sentence pairs with a score: tab-separated (``.tsv``, ``.txt``, and a ``.csv`` whose lines hold
    tabs; quotes are plain characters) or comma-separated (``.csv``). Columns come from a header row
    naming ``sentence1``, ``sentence2`` and ``score`` (also ``sentence_A``/``sentence_B``/
    ``relatedness_score`` as in SICK), or, without a header, from three columns ``sentence1,
    sentence2, score`` or the STS Benchmark layout. A file with SICK's ``SemEval_set`` column or a
    ``split`` column gives the pairs of ``split`` only (``test``, ``train``, ``dev``: also TRIAL or
    validation; any case)."""
    tab = _tab_separated(path)
    pairs: list[tuple[str, str, float]] = []
    columns: Optional[tuple[int, int, int]] = None
    keep: Optional[tuple[int, tuple[str, ...]]] = None
    try:
        with _open_text(path) as handle:
            lines = (line for _, line in bounded_lines(handle, path, DataError))
            reader = csv.reader(lines, delimiter="\t" if tab else ",",
                                quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
            row_start = 1
            for row in reader:
                number, row_start = row_start, reader.line_num + 1
                if not any(cell.strip() for cell in row):
                    continue
                if columns is None:
                    columns, header = _sts_columns(path, row)
                    if header:
                        keep = _split_filter(path, row, split)
                        continue
                a, b, s = columns
                needed = max(columns + ((keep[0],) if keep else ()))
                if len(row) <= needed:
                    raise DataError(f"{path}, line {number}: expected at least {needed + 1} "
                                    f"{'tab' if tab else 'comma'}-separated columns, got {len(row)}")
                if keep and row[keep[0]].strip().lower() not in keep[1]:
                    continue
                score_text = row[s].strip()
                if not _is_number(score_text):
                    raise DataError(f"{path}, line {number}: score {score_text!r} is not a number")
                score = float(score_text)
                if not math.isfinite(score):
                    raise DataError(f"{path}, line {number}: score {score_text!r} is not a finite number")
                pairs.append((row[a], row[b], score))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not valid {'TSV' if tab else 'CSV'} ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    where = f" of split {split}" if keep else ""
    if len(pairs) < 2:
        raise DataError(f"{path}: needs at least 2 sentence pairs{where}, found {len(pairs)}")
    if len({score for _, _, score in pairs}) < 2:
        raise DataError(f"{path}: every pair has the same score; a correlation needs different scores")
    return STSSet(name or str(path), pairs)


# -- dispatch ----------------------------------------------------------------------------------------
def load_dataset(path: Union[str, Path], split: str = "test", name: Optional[str] = None) -> Dataset:
    """Read an evaluation data set, choosing the reader from the path (see the module docstring)."""
    source = Path(path).expanduser()
    label = name or str(path)
    if source.is_dir():
        return read_beir(source, split, label)
    if not source.is_file():
        raise DataError(f"data not found: {path}")
    base = _base_name(source).lower()
    if base.endswith(".jsonl"):
        return read_query_pos_neg(source, label)
    if base.endswith(DELIMITED):
        return read_sts(source, label, split)
    raise DataError(f"{path}: unknown data format (expected a BEIR folder, a query/pos/neg .jsonl file, or "
                    f"sentence pairs in .tsv/.csv; any may be .gz)")
