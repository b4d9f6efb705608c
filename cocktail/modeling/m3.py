"""bge-m3's three retrieval modes, computed as FlagEmbedding's ``BGEM3FlagModel`` computes them.

A model folder with the head files ``colbert_linear.pt`` and ``sparse_linear.pt`` beside its XLM-R
encoder (bge-m3 and its fine-tunes) is scored in every mode it has:

- ``dense``: the ``[CLS]`` hidden state, L2-normalised; the score is the dot product;
- ``sparse`` (lexical matching): each token's weight is ``relu(sparse_linear(hidden))``, a token id
  keeps its highest weight in the text, special tokens (CLS, EOS, PAD, UNK) are dropped; the score of
  two texts is the sum over their shared token ids of ``w_q * w_d``;
- ``colbert`` (multi-vector): ``colbert_linear(hidden[:, 1:])`` of every token but ``[CLS]``,
  L2-normalised; the score is the mean over the query's vectors of their best dot product with the
  passage's vectors;
- ``hybrid``: ``0.4 dense + 0.2 sparse + 0.4 colbert`` by default, the weights bge-m3's model card
  advises (``BGEM3FlagModel.compute_score``'s own default is ``[1, 1, 1]``); ``--hybrid-weights`` sets them.

The encoder, its tokenizer and batching are :class:`~cocktail.modeling.encoder.Encoder`'s; the heads'
weights come through the skeleton like every other component, so a merge in memory (``sweep``) merges
them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from cocktail.errors import InputError, option
from cocktail.merging.plan import Plan
from cocktail.modeling.encoder import Encoder
from cocktail.modeling.text_cut import cut_all, token_lengths

COLBERT_FILE, SPARSE_FILE = "colbert_linear.pt", "sparse_linear.pt"
MODES = ("dense", "sparse", "colbert", "hybrid")
HYBRID_WEIGHTS = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}  # bge-m3's model card advises these
DOC_CHUNK = 128  # passages scored at once by ColBERT's max-sim
QUERY_BLOCK = 32  # queries scored at once (their vectors against a chunk of passages: one matrix product)


def has_m3_heads(plan: Plan) -> bool:
    """Whether the plan's models carry both of bge-m3's head files."""
    return {COLBERT_FILE, SPARSE_FILE} <= set(plan.components)


@dataclass
class M3Vectors:
    """What bge-m3 makes of some texts: ``dense`` ``(n, hidden)``, ``sparse`` (``{token id: weight}`` per
    text) and ``colbert`` (a ``(tokens - 1, hidden)`` tensor per text). Indexed like a tensor's rows."""

    dense: torch.Tensor
    sparse: list[dict[int, float]]
    colbert: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.sparse)

    def __getitem__(self, index) -> "M3Vectors":
        rows = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        return M3Vectors(self.dense[rows], [self.sparse[i] for i in rows], [self.colbert[i] for i in rows])


def lexical_scores(queries: Sequence[dict[int, float]], docs: Sequence[dict[int, float]]) -> torch.Tensor:
    """``(queries, docs)`` lexical matching scores: the sum over shared token ids of ``w_q * w_d``
    (through an inverted index of the passages' tokens, accumulated in float64)."""
    postings: dict[int, tuple[list[int], list[float]]] = {}
    for d, weights in enumerate(docs):
        for token, weight in weights.items():
            where, values = postings.setdefault(token, ([], []))
            where.append(d)
            values.append(weight)
    index = {token: (torch.tensor(where), torch.tensor(values, dtype=torch.float64))
             for token, (where, values) in postings.items()}
    out = torch.zeros(len(queries), len(docs), dtype=torch.float64)
    for q, weights in enumerate(queries):
        for token, weight in weights.items():
            if token in index:
                where, values = index[token]
                out[q].index_add_(0, where, values * weight)
    return out.float()


def colbert_scores(queries: Sequence[torch.Tensor], docs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(queries, docs)`` ColBERT scores: per query vector its best dot product with the passage's
    vectors, averaged over the query's vectors (a passage without vectors scores 0). Computed a block
    of queries against a block of passages at a time, as one matrix product."""
    out = torch.zeros(len(queries), len(docs))
    if not queries or not docs:
        return out
    width = queries[0].shape[-1]
    for d_start in range(0, len(docs), DOC_CHUNK):
        chunk = docs[d_start:d_start + DOC_CHUNK]
        longest = max(max(d.shape[0] for d in chunk), 1)
        padded = torch.zeros(len(chunk), longest, width)
        real = torch.zeros(len(chunk), longest, dtype=torch.bool)
        for i, d in enumerate(chunk):
            padded[i, :d.shape[0]] = d
            real[i, :d.shape[0]] = True
        flat = padded.reshape(-1, width)
        for q_start in range(0, len(queries), QUERY_BLOCK):
            block = queries[q_start:q_start + QUERY_BLOCK]
            lengths = torch.tensor([q.shape[0] for q in block])
            sims = (torch.cat(list(block)) @ flat.T).view(-1, len(chunk), longest)
            best = sims.masked_fill(~real[None], float("-inf")).max(dim=-1).values  # (query vectors, docs)
            best = torch.where(torch.isinf(best), torch.zeros_like(best), best)
            owner = torch.repeat_interleave(torch.arange(len(block)), lengths)
            sums = torch.zeros(len(block), len(chunk)).index_add_(0, owner, best)
            out[q_start:q_start + len(block), d_start:d_start + len(chunk)] = sums / lengths.clamp_min(1)[:, None]
    return out


def hybrid_weights(values: Sequence[float]) -> dict[str, float]:
    """The hybrid mode's weights of dense, sparse and colbert from ``values`` (three numbers, none
    negative, not all zero), as :data:`HYBRID_WEIGHTS`."""
    values = [float(v) for v in values]
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise InputError(f"{option('hybrid_weights')} takes three weights, of dense, sparse and colbert, none "
                         f"negative and not all 0 (bge-m3's model card advises 0.4 0.2 0.4), got "
                         f"{' '.join(f'{v:g}' for v in values)}")
    return dict(zip(HYBRID_WEIGHTS, values))


def similarity(queries: M3Vectors, docs: M3Vectors, mode: str,
               hybrid: dict[str, float] = HYBRID_WEIGHTS) -> torch.Tensor:
    """``(queries, docs)`` scores in one of :data:`MODES` (``hybrid``: the weights of the hybrid mode)."""
    if mode == "dense":
        return queries.dense @ docs.dense.T
    if mode == "sparse":
        return lexical_scores(queries.sparse, docs.sparse)
    if mode == "colbert":
        return colbert_scores(queries.colbert, docs.colbert)
    if mode == "hybrid":
        return sum(weight * similarity(queries, docs, part) for part, weight in hybrid.items())
    raise InputError(f"unknown retrieval mode {mode!r} (choose from {', '.join(MODES)})")


def pair_similarity(first: M3Vectors, second: M3Vectors, mode: str,
                    hybrid: dict[str, float] = HYBRID_WEIGHTS) -> torch.Tensor:
    """The score of each pair ``(first[i], second[i])`` in ``mode``."""
    if mode == "dense":
        return (first.dense * second.dense).sum(-1)
    return torch.stack([similarity(first[[i]], second[[i]], mode, hybrid)[0, 0] for i in range(len(first))])


class M3Encoder(Encoder):
    """An :class:`Encoder` for bge-m3: ``encode`` gives :class:`M3Vectors`, scored in every mode of :data:`MODES`."""

    modes = MODES
    hybrid = HYBRID_WEIGHTS  # the hybrid mode's weights (see hybrid_weights)

    def __init__(self, plan: Plan, *args, **kwargs):
        super().__init__(plan, *args, **kwargs)
        hidden = int(self.model.config.hidden_size)
        shapes = {t.name: tuple(t.shape) for t in plan.tensors if t.component in (COLBERT_FILE, SPARSE_FILE)}
        if shapes.get("sparse_linear.weight") != (1, hidden) or len(shapes.get("colbert_linear.weight", ())) != 2 \
                or shapes["colbert_linear.weight"][1] != hidden:
            raise InputError(f"{self.source}: {SPARSE_FILE} must hold a Linear({hidden}, 1) and {COLBERT_FILE} a "
                             f"Linear({hidden}, n) state dict (weight and bias), as bge-m3's do; found "
                             f"{ {k: list(v) for k, v in shapes.items()} }")
        tokenizer = self.tokenizer
        self.special = {i for i in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                    tokenizer.unk_token_id) if i is not None}

    def similarity(self, queries: M3Vectors, docs: M3Vectors, mode: str = "dense") -> torch.Tensor:
        return similarity(queries, docs, mode, self.hybrid)

    def pair_similarity(self, first: M3Vectors, second: M3Vectors, mode: str = "dense") -> torch.Tensor:
        return pair_similarity(first, second, mode, self.hybrid)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], cache: bool = False, desc: str = "encoding") -> M3Vectors:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache)) if cache else list(dict.fromkeys(texts))
        if todo:
            computed = self._encode_m3(todo, desc)
            fresh = {text: (computed.dense[i], computed.sparse[i], computed.colbert[i]) for i, text in enumerate(todo)}
            if cache:
                self._cache.update(fresh)
        else:
            fresh = {}
        rows = [fresh[t] if t in fresh else self._cache[t] for t in texts]
        dense = torch.stack([r[0] for r in rows]) if rows else torch.empty(0, self.dimension)
        return M3Vectors(dense, [r[1] for r in rows], [r[2] for r in rows])

    def _head(self, file_name: str, name: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        tensors = self.skeleton.modules[file_name]
        return tensors[f"{name}.weight"], tensors.get(f"{name}.bias")

    def _encode_m3(self, texts: list[str], desc: str) -> M3Vectors:
        texts = cut_all(texts, self.max_length)
        lengths = token_lengths(self.tokenizer, texts, self.max_length)
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        dense = torch.empty(len(texts), self.dimension)
        sparse: list[dict[int, float]] = [{} for _ in texts]
        colbert: list[Optional[torch.Tensor]] = [None] * len(texts)
        sparse_w, sparse_b = self._head(SPARSE_FILE, "sparse_linear")
        colbert_w, colbert_b = self._head(COLBERT_FILE, "colbert_linear")
        bar = self.bar(len(texts), desc)
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"]
                dense[chunk] = torch.nn.functional.normalize(hidden[:, 0], dim=-1).cpu()  # CLS, as BGEM3FlagModel
                weights = torch.relu(torch.nn.functional.linear(hidden, sparse_w, sparse_b))[..., 0].cpu()
                vectors = torch.nn.functional.linear(hidden[:, 1:], colbert_w, colbert_b) * mask[:, 1:, None]
                vectors = torch.nn.functional.normalize(vectors, dim=-1).cpu()
                ids, lengths = batch["input_ids"].cpu().tolist(), mask.sum(dim=1).tolist()
                for row, i in enumerate(chunk):
                    mine = sparse[i]
                    for token, weight in zip(ids[row], weights[row].tolist()):
                        if token not in self.special and weight > 0 and weight > mine.get(token, 0.0):
                            mine[token] = weight
                    colbert[i] = vectors[row, :int(lengths[row]) - 1].clone()
                bar.update(len(chunk))
        finally:
            bar.close()
        return M3Vectors(dense, sparse, colbert)
