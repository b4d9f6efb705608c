"""One model in memory whose parameters are refilled from each checkpoint, or from a merge, in turn.

This is the one way cocktail puts weights into a model (few-shot losses, ``eval``, ``sweep``).
Scoring N checkpoints never holds N models: the skeleton is built once from the first model's config
(``AutoModel`` for an encoder, ``AutoModelForSequenceClassification`` for a reranker,
``AutoModelForCausalLM`` for a decoder), then each checkpoint's tensors are streamed into it one at
a time, matched through the plan's canonical names (so ``bert.encoder...`` and ``encoder...`` meet).
Where the model lives and in which dtype is its :class:`~cocktail.modeling.placement.Placement`: one
device, or spread over GPUs, CPU and disk by a device map (a parameter on disk is filled by writing its
file in the offload folder).
With ``modules=True`` the weights of the other components (sentence-transformers ``Dense`` modules)
are kept too, in ``.modules``. Peak memory: the skeleton, plus one tensor (N tensors while filling
it from a merge).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch

from cocktail.errors import InputError, few_names, option
from cocktail.io.checkpoints import TRANSFORMER
from cocktail.merging.engine import merged_tensors
from cocktail.merging.methods import Method
from cocktail.merging.plan import MERGE, Plan, canonical_names
from cocktail.modeling.footprint import check_fits
from cocktail.modeling.loading import build_model, load_config
from cocktail.modeling.placement import DiskWeight, Placement, bound_heap

UNUSED = {"encoder": ("pooler.",)}  # parameters no embedding reads may be absent (they are zeroed)
KEEP_INPUTS_LIMIT = 4 << 30  # keep_inputs() holds the inputs in memory up to this many bytes (float32)


class _HeldCheckpoint:
    """A checkpoint's tensors of one plan, read once and held as float32 (merges never modify inputs)."""

    def __init__(self, checkpoint, index: Optional[int], plan: Plan):
        self.source = checkpoint.source
        self.tensors: dict[tuple[str, str], torch.Tensor] = {}
        for planned in plan.tensors:
            name = planned.base_source if index is None else planned.sources[index]
            if name is not None and planned.action == MERGE:  # copied tensors keep their dtype: read them
                self.tensors[(planned.component, name)] = checkpoint.read(planned.component, name).to(torch.float32)
        self._checkpoint = checkpoint

    def read(self, component: str, name: str) -> torch.Tensor:
        held = self.tensors.get((component, name))
        return held if held is not None else self._checkpoint.read(component, name)


def _skip_random_init():
    """transformers' ``no_init_weights``: build the skeleton without drawing random weights (faster,
    and half the peak memory); buffers made in ``__init__`` (position ids) are still made."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def model_folder(plan: Plan):
    """The folder holding the first model's config and tokenizer."""
    first = plan.checkpoints[0]
    return first.root / first.components[TRANSFORMER].rel_dir


class Skeleton:
    """``Skeleton(plan, model_type, placement)``; ``fill_from_checkpoint(i)`` or ``fill_from_merge(...)``,
    then use ``.model`` (and ``.modules``: ``{component: {name: float32 tensor}}`` with ``modules=True``);
    ``close()`` when done (it removes the offload folder of a model spread to disk).

    ``placement`` is a :class:`~cocktail.modeling.placement.Placement` (dtype, device map, offload) or
    just a device (float32 there); ``largest_batch`` is ``(rows, tokens)`` of the largest forward pass the
    caller will make, for the memory estimate checked before the model is built (``gradients``: the
    caller differentiates each example's loss, as Fisher statistics do)."""

    def __init__(self, plan: Plan, model_type: str, placement: Union[Placement, torch.device, str],
                 modules: bool = False, trust_remote_code: bool = False, largest_batch: tuple[int, int] = (1, 1),
                 gradients: bool = False):
        self.plan = plan
        self.model_type = model_type
        self.placement = placement if isinstance(placement, Placement) else Placement(torch.device(placement))
        self.device = self.placement.device
        self.with_modules = modules
        self.modules: dict[str, dict[str, torch.Tensor]] = {}
        config = load_config(model_folder(plan), trust_remote_code)
        if model_type == "reranker":
            architectures = list(getattr(config, "architectures", None) or [])
            if not any("SequenceClassification" in a for a in architectures):
                raise InputError(f"{plan.checkpoints[0].source}: not a reranker (architecture "
                                 f"{', '.join(architectures) or 'unknown'}, no classification head); check {option('model_type')}")
            if getattr(config, "num_labels", 1) != 1:
                raise InputError(f"{plan.checkpoints[0].source}: a reranker must have one output logit, "
                                 f"its config has num_labels={config.num_labels}")
        check_fits(plan, model_type, self.placement, *largest_batch, gradients=gradients)
        bound_heap()  # activations (and gradients) come and go at every pass: their memory must go back
        source = plan.checkpoints[0].source

        def build():
            with _skip_random_init():  # every parameter is overwritten (and checked) before use
                return build_model(config, model_type, source, trust_remote_code, self.placement.dtype)

        placed = self.placement.build(build, source)
        try:
            self._index(placed, model_type)
        except BaseException:
            self.close()
            raise

    def _index(self, placed, model_type: str) -> None:
        """Where each tensor of a checkpoint goes: the targets by name, and which parameters must be filled."""
        self.model = placed.model
        self._disk = placed.disk  # id(parameter) -> DiskWeight, for the parameters offloaded to disk
        state = placed.state
        self.prefix = getattr(self.model, "base_model_prefix", None) or None
        mapping, _ = canonical_names(list(state), self.prefix)
        # by canonical name, and by the name as saved: the plan strips a prefix only for the model types it
        # knows, so a model with its own code (``model.layers...``) is matched by its full names
        self.targets: dict[str, Union[torch.Tensor, DiskWeight]] = {
            **{actual: state[actual] for actual in state},
            **{canonical: state[actual] for canonical, actual in mapping.items()}}
        self.names = {canonical: actual for canonical, actual in mapping.items()}
        skip = UNUSED.get(model_type, ())
        groups: dict[int, list[str]] = {}
        params: dict[int, torch.Tensor] = {}
        for name, param in placed.parameters:
            groups.setdefault(id(param), []).append(name)
            params[id(param)] = param
        unused = {key for key, names in groups.items() if all(any(n.startswith(s) or f".{s}" in n for s in skip)
                                                              for n in names)}
        self.required = {key: names for key, names in groups.items() if key not in unused}
        self._unused = {key: params[key] for key in unused}
        self._merge_plan: Optional[Plan] = None
        self.statistics = None  # a data-aware method's StatisticsSet, for fill_from_merge

    def close(self) -> None:
        """Remove the offload folder of a model spread to disk (nothing to do otherwise)."""
        self.placement.close()

    def _target(self, canonical: str) -> Optional[torch.Tensor]:
        target = self.targets.get(canonical)
        if target is None and self.prefix and canonical.startswith(f"{self.prefix}."):
            target = self.targets.get(canonical[len(self.prefix) + 1:])  # e.g. model.layers... into a bare model
        return target

    def _copy(self, canonical: str, tensor: torch.Tensor, source: str) -> Optional[int]:
        target = self._target(canonical)
        if target is None:
            return None
        if tuple(target.shape) != tuple(tensor.shape):
            raise InputError(f"{source}: tensor {canonical} has shape {list(tensor.shape)}, but a "
                             f"{self.model_type} built from the first model's config needs {list(target.shape)}")
        if isinstance(target, DiskWeight):
            target.write(tensor)
            return id(target.param)
        with torch.no_grad():
            target.data.copy_(tensor)
        return id(target)

    def _finish(self, filled: set, source: str) -> None:
        """Refuse a fill that left a needed parameter empty; zero the unused ones it did not fill."""
        missing = [names[0] for key, names in self.required.items() if key not in filled]
        if missing:
            raise InputError(f"{source}: lacks tensors a {self.model_type} needs to compute its loss: "
                             f"{few_names(missing)} (is {option('model_type')} right?)")
        with torch.no_grad():
            for key, param in self._unused.items():
                if key in filled:
                    continue
                if key in self._disk:
                    self._disk[key].write(torch.zeros(param.shape))
                else:
                    param.data.zero_()  # never read, but never left as uninitialised memory

    def _wanted(self, planned) -> bool:
        return (self._target(planned.canonical) is not None) if planned.component == TRANSFORMER else self.with_modules

    def _keep_module(self, planned, tensor: torch.Tensor) -> None:
        self.modules.setdefault(planned.component, {})[planned.name] = tensor.to(self.device, torch.float32)

    def fill_from_checkpoint(self, index: int) -> None:
        """Load model ``index`` of the plan, tensor by tensor."""
        ckpt = self.plan.checkpoints[index]
        filled = set()
        for planned in self.plan.tensors:
            actual = planned.sources[index]
            if actual is None or not self._wanted(planned):
                continue
            tensor = ckpt.read(planned.component, actual)
            if planned.component == TRANSFORMER:
                filled.add(self._copy(planned.canonical, tensor, ckpt.source))
            else:
                self._keep_module(planned, tensor)
        self._finish(filled, ckpt.source)

    @property
    def merge_plan(self) -> Plan:
        """The plan :meth:`fill_from_merge` merges: the tensors the skeleton takes (per-tensor
        ``settings`` given to it are aligned with ``merge_plan.tensors``)."""
        if self._merge_plan is None:
            self._merge_plan = Plan(self.plan.checkpoints, self.plan.base,
                                    [t for t in self.plan.tensors if self._wanted(t)])
        return self._merge_plan

    def keep_inputs(self, limit_bytes: int = KEEP_INPUTS_LIMIT) -> bool:
        """Hold every input tensor of :attr:`merge_plan` in memory (float32) for the merges that follow,
        when they take at most ``limit_bytes``: a search then merges without re-reading the files.
        Returns whether they are held (never for a model spread by a device map: memory is short there,
        so each merge re-reads the files)."""
        if self.placement.device_map is not None:
            return False
        plan = self.merge_plan
        every = plan.checkpoints + ([plan.base] if plan.base is not None else [])
        size = sum(4 * t.nbytes // t.out_dtype.itemsize for t in plan.tensors if t.action == MERGE) * len(every)
        if size > limit_bytes:
            return False
        held = [_HeldCheckpoint(ckpt, index, plan) for index, ckpt in enumerate(plan.checkpoints)]
        base = _HeldCheckpoint(plan.base, None, plan) if plan.base is not None else None
        self._merge_plan = Plan(held, base, plan.tensors)
        return True

    def fill_from_merge(self, method: Method, weights: list[float], parameters: Optional[dict] = None,
                        settings: Optional[list] = None) -> None:
        """Load the merge of every model with ``weights`` (or with per-tensor ``settings`` aligned with
        :attr:`merge_plan`), without writing it anywhere; a data-aware method merges with
        :attr:`statistics`."""
        filled = set()
        for planned, tensor in merged_tensors(self.merge_plan, method, weights, parameters or {}, settings=settings,
                                              statistics=self.statistics):
            if planned.component == TRANSFORMER:
                filled.add(self._copy(planned.canonical, tensor, "the merged model"))
            else:
                self._keep_module(planned, tensor)
        self._finish(filled, "the merged model")
