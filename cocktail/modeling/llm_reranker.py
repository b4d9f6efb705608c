"""Decoder rerankers (bge-reranker-v2-gemma, bge-reranker-v2-minicpm-layerwise): a (query, passage)
pair's score as FlagEmbedding's ``FlagLLMReranker`` computes it.

The input is ``[BOS] A: {query}`` (at most 3/4 of ``max_length`` tokens), ``\\n``, ``B: {passage}``
(truncated so the pair fits ``max_length``), ``\\n``, then the prompt (default FlagEmbedding's "Given a
query A and a passage B, ... 'Yes' or 'No'."), each part tokenised without special tokens; the score is
the causal LM's logit of the ``Yes`` token at the last position. The layerwise variant (a config with
``start_layer`` and ``head_type: simple``, its own modelling code with one one-logit head per layer)
scores with the head of its last layer, as ``LayerWiseFlagLLMReranker`` does by default.

The weights go in through the :class:`~cocktail.modeling.skeleton.Skeleton`, as for any model; the
few-shot losses use :func:`pair_ids` and :func:`yes_scores` too.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cocktail.errors import InputError
from cocktail.merging.plan import Plan
from cocktail.modeling.loading import embedding_rows, load_tokenizer, pad_token_id
from cocktail.modeling.scorer import PlanScorer
from cocktail.modeling.skeleton import Skeleton, model_folder
from cocktail.modeling.text_cut import cut
from cocktail.recipe.scoring import ScoringOptions

DEFAULT_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query "
                  "by providing a prediction of either 'Yes' or 'No'.")
QUERY_PREFIX, PASSAGE_PREFIX, SEP = "A: ", "B: ", "\n"
PAIR_CHUNK = 16  # pairs per forward pass


def yes_token(tokenizer) -> int:
    """The id of ``Yes`` (its first token), whose logit is the score."""
    ids = tokenizer("Yes", add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError("the tokenizer turns 'Yes' into no token: not a decoder reranker's tokenizer")
    return int(ids[0])


def pair_ids(tokenizer, query: str, passage: str, prompt: Optional[str], max_length: int) -> list[int]:
    """The token ids FlagEmbedding's decoder reranker scores for one pair (see the module docstring)."""
    def ids(text: str, **limit) -> list[int]:
        return list(tokenizer(cut(text, max_length), add_special_tokens=False, truncation=bool(limit),
                              **limit)["input_ids"])

    query_ids = ids(QUERY_PREFIX + query, max_length=max_length * 3 // 4)
    passage_ids = ids(PASSAGE_PREFIX + passage, max_length=max_length)
    sep, prompt_ids = ids(SEP), ids(prompt or DEFAULT_PROMPT)
    bos = tokenizer.bos_token_id
    first = [bos] + query_ids if bos is not None and bos != tokenizer.pad_token_id else query_ids
    second = sep + passage_ids
    # FlagEmbedding's prepare_for_model(first, second, truncation="only_second") (gone from transformers 5's
    # fast tokenizers): the second part loses what the pair has beyond max_length + the sep and prompt
    overflow = len(first) + len(second) - (max_length + len(sep) + len(prompt_ids))
    if overflow > 0:
        second = second[:-overflow] if tokenizer.truncation_side == "right" else second[overflow:]
    return first + second + sep + prompt_ids


def layerwise_layer(config) -> Optional[int]:
    """The layer a layerwise reranker scores with (its last), or ``None`` for a plain causal LM."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("start_layer") is None or get("head_type") is None:
        return None
    if get("head_type") != "simple":
        raise InputError(f"a layerwise reranker with head_type {get('head_type')!r}: only 'simple' (one logit per "
                         "layer, as bge-reranker-v2-minicpm-layerwise) is scored")
    return int(get("num_hidden_layers"))


def yes_scores(model, batch: dict[str, torch.Tensor], yes_id: int) -> torch.Tensor:
    """The score of each right-padded row of ``batch``: the ``Yes`` logit at its last token (the layer
    head's logit for a layerwise reranker), float32."""
    last = batch["attention_mask"].sum(dim=1) - 1
    rows = torch.arange(last.size(0), device=last.device)
    layer = layerwise_layer(model.config)
    if layer is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=True).logits
        return logits[rows, last, yes_id].float()
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    cutoff_layers=[layer], return_dict=True)
    logits = outputs.logits[-1] if isinstance(outputs.logits, (tuple, list)) else outputs.logits
    return logits.reshape(logits.size(0), logits.size(1), -1)[rows, last, 0].float()


def pad_rows(rows: Sequence[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into ``input_ids`` and ``attention_mask``."""
    longest = max(len(r) for r in rows)
    return {"input_ids": torch.tensor([r + [pad_id] * (longest - len(r)) for r in rows], device=device),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows], device=device)}


class LLMReranker(PlanScorer):
    """A decoder reranker ready to score pairs: ``score(pairs, prompt)`` gives one float per pair.

    ``LLMReranker(plan)`` builds the causal LM of the plan's first checkpoint; fill it with
    :meth:`fill_from_checkpoint` or :meth:`fill_from_merge` before scoring.
    """

    def __init__(self, plan: Plan, device: Optional[str] = None, batch_size: int = PAIR_CHUNK,
                 max_length: int = 512, progress: bool = False, label: Optional[str] = None,
                 trust_remote_code: bool = False, scoring: Optional[ScoringOptions] = None):
        super().__init__(plan, device, batch_size, label, progress, scoring)
        first = plan.checkpoints[0]
        self.max_length = max_length
        self.tokenizer = load_tokenizer(model_folder(plan), "to score pairs", trust_remote_code, embedding_rows(plan))
        self.yes_id = yes_token(self.tokenizer)
        layerwise_layer(first.config)  # refuse a layerwise head it cannot score before building anything
        self.skeleton = Skeleton(plan, "llm-reranker", self.placement, trust_remote_code=trust_remote_code,
                                 largest_batch=(batch_size, max_length))
        self.model = self.skeleton.model

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]], prompt: Optional[str] = None) -> list[float]:
        """The score of each ``(query, passage)`` pair (higher: more relevant)."""
        rows = [pair_ids(self.tokenizer, q, p, prompt, self.max_length) for q, p in pairs]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        scores = [0.0] * len(rows)
        pad = pad_token_id(self.tokenizer)
        with self.bar(len(rows), "scoring", unit="pair") as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = pad_rows([rows[i] for i in chunk], pad, self.device)
                for i, value in zip(chunk, yes_scores(self.model, batch, self.yes_id).tolist()):
                    scores[i] = value
                bar.update(len(chunk))
        return scores
