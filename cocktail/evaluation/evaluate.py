"""``cocktail eval``: score embedding models and rerankers on retrieval and STS data sets.

Retrieval (BEIR folders, query/pos/neg JSONL): queries (with the query instruction, if any) are
ranked by cosine similarity against the corpus, or against their own passages; the scores are
nDCG@10, MRR@10, Recall@10 and Recall@100. STS pairs: Spearman correlation between the cosine
similarity of the two sentences and the gold score. Every metric is computed by ``cocktail.metrics``.
A bge-m3 model (its ``colbert_linear.pt`` and ``sparse_linear.pt`` beside it) is scored in each of its
modes, ``dense``, ``sparse``, ``colbert`` and ``hybrid`` (see :mod:`cocktail.modeling.m3`).

A reranker (``reranker``: a cross-encoder; ``llm-reranker``: a decoder) scores each (query, passage)
pair instead: it ranks each query's own passages (query/pos/neg JSONL), or on a BEIR folder each
query's top-k candidates from a TREC run file or a first-stage embedder (:mod:`.rerankers`); its
score of an STS pair is correlated with the gold score.

Results are rows ``{"model", "data", "metric", "value"}`` (and ``"mode"`` for models with several
modes); :func:`format_table` prints them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch

from cocktail.errors import InputError, option, warn
from cocktail.evaluation.datasets import Dataset, RetrievalSet, STSSet, load_dataset
from cocktail.evaluation.metrics import RETRIEVAL_METRICS, retrieval_scores, spearman
from cocktail.evaluation.rerankers import TOP_K, read_run, with_candidates
from cocktail.io.adapters import bases_for, open_path
from cocktail.merging.plan import Plan, build_plan
from cocktail.modeling.cross_encoder import CrossEncoder
from cocktail.modeling.encoder import Encoder
from cocktail.modeling.llm_embedder import LLMEmbedder
from cocktail.modeling.llm_reranker import LLMReranker
from cocktail.modeling.m3 import COLBERT_FILE, SPARSE_FILE, M3Encoder, has_m3_heads
from cocktail.modeling.m3 import hybrid_weights as m3_hybrid_weights
from cocktail.recipe.model_type import settle as settle_model_type
from cocktail.recipe.scoring import ScoringOptions

QUERY_CHUNK = 1024
# the scorer of each model type; an encoder with bge-m3's head files gets M3Encoder (see scorer_class)
SCORERS = {"encoder": Encoder, "llm-embedder": LLMEmbedder, "reranker": CrossEncoder, "llm-reranker": LLMReranker}
RERANKERS = ("reranker", "llm-reranker")


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during :func:`evaluate_models`: ``rows`` holds the scores finished before it,
    ``where`` what was being scored (``model 2 of 3 (./b), data set 1 of 2 (sts.tsv)``)."""

    def __init__(self, rows: list[dict], where: str):
        super().__init__(where)
        self.rows, self.where = rows, where


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


def scorer_class(model_type: str, plan: Plan) -> type:
    """The class that scores ``plan``'s models as ``model_type``: :data:`SCORERS`, bge-m3 found by its heads."""
    if model_type not in SCORERS:
        raise InputError(f"cocktail eval scores {', '.join(SCORERS)} models, not {model_type!r}")
    chosen = SCORERS[model_type]
    if chosen is not Encoder:
        return chosen
    if has_m3_heads(plan):
        return M3Encoder
    heads = [name for name in (COLBERT_FILE, SPARSE_FILE) if name in plan.components]
    if heads:  # half a bge-m3: say why only dense is scored
        lacking = SPARSE_FILE if heads[0] == COLBERT_FILE else COLBERT_FILE
        warn(f"{plan.checkpoints[0].source} has bge-m3's {heads[0]} but not its {lacking}: scored dense only "
             "(the sparse, colbert and hybrid modes need both head files)")
    return Encoder


def eval_model_type(given: Optional[str], source: str, adapter_base: Optional[str] = None) -> str:
    """The type ``source`` is scored as: ``given`` if its config does not contradict it, else what its
    config.json says (a causal LM is scored as a decoder reranker or embedder only when told which)."""
    with open_path(str(source), adapter_base) as checkpoint:
        settled = settle_model_type(given, checkpoint)
    if settled not in SCORERS:
        raise InputError(f"{source} is a {settled} model (a causal LM), which cocktail eval scores as "
                         f"{option('model_type')} llm-reranker (the logit of 'Yes') or llm-embedder (last token): "
                         "say which")
    return settled


def describe_scorer(model_type: str, scorer) -> str:
    """How a model is scored, for the progress lines: its type and pooling (embedders), or its score; and
    its dtype and device."""
    pooling = getattr(scorer, "pooling", None)
    run = f"; {scorer.placement.describe()}"
    if pooling is not None:
        modes = ", ".join(modes_of(scorer)) if len(modes_of(scorer)) > 1 else None
        return (f"{model_type}, pooling {'+'.join(pooling.modes)} ({pooling.source})"
                + (f", modes {modes}" if modes else "") + run)
    return f"{model_type}, one score per (query, passage) pair{run}"


def trivial_queries(data: RetrievalSet) -> int:
    """How many queries have nothing but relevant passages to rank (their metrics are 1 whatever the model);
    a query with no candidates at all scores 0, and is not one of them."""
    if data.candidates is None:
        return 0
    return sum(1 for q in data.qrels
               if data.candidates.get(q) and all(data.qrels[q].get(d, 0) > 0 for d in data.candidates[q]))


def warn_degenerate(tasks: Sequence[Task]) -> None:
    for task in tasks:
        if isinstance(task.data, RetrievalSet):
            count, total = trivial_queries(task.data), len(task.data.qrels)
            if count:
                warn(f"{task.name}: {count} of {total} queries have no negatives (only relevant passages to rank), "
                     f"so every model scores 1 on them: add 'neg' passages to rank against")


def open_scorer(model_type: str, source: str, adapter_base: Optional[str] = None,
                hybrid: Optional[dict[str, float]] = None, **options):
    """The scorer of one model (a folder, cached hub id, or LoRA adapter folder), filled with its weights
    (``hybrid``: bge-m3's hybrid weights, see :func:`use_hybrid_weights`)."""
    with open_path(str(source), adapter_base) as checkpoint:
        plan = build_plan([checkpoint], dtype=torch.float32)
        scorer = scorer_class(model_type, plan)(plan, **options)
        try:
            scorer.fill_from_checkpoint(0)
        except BaseException:
            scorer.close()
            raise
    return use_hybrid_weights(scorer, hybrid)


def use_hybrid_weights(scorer, hybrid: Optional[dict[str, float]]):
    """``scorer``, its hybrid mode weighted by ``hybrid`` (from :func:`~cocktail.modeling.m3.hybrid_weights`;
    ``None``: the default); a warning for a model without a hybrid mode."""
    if hybrid is None:
        return scorer
    if isinstance(scorer, M3Encoder):
        scorer.hybrid = hybrid
    else:
        warn(f"{scorer.label} is not a bge-m3 model (it has no hybrid mode): {option('hybrid_weights')} does not "
             "apply to it")
    return scorer


def modes_of(scorer) -> tuple[str, ...]:
    return tuple(getattr(scorer, "modes", ("dense",)))


def rank_corpus(encoder, data: RetrievalSet, query_instruction: Optional[str], top_k: int = TOP_K
                ) -> dict[str, dict[str, list[str]]]:
    """In each of the encoder's modes, each query's best ``top_k`` document ids (or all its candidates),
    best first: ``{mode: {query id: ranking}}``. Texts are encoded once for every mode."""
    prefix = query_instruction or ""
    doc_ids = list(data.corpus)
    docs = encoder.encode([data.corpus[d] for d in doc_ids], cache=True, desc="corpus")
    query_ids = list(data.qrels)
    queries = encoder.encode([encoder.query_text(data.queries[q], prefix) for q in query_ids], desc="queries")
    by_mode: dict[str, dict[str, list[str]]] = {}
    for mode in modes_of(encoder):
        rankings: dict[str, list[str]] = {}
        if data.candidates is None:
            k = min(top_k, len(doc_ids))
            for start in range(0, len(query_ids), QUERY_CHUNK):
                scores = encoder.similarity(queries[start:start + QUERY_CHUNK], docs, mode)
                best = scores.topk(k, dim=1).indices.tolist()
                for query_id, row in zip(query_ids[start:start + QUERY_CHUNK], best):
                    rankings[query_id] = [doc_ids[i] for i in row]
        else:
            position = {d: i for i, d in enumerate(doc_ids)}
            for i, query_id in enumerate(query_ids):
                pool = data.candidates[query_id]
                if not pool:
                    rankings[query_id] = []
                    continue
                scores = encoder.similarity(queries[[i]], docs[[position[d] for d in pool]], mode)[0]
                order = scores.argsort(descending=True, stable=True).tolist()
                rankings[query_id] = [pool[j] for j in order]
        by_mode[mode] = rankings
    return by_mode


def sts_correlation(encoder, data: STSSet) -> dict[str, float]:
    """In each of the encoder's modes, the Spearman correlation of the pairs' similarities with the gold scores."""
    first = encoder.encode([a for a, _, _ in data.pairs], desc="sentences")
    second = encoder.encode([b for _, b, _ in data.pairs], desc="sentences")
    gold = [score for _, _, score in data.pairs]
    return {mode: spearman(encoder.pair_similarity(first, second, mode).tolist(), gold) for mode in modes_of(encoder)}


def rank_by_pair_scores(reranker, data: RetrievalSet, instruction: Optional[str]) -> dict[str, list[str]]:
    """Each query's own candidates, best first by the reranker's score of (query, candidate)."""
    if data.candidates is None:
        raise InputError(f"{data.name}: a reranker ranks each query's candidates: give a query/pos/neg .jsonl, "
                         f"or for a BEIR folder {option('candidates')} (a TREC run file) or {option('retriever')} "
                         "(a first-stage embedder)")
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


def score_task(encoder, task: Task) -> dict[str, dict[str, float]]:
    """``{mode: {metric: value}}`` of one encoder (or a reranker: it has ``score(pairs)``, one mode) on one task."""
    if hasattr(encoder, "score"):
        if isinstance(task.data, STSSet):
            scores = encoder.score([(a, b) for a, b, _ in task.data.pairs], task.query_instruction)
            return {"dense": {"spearman": spearman(scores, [score for _, _, score in task.data.pairs])}}
        rankings = rank_by_pair_scores(encoder, task.data, task.query_instruction)
        return {"dense": retrieval_scores(rankings, task.data.qrels)}
    if isinstance(task.data, STSSet):
        return {mode: {"spearman": value} for mode, value in sts_correlation(encoder, task.data).items()}
    return {mode: retrieval_scores(rankings, task.data.qrels)
            for mode, rankings in rank_corpus(encoder, task.data, task.query_instruction).items()}


def score_encoder(encoder, tasks: Sequence[Task], model_label: str) -> list[dict]:
    """Rows ``{"model", "data", "metric", "value"}`` for one encoder on every task; a model with several
    modes (bge-m3) has a row per mode, with its ``"mode"``."""
    several = len(modes_of(encoder)) > 1
    rows = []
    for task in tasks:
        for mode, values in score_task(encoder, task).items():
            for metric, value in values.items():
                row = {"model": model_label, "data": task.name, "metric": metric, "value": value}
                rows.append({**row, "mode": mode} if several else row)
    return rows


def first_stage(tasks: list[Task], candidates: Optional[str], retriever: Optional[str], top_k: int,
                options: dict, retriever_base: Optional[str] = None) -> tuple[list[Task], list[dict]]:
    """Give every BEIR task (a whole corpus) the candidates a reranker reranks: from the run file
    ``candidates`` or the embedder ``retriever`` (run once, here). Returns the tasks and the retriever's
    own rows (labelled ``<retriever> (first stage)``)."""
    if candidates and retriever:
        raise InputError(f"give {option('candidates')} or {option('retriever')}, not both")
    open_tasks = [i for i, t in enumerate(tasks) if isinstance(t.data, RetrievalSet) and t.data.candidates is None]
    if not open_tasks:
        if candidates or retriever:
            raise InputError(f"{option('candidates') if candidates else option('retriever')} reranks a BEIR "
                             "folder's corpus, and no data given is one")
        return tasks, []
    if top_k < 1:
        raise InputError(f"{option('top_k')} must be at least 1, got {top_k}")
    tasks = list(tasks)
    rows: list[dict] = []
    encoder = open_scorer("encoder", retriever, retriever_base, **options) if retriever else None
    try:
        _rank_open_tasks(tasks, open_tasks, candidates, encoder, retriever, top_k, rows)
    finally:
        if encoder is not None:
            encoder.close()
    return tasks, rows


def _rank_open_tasks(tasks: list[Task], open_tasks: list[int], candidates: Optional[str], encoder,
                     retriever: Optional[str], top_k: int, rows: list[dict]) -> None:
    """Give each BEIR task of ``open_tasks`` its candidates: from the run file, or the ``encoder``'s top-k."""
    for i in open_tasks:
        task = tasks[i]
        if candidates:
            pools = read_run(candidates, task.data, top_k)
        elif encoder is not None:
            pools = rank_corpus(encoder, task.data, task.query_instruction, top_k)["dense"]
            rows += [{"model": f"{retriever} (first stage)", "data": task.name, "metric": metric, "value": value}
                     for metric, value in retrieval_scores(pools, task.data.qrels).items()]
        else:
            raise InputError(f"{task.name}: a reranker reranks candidates of a BEIR folder: give "
                             f"{option('candidates')} (a TREC run file) or {option('retriever')} (a first-stage embedder)")
        tasks[i] = replace(task, data=with_candidates(task.data, pools))


def evaluate_models(models: Sequence[str], data: Sequence[Union[str, Task, Dataset]],
                    query_instruction: Optional[str] = None, *, split: str = "test", batch_size: int = 32,
                    max_length: int = 512, device: Optional[str] = None, progress: bool = False,
                    labels: Optional[Sequence[str]] = None, trust_remote_code: bool = False,
                    model_type: Optional[str] = None, adapter_base: Optional[str] = None,
                    candidates: Optional[str] = None, retriever: Optional[str] = None,
                    top_k: int = TOP_K, hybrid_weights: Optional[Sequence[float]] = None,
                    score_dtype: Optional[str] = None, device_map: Optional[str] = None,
                    max_memory: Union[str, dict, None] = None, offload_folder: Optional[str] = None
                    ) -> list[dict]:
    """Score every model on every data set.

    Args:
        models: model folders (transformers or sentence-transformers) or cached hub ids.
        data: BEIR folders, query/pos/neg ``.jsonl`` files, STS ``.tsv``/``.csv`` files (any may be
            gzipped), or already built :class:`Task` objects (each with its own instruction).
        query_instruction: put before every query of the data given as paths (not before passages).
        split: the BEIR qrels split to use.
        batch_size, max_length, device: how to encode (default device: CUDA when present).
        progress: a line on stderr per model (how it is scored: type, pooling) and per data set, and a
            progress bar for any step (encoding, scoring pairs) that runs over two seconds.
        labels: names to show for the models (default: the paths as given).
        trust_remote_code: let a model folder's own code (``auto_map``) run; refused otherwise.
        model_type: ``encoder`` (BERT-style embedder; bge-m3 is scored in each of its modes),
            ``llm-embedder`` (decoder embedder), ``reranker`` (cross-encoder) or ``llm-reranker``
            (decoder reranker); for a decoder reranker the instruction is its prompt. Default: what each
            model's config.json says (``…ForSequenceClassification``: reranker), as for merging.
        adapter_base: the base of the LoRA adapter folders among ``models`` (default: each one's config's).
        candidates: for rerankers on BEIR folders, a TREC run file giving each query's candidates.
        retriever: for rerankers on BEIR folders, an embedder whose ``top_k`` results are the candidates
            (computed once for every reranker; its own scores come first, labelled ``(first stage)``).
        top_k: how many candidates each query keeps.
        hybrid_weights: bge-m3's hybrid mode as ``(dense, sparse, colbert)`` weights (default 0.4, 0.2,
            0.4, as bge-m3's model card advises; ``BGEM3FlagModel.compute_score`` defaults to 1, 1, 1).
        score_dtype, device_map, max_memory, offload_folder: how each model is run (its dtype, spread over
            devices and disk): see :func:`cocktail.few_shot_losses`; scores are float32 whatever the dtype.

    Returns:
        Rows ``{"model": ..., "data": ..., "metric": ..., "value": ...}`` (and ``"mode"`` for bge-m3).

    Raises:
        EvalInterrupted: on Ctrl-C while models are scored, with the rows finished before it.
    """
    scoring = ScoringOptions(score_dtype, device_map, max_memory, offload_folder)
    scoring.check()
    if model_type is not None and model_type not in SCORERS:
        raise InputError(f"cocktail eval scores {', '.join(SCORERS)} models, not {model_type!r}")
    hybrid = None if hybrid_weights is None else m3_hybrid_weights(hybrid_weights)
    tasks = make_tasks(data, query_instruction, split)
    labels = list(labels) if labels is not None else [str(m) for m in models]
    bases = bases_for(models, adapter_base)
    types = [eval_model_type(model_type, str(m), base) for m, base in zip(models, bases)]
    if (candidates or retriever) and not any(t in RERANKERS for t in types):
        raise InputError(f"{option('candidates') if candidates else option('retriever')} is for rerankers "
                         f"({option('model_type')} {' or '.join(RERANKERS)})")
    options = dict(device=device, batch_size=batch_size, max_length=max_length, progress=progress,
                   trust_remote_code=trust_remote_code, scoring=scoring)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    rows: list[dict] = []
    where = "the first stage"
    try:
        reranked = tasks  # what rerankers score: BEIR folders get their candidates first
        if any(t in RERANKERS for t in types):
            reranked, rows = first_stage(tasks, candidates, retriever, top_k, options)
        warn_degenerate(reranked)
        for i, (model, label, base, kind) in enumerate(zip(models, labels, bases, types), 1):
            where = f"model {i} of {len(models)} ({label})"
            with open_scorer(kind, str(model), base, hybrid, label=label, **options) as scorer:
                say(f"eval [{i}/{len(models)}] {label}: {describe_scorer(kind, scorer)}")
                for j, task in enumerate(reranked if kind in RERANKERS else tasks, 1):
                    where = f"model {i} of {len(models)} ({label}) on data set {j} of {len(tasks)} ({task.name})"
                    say(f"  [{j}/{len(tasks)}] {task.name}")
                    rows += score_encoder(scorer, [task], label)
    except KeyboardInterrupt:
        raise EvalInterrupted(rows, where) from None
    return rows


def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def metric_label(row: dict) -> str:
    """A row's metric as a column title: ``ndcg@10``, or ``ndcg@10[sparse]`` for one mode of several."""
    return f"{row['metric']}[{row['mode']}]" if row.get("mode") else row["metric"]


TABLE_WIDTH = 110  # a table wider than this is folded: its columns go on several lines


def format_table(rows: Sequence[dict], row_key: str = "model", row_header: Optional[str] = None,
                 width: int = TABLE_WIDTH) -> str:
    """One block per data set: a line per model (or per ``row_key`` value), a column per metric; columns
    that would make a line wider than ``width`` (bge-m3's 16 metric-and-mode columns) go on to a further
    part of the block, the model names repeated."""
    blocks = []
    data_names = list(dict.fromkeys(r["data"] for r in rows))
    for data_name in data_names:
        mine = [r for r in rows if r["data"] == data_name]
        metrics = list(dict.fromkeys(metric_label(r) for r in mine))
        keys = list(dict.fromkeys(str(r[row_key]) for r in mine))
        values = {(str(r[row_key]), metric_label(r)): r["value"] for r in mine}
        header = row_header or row_key
        key_width = max(len(header), *(len(k) for k in keys))
        lines = [data_name]
        for part in _fold(metrics, width - 2 - key_width):
            if len(lines) > 1:
                lines.append("")
            lines.append("  " + header.ljust(key_width) + "".join(f"  {m:>{_column(m)}}" for m in part))
            for key in keys:
                cells = "".join(f"  {_cell(values[(key, m)]) if (key, m) in values else '':>{_column(m)}}"
                                for m in part)
                lines.append("  " + key.ljust(key_width) + cells)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _column(metric: str) -> int:
    return max(10, len(metric))


def _fold(metrics: list[str], room: int) -> list[list[str]]:
    """``metrics`` in parts whose columns fit in ``room`` characters: the columns of one mode
    (``...[sparse]``) kept together where they fit, at least one column a part."""
    groups: list[list[str]] = []
    for metric in metrics:
        mode = metric.partition("[")[2]
        if groups and groups[-1][0].partition("[")[2] == mode:
            groups[-1].append(metric)
        else:
            groups.append([metric])
    parts: list[list[str]] = [[]]
    used = 0
    for group in groups:
        need = sum(2 + _column(m) for m in group)
        if parts[-1] and used + need > room:
            parts.append([])
            used = 0
        for metric in group:  # a group wider than the room on its own is cut where it must be
            if parts[-1] and used + 2 + _column(metric) > room:
                parts.append([])
                used = 0
            parts[-1].append(metric)
            used += 2 + _column(metric)
    return parts
