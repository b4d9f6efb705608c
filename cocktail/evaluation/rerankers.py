"""The candidates a reranker reranks on a BEIR folder: each query's top-k from a TREC run file, or from
a first-stage embedder.

A run file is TREC's format, one line per (query, document): ``qid Q0 docid rank score tag``,
whitespace-separated. It is checked strictly, as any input: six fields, an integer rank of at least 1,
a finite score, a document that is in the corpus, no (query, document) pair twice; each query keeps its
``top_k`` best documents by score (ties by rank). Queries the qrels split does not judge are skipped.
A first-stage embedder ranks the whole corpus with the same code as ``cocktail eval`` for embedders
(:func:`~cocktail.evaluation.evaluate.rank_corpus`); its candidates are computed once and reused for
every reranker.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from cocktail.errors import warn
from cocktail.evaluation.datasets import DataError, RetrievalSet, _lines

TOP_K = 100


def read_run(path: Path, data: RetrievalSet, top_k: int = TOP_K) -> dict[str, list[str]]:
    """Each judged query's ``top_k`` candidates from a TREC run file, best first."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"candidates file not found: {path}")
    found: dict[str, dict[str, tuple[float, int]]] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataError(f"{path}, line {number}: expected 6 fields 'qid Q0 docid rank score tag' (TREC run "
                            f"format), got {len(parts)}")
        query_id, _, doc_id, rank_text, score_text, _ = parts
        try:
            rank = int(rank_text)
        except ValueError:
            raise DataError(f"{path}, line {number}: rank {rank_text!r} is not an integer") from None
        if rank < 1:
            raise DataError(f"{path}, line {number}: rank {rank} is less than 1")
        try:
            score = float(score_text)
        except ValueError:
            raise DataError(f"{path}, line {number}: score {score_text!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{path}, line {number}: score {score_text!r} is not a finite number")
        if query_id not in data.qrels:
            continue  # a query this split does not judge
        if doc_id not in data.corpus:
            raise DataError(f"{path}, line {number}: document {doc_id!r} is not in the corpus of {data.name}")
        mine = found.setdefault(query_id, {})
        if doc_id in mine:
            raise DataError(f"{path}, line {number}: document {doc_id!r} is listed twice for query {query_id!r}")
        mine[doc_id] = (score, rank)
    if not found:
        raise DataError(f"{path}: no line names a query of {data.name} that has relevance judgements")
    missing = [q for q in data.qrels if q not in found]
    if missing:
        warn(f"{path}: {len(missing)} of {len(data.qrels)} judged queries have no candidates (they score 0)")
    return {q: [d for d, _ in sorted(found.get(q, {}).items(), key=lambda item: (-item[1][0], item[1][1]))][:top_k]
            for q in data.qrels}


def with_candidates(data: RetrievalSet, candidates: dict[str, list[str]]) -> RetrievalSet:
    """The same data set, each query ranking its own ``candidates`` only."""
    return replace(data, candidates={q: list(candidates.get(q, [])) for q in data.qrels})

