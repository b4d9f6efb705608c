"""What every scorer of texts shares (:class:`~cocktail.modeling.encoder.Encoder`,
:class:`~cocktail.modeling.cross_encoder.CrossEncoder`, :class:`~cocktail.modeling.llm_reranker.LLMReranker`):
the model of a plan's first checkpoint on a device, filled with one input's weights or a merge of them."""

from __future__ import annotations

from typing import Optional

import torch

from cocktail.io.adapters import open_path
from cocktail.merging.methods import Method
from cocktail.merging.plan import Plan, build_plan
from cocktail.modeling.loading import resolve_device
from cocktail.modeling.progress import progress_bar


class PlanScorer:
    """The name, device and batch size of a scorer of ``plan``; subclasses build ``self.skeleton``."""

    skeleton = None  # a cocktail.modeling.skeleton.Skeleton, built by the subclass

    def __init__(self, plan: Plan, device: Optional[str], batch_size: int, label: Optional[str],
                 progress: bool = False):
        first = plan.checkpoints[0]
        self.plan = plan
        self.source = str(first.source)
        self.label = label or self.source
        self.device = str(resolve_device(device))
        self.batch_size = batch_size
        self.progress = progress

    def bar(self, total: int, desc: str, unit: str = "text"):
        """A progress bar of this scorer's work on ``total`` texts or pairs (see :mod:`cocktail.modeling.progress`)."""
        return progress_bar(total, f"{desc} {self.label}", self.progress, unit)

    @classmethod
    def open(cls, source: str, adapter_base: Optional[str] = None, **options):
        """The scorer of one model (a folder, cached hub id, or LoRA adapter folder on ``adapter_base`` or
        its config's base), filled with its weights."""
        with open_path(str(source), adapter_base) as checkpoint:
            scorer = cls(build_plan([checkpoint], dtype=torch.float32), **options)
            scorer.fill_from_checkpoint(0)
        return scorer

    def fill_from_checkpoint(self, index: int) -> None:
        """Use the weights of model ``index`` of the plan."""
        self.skeleton.fill_from_checkpoint(index)

    def fill_from_merge(self, method: Method, weights: list[float], parameters: Optional[dict] = None) -> None:
        """Use the merge of the plan's models with ``weights``."""
        self.skeleton.fill_from_merge(method, weights, parameters)
