"""Evaluation metrics, in plain Python: ranking metrics for retrieval and Spearman's rho for STS.

Conventions follow ``trec_eval`` / BEIR: the gain of a document is its relevance grade (linear gain),
a document is relevant when its grade is above 0, and a query counts only if it has a relevant
document. Spearman's rho is Pearson's correlation of the ranks, ties getting their average rank.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains listed in rank order: sum of g_i / log2(i + 1), i from 1."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """nDCG@k of one ranked list of document ids; ``relevance`` maps a document id to its grade."""
    gains = [max(float(relevance.get(doc, 0)), 0.0) for doc in ranking[:k]]
    ideal = sorted((float(g) for g in relevance.values() if g > 0), reverse=True)[:k]
    best = dcg(ideal)
    return dcg(gains) / best if best > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top ``k`` (0 if there is none)."""
    for i, doc in enumerate(ranking[:k]):
        if relevance.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """Share of the relevant documents found in the top ``k``."""
    relevant = {doc for doc, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def retrieval_scores(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, MRR@10, Recall@10 and Recall@100 over the queries that have a relevant document.

    ``rankings`` maps a query id to its ranked document ids (best first); ``qrels`` maps a query id
    to ``{document id: grade}``.
    """
    queries = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not queries:
        raise ValueError("no query has a relevant document")
    totals = dict.fromkeys(RETRIEVAL_METRICS, 0.0)
    for query in queries:
        ranking = list(rankings.get(query, ()))
        relevance = qrels[query]
        totals["ndcg@10"] += ndcg_at_k(ranking, relevance, 10)
        totals["mrr@10"] += mrr_at_k(ranking, relevance, 10)
        totals["recall@10"] += recall_at_k(ranking, relevance, 10)
        totals["recall@100"] += recall_at_k(ranking, relevance, 100)
    return {name: value / len(queries) for name, value in totals.items()}


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing the mean of the ranks they span (``[10, 20, 20]`` -> ``[1, 2.5, 2.5]``)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        rank = (start + end) / 2 + 1
        for i in order[start:end + 1]:
            ranks[i] = rank
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation; ``nan`` when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"got {len(x)} and {len(y)} values")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get average ranks); ``nan`` when either side is constant."""
    return pearson(average_ranks(x), average_ranks(y))
