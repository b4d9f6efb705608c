"""``cocktail eval``: score embedding models and rerankers on retrieval and STS data sets.

Retrieval (BEIR folders, query/pos/neg JSONL): queries (with the query instruction, if any) are
ranked by cosine similarity against the corpus, or against their own passages; the scores are
nDCG@10, MRR@10, Recall@10 and Recall@100. STS pairs: Spearman correlation between the cosine
similarity of the two sentences and the gold score. Every metric is computed by ``cocktail.metrics``.
A reranker (``llm-reranker``) scores each (query, passage) pair instead: it ranks each query's own
passages (query/pos/neg JSONL) and its score of an STS pair is correlated with the gold score.

Results are rows ``{"model", "data", "metric", "value"}``; :func:`format_table` prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from cocktail.errors import InputError
from cocktail.evaluation.datasets import Dataset, RetrievalSet, STSSet, load_dataset
from cocktail.evaluation.metrics import RETRIEVAL_METRICS, retrieval_scores, spearman
from cocktail.io.adapters import bases_for
from cocktail.modeling.encoder import Encoder
from cocktail.modeling.llm_embedder import LLMEmbedder
from cocktail.modeling.llm_reranker import LLMReranker

TOP_K = 100
QUERY_CHUNK = 1024
SCORERS = {"encoder": Encoder, "llm-embedder": LLMEmbedder, "llm-reranker": LLMReranker}  # by model type


@dataclass
class Task:
    """One data set to score, with the instruction put before its queries (``None``: none)."""

    data: Dataset
    query_instruction: Optional[str] = None
    label: Optional[str] = None

    @property
    def name(self) -> str:
        return self.label or self.data.name

    @property
    def metrics(self) -> tuple[str, ...]:
        return RETRIEVAL_METRICS if isinstance(self.data, RetrievalSet) else ("spearman",)


def make_tasks(data: Sequence[Union[str, Task, Dataset]], query_instruction: Optional[str] = None,
               split: str = "test") -> list[Task]:
    """Tasks from paths (read with :func:`cocktail.datasets.load_dataset`), data sets or tasks."""
    tasks = []
    for item in data:
        if isinstance(item, Task):
            tasks.append(item)
        elif isinstance(item, (RetrievalSet, STSSet)):
            tasks.append(Task(item, query_instruction))
        else:
            tasks.append(Task(load_dataset(item, split), query_instruction))
    return tasks


def rank_corpus(encoder, data: RetrievalSet, query_instruction: Optional[str], top_k: int = TOP_K) -> dict[str, list[str]]:
    """Each query's best ``top_k`` document ids (or all its candidates), best first."""
    prefix = query_instruction or ""
    doc_ids = list(data.corpus)
    docs = encoder.encode([data.corpus[d] for d in doc_ids], cache=True, desc="corpus")
    query_ids = list(data.qrels)
    queries = encoder.encode([encoder.query_text(data.queries[q], prefix) for q in query_ids], desc="queries")
    rankings: dict[str, list[str]] = {}
    if data.candidates is None:
        k = min(top_k, len(doc_ids))
        for start in range(0, len(query_ids), QUERY_CHUNK):
            scores = queries[start:start + QUERY_CHUNK] @ docs.T
            best = scores.topk(k, dim=1).indices.tolist()
            for query_id, row in zip(query_ids[start:start + QUERY_CHUNK], best):
                rankings[query_id] = [doc_ids[i] for i in row]
        return rankings
    position = {d: i for i, d in enumerate(doc_ids)}
    for query_id, embedding in zip(query_ids, queries):
        pool = data.candidates[query_id]
        scores = docs[[position[d] for d in pool]] @ embedding
        order = scores.argsort(descending=True, stable=True).tolist()
        rankings[query_id] = [pool[i] for i in order]
    return rankings


def sts_correlation(encoder, data: STSSet) -> float:
    """Spearman correlation of cosine similarities with the gold scores."""
    first = encoder.encode([a for a, _, _ in data.pairs], desc="sentences")
    second = encoder.encode([b for _, b, _ in data.pairs], desc="sentences")
    cosines = (first * second).sum(-1).tolist()
    return spearman(cosines, [score for _, _, score in data.pairs])


def rank_by_pair_scores(reranker, data: RetrievalSet, instruction: Optional[str]) -> dict[str, list[str]]:
    """Each query's own candidates, best first by the reranker's score of (query, candidate)."""
    if data.candidates is None:
        raise InputError(f"{data.name}: a reranker ranks each query's own passages: give a query/pos/neg .jsonl "
                         "(ranking a whole corpus needs a first-stage retriever)")
    query_ids = list(data.qrels)
    pairs = [(data.queries[q], data.corpus[d]) for q in query_ids for d in data.candidates[q]]
    scores = iter(reranker.score(pairs, instruction))
    rankings = {}
    for query_id in query_ids:
        pool = data.candidates[query_id]
        mine = [next(scores) for _ in pool]
        order = sorted(range(len(pool)), key=lambda i: -mine[i])
        rankings[query_id] = [pool[i] for i in order]
    return rankings


def score_task(encoder, task: Task) -> dict[str, float]:
    """``{metric: value}`` of one encoder (or a reranker: it has ``score(pairs)``) on one task."""
    if hasattr(encoder, "score"):
        if isinstance(task.data, STSSet):
            scores = encoder.score([(a, b) for a, b, _ in task.data.pairs], task.query_instruction)
            return {"spearman": spearman(scores, [score for _, _, score in task.data.pairs])}
        return retrieval_scores(rank_by_pair_scores(encoder, task.data, task.query_instruction), task.data.qrels)
    if isinstance(task.data, STSSet):
        return {"spearman": sts_correlation(encoder, task.data)}
    return retrieval_scores(rank_corpus(encoder, task.data, task.query_instruction), task.data.qrels)


def score_encoder(encoder, tasks: Sequence[Task], model_label: str) -> list[dict]:
    """Rows ``{"model", "data", "metric", "value"}`` for one encoder on every task."""
    rows = []
    for task in tasks:
        for metric, value in score_task(encoder, task).items():
            rows.append({"model": model_label, "data": task.name, "metric": metric, "value": value})
    return rows


def evaluate_models(models: Sequence[str], data: Sequence[Union[str, Task, Dataset]],
                    query_instruction: Optional[str] = None, *, split: str = "test", batch_size: int = 32,
                    max_length: int = 512, device: Optional[str] = None, progress: bool = False,
                    labels: Optional[Sequence[str]] = None, trust_remote_code: bool = False,
                    model_type: str = "encoder", adapter_base: Optional[str] = None) -> list[dict]:
    """Score every model on every data set.

    Args:
        models: model folders (transformers or sentence-transformers) or cached hub ids.
        data: BEIR folders, query/pos/neg ``.jsonl`` files, STS ``.tsv``/``.csv`` files (any may be
            gzipped), or already built :class:`Task` objects (each with its own instruction).
        query_instruction: put before every query of the data given as paths (not before passages).
        split: the BEIR qrels split to use.
        batch_size, max_length, device: how to encode (default device: CUDA when present).
        progress: progress bars on stderr for long encodes.
        labels: names to show for the models (default: the paths as given).
        trust_remote_code: let a model folder's own code (``auto_map``) run; refused otherwise.
        model_type: ``encoder`` (BERT-style embedder), ``llm-embedder`` (decoder embedder) or
            ``llm-reranker`` (decoder reranker); for a reranker the instruction is its prompt.
        adapter_base: the base of the LoRA adapter folders among ``models`` (default: each one's config's).

    Returns:
        Rows ``{"model": ..., "data": ..., "metric": ..., "value": ...}``.
    """
    if model_type not in SCORERS:
        raise InputError(f"cocktail eval scores {', '.join(SCORERS)} models, not {model_type!r}")
    tasks = make_tasks(data, query_instruction, split)
    labels = list(labels) if labels is not None else [str(m) for m in models]
    rows = []
    for model, label, base in zip(models, labels, bases_for(models, adapter_base)):
        encoder = SCORERS[model_type].open(str(model), base, device=device, batch_size=batch_size,
                                           max_length=max_length, progress=progress, label=label,
                                           trust_remote_code=trust_remote_code)
        rows += score_encoder(encoder, tasks, label)
        del encoder
    return rows


def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def format_table(rows: Sequence[dict], row_key: str = "model", row_header: Optional[str] = None) -> str:
    """One block per data set: a line per model (or per ``row_key`` value), a column per metric."""
    blocks = []
    data_names = list(dict.fromkeys(r["data"] for r in rows))
    for data_name in data_names:
        mine = [r for r in rows if r["data"] == data_name]
        metrics = list(dict.fromkeys(r["metric"] for r in mine))
        keys = list(dict.fromkeys(str(r[row_key]) for r in mine))
        values = {(str(r[row_key]), r["metric"]): r["value"] for r in mine}
        header = row_header or row_key
        width = max(len(header), *(len(k) for k in keys))
        lines = [data_name, "  " + header.ljust(width) + "".join(f"  {m:>10}" for m in metrics)]
        for key in keys:
            cells = "".join(f"  {_cell(values[(key, m)]) if (key, m) in values else '':>10}" for m in metrics)
            lines.append("  " + key.ljust(width) + cells)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
