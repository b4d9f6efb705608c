"""The few-shot loss of one model, LM-Cocktail's definitions, for embedders, rerankers and decoders.

Examples are tokenised once (:func:`prepare`); the result scores any model loaded with the same
architecture (:meth:`Prepared.loss`), so N checkpoints cost N forward passes over the examples and no
re-tokenising.

- **encoder**: each text's embedding is the pooled last hidden state (``[CLS]`` by default, the BGE
  convention, or the pooling of the model's sentence-transformers config), L2-normalised. Examples are
  grouped ``batch_size`` at a time; a group's passages are, per query, its first positive then its
  chosen negatives; ``scores = q @ p.T / 0.05`` over all passages of the group (in-batch negatives);
  the group's loss is the cross-entropy with each query's own positive as the target; the model's
  loss is the mean over groups. Texts are encoded in length-sorted chunks (fast); only the loss
  grouping follows ``batch_size``.
- **reranker**: per query, the one-logit scores of (query, positive) and (query, negative j);
  cross-entropy with the positive as the target; mean over the queries of a group, then over groups.
- **decoder**: causal-LM cross-entropy on the output tokens only (``input + " " + output`` then EOS,
  the input's tokens masked), mean over a group's output tokens, then over groups. Each group is
  padded to its own longest sequence.
- **llm-embedder**: as the encoder, with last-token pooling (unless the model's sentence-transformers
  config names another) and queries written ``<instruct>{instruction}\n<query>{query}`` when there is an
  instruction (the example's ``prompt``, else ``query_instruction``).
- **llm-reranker**: as the reranker, the score being the ``Yes`` logit after FlagEmbedding's reranker
  prompt (the example's ``prompt``, else ``query_instruction``, else FlagEmbedding's default); see
  :mod:`cocktail.modeling.llm_reranker`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Optional, Sequence

import torch

from cocktail.errors import InputError, option
from cocktail.fewshot.examples import Example
from cocktail.modeling.llm_embedder import llm_query_text
from cocktail.modeling.llm_reranker import pair_ids, yes_scores, yes_token
from cocktail.modeling.loading import pad_token_id
from cocktail.modeling.pooling import Pooling
from cocktail.modeling.text_cut import cut, cut_all

TEMPERATURE_SCALE = 0.05  # LM-Cocktail / BGE: scores are cosine similarities divided by 0.05
ENCODE_CHUNK = 32  # most texts per forward pass (the loss grouping is separate)
CHUNK_TOKENS = 4096  # most padded tokens per forward pass: bounds the attention's memory
ROBERTA_LIKE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "bart", "mbart"}

# -- choices made before tokenising ---------------------------------------------------------------


def choose_negatives(examples: Sequence[Example], neg_number: int, seed: int) -> list[Example]:
    """Each example with at most ``neg_number`` negatives: all of them when it has that many or fewer
    (in file order), else a sample drawn with ``random.Random(seed)``, example by example in order."""
    if neg_number < 0:
        raise InputError(f"neg_number must be 0 or more, got {neg_number}")
    rng = random.Random(seed)
    chosen = []
    for example in examples:
        if len(example.neg) > neg_number:
            example = replace(example, neg=tuple(rng.sample(list(example.neg), neg_number)))
        chosen.append(example)
    return chosen


def position_limit(config: dict) -> Optional[int]:
    """How many tokens the model's position embeddings allow (``None``: no limit known)."""
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(limit, int) or limit <= 0:
        return None
    if config.get("model_type") in ROBERTA_LIKE and config.get("position_embedding_type", "absolute") == "absolute":
        limit -= int(config.get("pad_token_id") or 1) + 1  # RoBERTa positions start after the padding index
    return limit


# -- tokenised examples ---------------------------------------------------------------------------


def _pad(rows: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad tokenised rows (lists of ids) into tensors."""
    longest = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else (-100 if key == "labels" else 0)
        out[key] = torch.tensor([r[key] + [fill] * (longest - len(r[key])) for r in rows], dtype=torch.long,
                                device=device)
    return out


def _inference_chunk(rows: int, longest: int) -> bool:
    """Whether ``rows`` texts of ``longest`` tokens make one forward pass of a loss (no gradients)."""
    return rows <= ENCODE_CHUNK and rows * longest <= CHUNK_TOKENS


def _chunks_by_length(rows: list[dict], pad_id: int, device, fits: Callable[[int, int], bool] = _inference_chunk
                      ) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """Rows grouped into padded chunks of similar length, as many in each as ``fits(rows, longest)``
    allows (at least one): ``[(row indices, tensors)]``."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    chunks, members = [], []
    for i in order:
        longest = len(rows[members[0]]["input_ids"]) if members else len(rows[i]["input_ids"])
        if members and not fits(len(members) + 1, longest):
            chunks.append((members, _pad([rows[j] for j in members], pad_id, device)))
            members = []
        members.append(i)
    if members:
        chunks.append((members, _pad([rows[j] for j in members], pad_id, device)))
    return chunks


def _tokenize(tokenizer, first: list[str], second: Optional[list[str]], max_length: int) -> list[dict]:
    kwargs = dict(truncation=True, max_length=max_length)
    first = cut_all(first, max_length)
    second = None if second is None else cut_all(second, max_length)
    encoded = tokenizer(first, second, **kwargs) if second is not None else tokenizer(first, **kwargs)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: list(encoded[k][i]) for k in keys} for i in range(len(first))]


@dataclass(frozen=True)
class GradientUnit:
    """Examples whose loss terms read the same rows (an in-batch group, or one example): ``rows`` are
    indices into :attr:`Prepared.rows`, and ``losses(outputs)`` gives each example's term of the loss
    from those rows' outputs (``outputs[i]`` is row ``rows[i]``'s :meth:`Prepared.row_outputs`)."""

    rows: list
    losses: Callable[[torch.Tensor], torch.Tensor]


class Prepared:
    """Examples tokenised for one model type; ``loss(model)`` scores a loaded model on them (in float32,
    whatever the model's dtype). For per-example gradients (the Fisher): ``gradient_units()`` splits the
    loss into example terms over ``rows`` (each row's unpadded tokens), ``row_outputs(model, tensors)``
    runs a padded chunk of rows (:meth:`chunks_of`), and the terms are computed from those outputs."""

    model_type: str
    groups: int
    rows: list
    pad_id: int

    def loss(self, model) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def row_outputs(self, model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        """One output per row of a padded chunk, in float32 (an embedding, a score, a sequence's loss)."""
        raise NotImplementedError

    def gradient_units(self) -> list[GradientUnit]:  # pragma: no cover - overridden
        raise NotImplementedError

    def chunks_of(self, rows: list[int], fits: Callable[[int, int], bool]
                  ) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """``rows`` (indices into :attr:`rows`) in padded chunks that ``fits(rows, longest)`` allows:
        ``[(positions in rows, tensors)]``."""
        device = self.batches()[0]["input_ids"].device
        return _chunks_by_length([self.rows[i] for i in rows], self.pad_id, device, fits)

    def batches(self) -> list[dict[str, torch.Tensor]]:
        """The padded tensors of each forward pass."""
        return [tensors for _, tensors in self.chunks]

    def largest_batch(self) -> tuple[int, int]:
        """``(rows, tokens)`` of the largest forward pass (for the memory estimate)."""
        return max((tuple(t["input_ids"].shape) for t in self.batches()), key=lambda shape: shape[0] * shape[1])


@dataclass
class EncoderExamples(Prepared):
    chunks: list  # [(text indices, tensors)]
    text_count: int
    groups_: list  # [(query indices, passage indices, targets)]
    pooling: Pooling
    model_type: str = "encoder"
    rows: list = field(default_factory=list)  # each text's token ids (unpadded), for per-example losses
    pad_id: int = 0

    @property
    def groups(self) -> int:
        return len(self.groups_)

    def row_outputs(self, model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each text's pooled, L2-normalised embedding."""
        hidden = model(**tensors, return_dict=True).last_hidden_state.float()
        return torch.nn.functional.normalize(self.pooling(hidden, tensors["attention_mask"]), dim=-1)

    def embeddings(self, model) -> torch.Tensor:
        out = None
        for members, tensors in self.chunks:
            pooled = self.row_outputs(model, tensors)
            if out is None:
                out = torch.empty(self.text_count, pooled.size(-1), device=pooled.device)
            out[torch.tensor(members, device=pooled.device)] = pooled
        return out

    def loss(self, model) -> float:
        with torch.inference_mode():
            emb = self.embeddings(model)
            total = torch.zeros((), dtype=torch.float64)
            for queries, passages, targets in self.groups_:
                scores = emb[queries] @ emb[passages].T / TEMPERATURE_SCALE
                total += torch.nn.functional.cross_entropy(scores, targets).double().cpu()
        return float(total / len(self.groups_))

    def gradient_units(self) -> list[GradientUnit]:
        """One unit per group: each query's cross-entropy reads every passage of its group."""
        units = []
        for queries, passages, targets in self.groups_:
            texts = sorted(set(queries.tolist()) | set(passages.tolist()))
            local = {text: i for i, text in enumerate(texts)}
            q = torch.tensor([local[i] for i in queries.tolist()], device=queries.device)
            p = torch.tensor([local[i] for i in passages.tolist()], device=queries.device)
            units.append(GradientUnit(texts, partial(_in_batch_losses, q, p, targets)))
        return units


def _in_batch_losses(queries: torch.Tensor, passages: torch.Tensor, targets: torch.Tensor,
                     embeddings: torch.Tensor) -> torch.Tensor:
    """Each query's cross-entropy over the group's passages, its own positive the target."""
    scores = embeddings[queries] @ embeddings[passages].T / TEMPERATURE_SCALE
    return torch.nn.functional.cross_entropy(scores, targets.to(scores.device), reduction="none")


def _first_choice_loss(scores: torch.Tensor) -> torch.Tensor:
    """A query's cross-entropy over its pairs' scores, the first (its positive) the target: a 1-vector."""
    return -torch.log_softmax(scores, dim=0)[:1]


@dataclass
class RerankerExamples(Prepared):
    chunks: list  # [(pair indices, tensors)]
    pair_count: int
    groups_: list  # [[pair indices of one query: positive first], ...] per group
    model_type: str = "reranker"
    rows: list = field(default_factory=list)  # each pair's tokens (unpadded), for per-example losses
    pad_id: int = 0

    @property
    def groups(self) -> int:
        return len(self.groups_)

    def pair_scores(self, model) -> torch.Tensor:
        """One score per (query, passage) pair."""
        scores = None
        for members, tensors in self.chunks:
            values = self.row_outputs(model, tensors)
            if scores is None:
                scores = torch.empty(self.pair_count, device=values.device)
            scores[torch.tensor(members, device=values.device)] = values
        return scores

    def loss(self, model) -> float:
        with torch.inference_mode():
            scores = self.pair_scores(model).double().cpu()
            total = 0.0
            for group in self.groups_:
                per_query = [-torch.log_softmax(scores[pairs], dim=0)[0] for pairs in group]
                total += float(torch.stack(per_query).mean())
        return total / len(self.groups_)

    def row_outputs(self, model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The score of each pair of a padded chunk: the cross-encoder's one logit."""
        return model(**tensors, return_dict=True).logits.float()[:, 0]

    def gradient_units(self) -> list[GradientUnit]:
        """One unit per query: its cross-entropy reads its own pairs only."""
        return [GradientUnit(list(pairs), _first_choice_loss) for group in self.groups_ for pairs in group]


@dataclass
class LLMRerankerExamples(RerankerExamples):
    yes_id: int = 0
    model_type: str = "llm-reranker"

    def row_outputs(self, model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``Yes`` logit after each pair's prompt."""
        return yes_scores(model, tensors, self.yes_id)


@dataclass
class DecoderExamples(Prepared):
    padded: list  # [tensors with input_ids, attention_mask, labels], one per group
    model_type: str = "decoder"
    rows: list = field(default_factory=list)  # each example's tokens and labels (unpadded)
    pad_id: int = 0

    @property
    def groups(self) -> int:
        return len(self.padded)

    def batches(self) -> list[dict[str, torch.Tensor]]:
        return self.padded

    def loss(self, model) -> float:
        total = 0.0
        with torch.inference_mode():
            for batch in self.padded:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               return_dict=True).logits.float()
                shifted = logits[:, :-1].reshape(-1, logits.size(-1))
                labels = batch["labels"][:, 1:].reshape(-1)
                total += float(torch.nn.functional.cross_entropy(shifted, labels, ignore_index=-100))
        return total / len(self.padded)

    def row_outputs(self, model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sequence's mean cross-entropy over its own output tokens."""
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                       return_dict=True).logits.float()
        labels = tensors["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100,
                                                      reduction="none")
        return per_token.sum(dim=1) / (labels != -100).sum(dim=1)

    def gradient_units(self) -> list[GradientUnit]:
        """One unit per example: its loss is its own sequence's."""
        return [GradientUnit([i], _own_loss) for i in range(len(self.rows))]


def _own_loss(outputs: torch.Tensor) -> torch.Tensor:
    return outputs


def _instruction(example: Example, query_instruction: Optional[str]) -> Optional[str]:
    return example.prompt if example.prompt is not None else query_instruction


def _query_text(example: Example, query_instruction: Optional[str], model_type: str = "encoder") -> str:
    if model_type == "llm-embedder":
        return llm_query_text(example.query, _instruction(example, query_instruction))
    return (_instruction(example, query_instruction) or "") + example.query


def prepare(examples: Sequence[Example], model_type: str, tokenizer, *, batch_size: int, max_length: int,
            query_instruction: Optional[str] = None, pooling: Optional[Pooling] = None,
            device="cpu") -> Prepared:
    """Tokenise ``examples`` (negatives already chosen, see :func:`choose_negatives`) once, for ``model_type``."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if max_length < 2:
        raise InputError(f"max_length must be at least 2, got {max_length}")
    if not examples:
        raise InputError("no examples to compute a loss on")
    groups = [list(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    pad_id = pad_token_id(tokenizer)
    if model_type in ("encoder", "llm-embedder"):
        texts: dict[str, int] = {}

        def index(text: str) -> int:
            return texts.setdefault(text, len(texts))

        loss_groups = []
        for group in groups:
            queries, passages, targets = [], [], []
            for example in group:
                queries.append(index(_query_text(example, query_instruction, model_type)))
                targets.append(len(passages))
                passages += [index(example.pos[0])] + [index(n) for n in example.neg]
            loss_groups.append((torch.tensor(queries, device=device), torch.tensor(passages, device=device),
                                torch.tensor(targets, device=device)))
        rows = _tokenize(tokenizer, list(texts), None, max_length)
        return EncoderExamples(_chunks_by_length(rows, pad_id, device), len(rows), loss_groups, pooling or Pooling(),
                               model_type=model_type, rows=rows, pad_id=pad_id)
    if model_type == "reranker":
        pairs: list[tuple[str, str]] = []

        def add_pair(example: Example, passage: str) -> int:
            pairs.append((_query_text(example, query_instruction), passage))
            return len(pairs) - 1

        loss_groups = _pair_groups(groups, add_pair)
        rows = _tokenize(tokenizer, [q for q, _ in pairs], [p for _, p in pairs], max_length)
        return RerankerExamples(_chunks_by_length(rows, pad_id, device), len(rows), loss_groups, rows=rows,
                                pad_id=pad_id)
    if model_type == "llm-reranker":
        rows = []

        def add_row(example: Example, passage: str) -> int:
            ids = pair_ids(tokenizer, example.query, passage, _instruction(example, query_instruction), max_length)
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            return len(rows) - 1

        loss_groups = _pair_groups(groups, add_row)
        return LLMRerankerExamples(_chunks_by_length(rows, pad_id, device), len(rows), loss_groups, rows=rows,
                                   pad_id=pad_id, yes_id=yes_token(tokenizer))
    if model_type == "decoder":
        batches, every_row = [], []
        for group in groups:
            rows = [_decoder_row(tokenizer, example, max_length) for example in group]
            batches.append(_pad(rows, pad_id, device))
            every_row += rows
        return DecoderExamples(batches, rows=every_row, pad_id=pad_id)
    raise InputError(f"unknown model type {model_type!r}")


def _pair_groups(groups: list[list[Example]], add: Callable[[Example, str], int]) -> list[list[list[int]]]:
    """The scored rows of a cross-encoder's loss: per group, per example, the indices ``add(example,
    passage)`` gives its positive, then each negative (``add`` stores the row and says where)."""
    return [[[add(example, passage) for passage in (example.pos[0], *example.neg)] for example in group]
            for group in groups]


def _decoder_row(tokenizer, example: Example, max_length: int) -> dict:
    """LM-Cocktail's decoder tokenisation: ``input + " " + output`` then EOS; the input's tokens masked."""
    prompt = cut(example.input, max_length)  # a longer input leaves no output token, as it would whole
    ids = list(tokenizer.encode(prompt + " " + cut(example.output, max_length)))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    prompt_len = len(tokenizer.encode(prompt))
    labels = [-100] * prompt_len + ids[prompt_len:]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == -100 for label in labels[1:]):
        raise InputError(f"{example.where}: no output token is left to score after truncating to "
                         f"{max_length} tokens (raise {option('max_length')} or shorten the input)")
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


__all__ = ["choose_negatives", "prepare", "Prepared", "GradientUnit", "position_limit",
           "TEMPERATURE_SCALE"]
