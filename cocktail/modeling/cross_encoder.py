"""Cross-encoder rerankers (bge-reranker-base/large, bge-reranker-v2-m3): a (query, passage) pair's
score as FlagEmbedding's ``FlagReranker`` computes it.

The pair is tokenised as one input (``[CLS] query [SEP] passage [SEP]``), the query cut to 3/4 of
``max_length`` tokens and the passage so that the pair fits ``max_length`` (default 512); the score is
the model's one logit (``num_labels=1``; FlagReranker's ``normalize=True`` is its sigmoid, which
ranks the same). Pairs are batched by length. The weights go in through the
:class:`~cocktail.modeling.skeleton.Skeleton`, as for any model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cocktail.merging.plan import Plan
from cocktail.modeling.loading import embedding_rows, load_tokenizer
from cocktail.modeling.scorer import PlanScorer
from cocktail.modeling.skeleton import Skeleton, model_folder
from cocktail.modeling.text_cut import cut, cut_all, token_lengths
from cocktail.recipe.scoring import ScoringOptions

POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "xlm-roberta-xl": 2}


class CrossEncoder(PlanScorer):
    """A cross-encoder ready to score pairs: ``score(pairs)`` gives one logit per pair.

    ``CrossEncoder(plan)`` builds the sequence classifier of the plan's first checkpoint; fill it with
    :meth:`fill_from_checkpoint` or :meth:`fill_from_merge` before scoring.
    """

    def __init__(self, plan: Plan, device: Optional[str] = None, batch_size: int = 32, max_length: int = 512,
                 progress: bool = False, label: Optional[str] = None, trust_remote_code: bool = False,
                 scoring: Optional[ScoringOptions] = None):
        super().__init__(plan, device, batch_size, label, progress, scoring)
        first = plan.checkpoints[0]
        self.tokenizer = load_tokenizer(model_folder(plan), "to score pairs", trust_remote_code, embedding_rows(plan))
        limits = [max_length]
        positions = first.config.get("max_position_embeddings")
        if positions:
            limits.append(positions - POSITION_OFFSET.get(first.config.get("model_type"), 0))
        self.max_length = min(int(x) for x in limits if x)
        self.skeleton = Skeleton(plan, "reranker", self.placement, trust_remote_code=trust_remote_code,
                                 largest_batch=(batch_size, self.max_length))
        self.model = self.skeleton.model

    def _query(self, query: str) -> str:
        """The query, cut to 3/4 of the length as FlagReranker cuts it (its tokens, decoded back)."""
        limit = self.max_length * 3 // 4
        query = cut(query, limit)
        ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        return query if len(ids) <= limit else self.tokenizer.decode(ids[:limit])

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]], instruction: Optional[str] = None) -> list[float]:
        """The logit of each ``(query, passage)`` pair (higher: more relevant); ``instruction`` goes before
        each query."""
        queries = [self._query((instruction or "") + q) for q, _ in pairs]
        passages = cut_all([p for _, p in pairs], self.max_length)
        lengths = token_lengths(self.tokenizer, queries, self.max_length, passages, truncation="only_second")
        order = sorted(range(len(pairs)), key=lambda i: -lengths[i])
        scores = [0.0] * len(pairs)
        with self.bar(len(pairs), "scoring", unit="pair") as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = self.tokenizer([queries[i] for i in chunk], [passages[i] for i in chunk], padding=True,
                                       truncation="only_second", max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch, return_dict=True).logits.view(-1).float()
                for i, value in zip(chunk, logits.tolist()):
                    scores[i] = value
                bar.update(len(chunk))
        return scores
