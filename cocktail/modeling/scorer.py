"""What every scorer of texts shares (:class:`~cocktail.modeling.encoder.Encoder`,
:class:`~cocktail.modeling.cross_encoder.CrossEncoder`, :class:`~cocktail.modeling.llm_reranker.LLMReranker`):
the model of a plan's first checkpoint on a device, filled with one input's weights or a merge of them."""

from __future__ import annotations

from typing import Optional

import torch

from cocktail.io.adapters import open_path
from cocktail.merging.methods import Method
from cocktail.merging.plan import Plan, build_plan
from cocktail.modeling.placement import Placement
from cocktail.modeling.progress import progress_bar
from cocktail.recipe.scoring import ScoringOptions


class PlanScorer:
    """The name, placement (device, dtype, device map) and batch size of a scorer of ``plan``; subclasses
    build ``self.skeleton`` on ``self.placement``. ``close()`` (or ``with``) when done: it removes the
    offload folder of a model spread to disk."""

    skeleton = None  # a cocktail.modeling.skeleton.Skeleton, built by the subclass

    def __init__(self, plan: Plan, device: Optional[str], batch_size: int, label: Optional[str],
                 progress: bool = False, scoring: Optional[ScoringOptions] = None):
        first = plan.checkpoints[0]
        self.plan = plan
        self.source = str(first.source)
        self.label = label or self.source
        self.placement = Placement.make(scoring, device, plan)
        self.device = str(self.placement.device)
        self.batch_size = batch_size
        self.progress = progress

    def bar(self, total: int, desc: str, unit: str = "text"):
        """A progress bar of this scorer's work on ``total`` texts or pairs (see :mod:`cocktail.modeling.progress`)."""
        return progress_bar(total, f"{desc} {self.label}", self.progress, unit)

    def close(self) -> None:
        """Remove the offload folder, if the model was spread to disk."""
        self.placement.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def open(cls, source: str, adapter_base: Optional[str] = None, **options):
        """The scorer of one model (a folder, cached hub id, or LoRA adapter folder on ``adapter_base`` or
        its config's base), filled with its weights."""
        with open_path(str(source), adapter_base) as checkpoint:
            scorer = cls(build_plan([checkpoint], dtype=torch.float32), **options)
            try:
                scorer.fill_from_checkpoint(0)
            except BaseException:
                scorer.close()
                raise
        return scorer

    def fill_from_checkpoint(self, index: int) -> None:
        """Use the weights of model ``index`` of the plan."""
        self.skeleton.fill_from_checkpoint(index)

    def fill_from_merge(self, method: Method, weights: list[float], parameters: Optional[dict] = None) -> None:
        """Use the merge of the plan's models with ``weights``."""
        self.skeleton.fill_from_merge(method, weights, parameters)
