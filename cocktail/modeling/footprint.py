"""Will the model fit? The bytes a scoring run needs, told before loading instead of being killed by the OS.

The estimate is the parameters in the dtype they are scored in, plus the activations of the largest
forward pass the run makes (``rows`` texts of ``longest`` tokens): the hidden states and MLP
activations of one layer (inference frees each layer's before the next), the attention scores, and
for causal LMs the logits over the vocabulary. A run that differentiates its loss (Fisher statistics)
needs more: the float32 weights three times (the parameters, one example's gradient, the Fisher
sums) and the graph autograd keeps for one backward pass, which the per-example gradients bound to
:data:`GRAPH_BUDGET` (:mod:`cocktail.fewshot.example_gradients`). It is compared with the memory free on the device
(``MemAvailable`` of ``/proc/meminfo`` for the CPU, ``torch.cuda.mem_get_info`` for a GPU) and with
the device's ``--max-memory`` cap, if any. A run that would not fit, and asked for no device map, is
refused with one line that names the options that would make it fit. With a device map, accelerate
places the weights within the caps and offloads the rest; nothing is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from cocktail.errors import InputError, option
from cocktail.merging.plan import Plan
from cocktail.modeling.placement import Placement, dtype_name
from cocktail.recipe.sizes import show_size

MEMINFO = Path("/proc/meminfo")
LM_HEAD_TYPES = ("decoder", "llm-reranker")  # their forward pass makes logits over the vocabulary
GIB, MIB = 1 << 30, 1 << 20
GRAPH_BUDGET = 256 * MIB  # most bytes of autograd graph a per-example gradient keeps at once (unless one text needs more)


def _first(config: dict, keys: tuple, default: int) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return default


def weight_bytes(plan: Plan, dtype: torch.dtype) -> int:
    """The bytes of every tensor of the plan's first model, in ``dtype``."""
    return sum(math.prod(t.shape) for t in plan.tensors) * dtype.itemsize


def activation_bytes(config: dict, model_type: str, rows: int, longest: int, dtype: torch.dtype) -> int:
    """The peak bytes of one forward pass of ``rows`` texts of ``longest`` tokens (an upper bound)."""
    hidden = _first(config, ("hidden_size", "n_embd", "d_model"), 1024)
    inner = _first(config, ("intermediate_size", "n_inner", "ffn_dim"), 4 * hidden)
    heads = _first(config, ("num_attention_heads", "n_head"), 1)
    tokens = rows * longest
    size = dtype.itemsize
    total = tokens * (6 * hidden + 3 * inner) * size  # residual, norm, q, k, v, output; gate, up, activation
    total += 2 * rows * heads * longest * longest * size  # attention scores and their softmax
    total += tokens * hidden * 4  # the last hidden state in float32 (pooling)
    if model_type in LM_HEAD_TYPES:
        total += tokens * _first(config, ("vocab_size",), 0) * (size + 4)  # logits, and their float32 copy
    return total


def graph_bytes(config: dict, model_type: str, rows: int, longest: int, dtype: torch.dtype = torch.float32) -> int:
    """The bytes autograd keeps to differentiate one forward pass of ``rows`` texts of ``longest`` tokens
    (an upper bound): every layer's saved activations, not one layer's as in inference."""
    hidden = _first(config, ("hidden_size", "n_embd", "d_model"), 1024)
    inner = _first(config, ("intermediate_size", "n_inner", "ffn_dim"), 4 * hidden)
    heads = _first(config, ("num_attention_heads", "n_head"), 1)
    layers = _first(config, ("num_hidden_layers", "n_layer", "num_layers"), 24)
    tokens = rows * longest
    size = dtype.itemsize
    per_layer = tokens * (8 * hidden + 3 * inner) * size  # norms, q, k, v, attention output, residuals; MLP
    per_layer += 2 * rows * heads * longest * longest * size  # attention scores and their softmax (eager)
    total = layers * per_layer + tokens * hidden * 4  # and the last hidden state in float32 (pooling)
    if model_type in LM_HEAD_TYPES:
        total += 2 * tokens * _first(config, ("vocab_size",), 0) * (size + 4)  # logits, float32 copy, log-softmax
    return total


def free_bytes(device: torch.device) -> Optional[tuple[int, str]]:
    """``(bytes, where they were read)`` free on ``device``, or ``None`` when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    if device.type == "cpu" and MEMINFO.is_file():
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available on this machine (MemAvailable)"
    return None


def _setting(name: str, value: str) -> str:
    """``--device-map auto``, ``weights_from.device_map: auto`` or ``device_map='auto'``, as the user writes it."""
    spelled = option(name)
    if spelled.endswith("="):
        return f"{spelled}{value!r}"
    return f"{spelled} {value}" if spelled.startswith("--") else f"{spelled}: {value}"


def check_fits(plan: Plan, model_type: str, placement: Placement, rows: int, longest: int,
               gradients: bool = False) -> None:
    """Refuse, before loading, a run on one device that needs more memory than the device has free
    (or than its ``--max-memory`` cap); the message names the options that would make it fit.
    ``gradients``: the run differentiates each example's loss (Fisher statistics, float32)."""
    if placement.device_map is not None:
        return
    limits = []
    free = free_bytes(placement.device)
    if free is not None:
        limits.append(free)
    cap = placement.memory_cap()
    if cap is not None:
        limits.append((cap, f"allowed on {placement.device} by {option('max_memory')}"))
    if not limits:
        return
    limit, where = min(limits)
    config = plan.checkpoints[0].config
    if gradients:
        _check_gradients_fit(plan, model_type, rows, longest, limit, where)
        return

    def need(dtype: torch.dtype) -> tuple[int, int]:
        return weight_bytes(plan, dtype), activation_bytes(config, model_type, rows, longest, dtype)

    weights, activations = need(placement.dtype)
    if weights + activations <= limit:
        return
    hints = []
    if placement.dtype == torch.float32 and sum(need(torch.bfloat16)) <= limit:
        hints.append(f"{_setting('score_dtype', 'bfloat16')} (about {show_size(sum(need(torch.bfloat16)))})")
    room = limit - activations
    if room > 0:
        key = "cpu" if placement.device.type == "cpu" else str(placement.device.index or 0)
        caps = f"{key}={room // GIB}GiB" if room >= GIB else f"{key}={max(room // MIB, 1)}MiB"
        hints.append(f"{_setting('device_map', 'auto')} {_setting('max_memory', caps)} (the rest of the weights "
                     "goes to disk)")
    else:
        hints.append(f"a lower {option('max_length')} (the activations alone do not fit)")
    raise InputError(f"{plan.checkpoints[0].source}: scoring it in {dtype_name(placement.dtype)} on "
                     f"{placement.device} needs about {show_size(weights + activations)} ({show_size(weights)} of "
                     f"weights, {show_size(activations)} for a forward pass of {rows} x {longest} tokens), more than "
                     f"the {show_size(limit)} {where}: use {' or '.join(hints)}")


def gradient_bytes(plan: Plan, model_type: str, rows: int, longest: int) -> tuple[int, int]:
    """``(weights, graph)``: the bytes of a run that differentiates each example's loss in float32: the
    weights three times (parameters, one example's gradient, the Fisher sums) and the largest graph
    kept at once: that of ``rows`` texts of ``longest`` tokens, within :data:`GRAPH_BUDGET` unless one
    text alone needs more."""
    config = plan.checkpoints[0].config
    graph = min(GRAPH_BUDGET, graph_bytes(config, model_type, rows, longest))
    return 3 * weight_bytes(plan, torch.float32), max(graph, graph_bytes(config, model_type, 1, longest))


def _check_gradients_fit(plan: Plan, model_type: str, rows: int, longest: int, limit: int, where: str) -> None:
    weights, graph = gradient_bytes(plan, model_type, rows, longest)
    if weights + graph <= limit:
        return
    hints = [f"{_setting('method', 'regmean')} (its statistics need one forward pass, no gradients)"]
    if weights < limit:  # the graph is what does not fit
        hints.insert(0, f"a lower {option('max_length')}")
    raise InputError(f"{plan.checkpoints[0].source}: its Fisher statistics need about {show_size(weights + graph)} "
                     f"(the float32 weights, one example's gradients and the Fisher sums: {show_size(weights)}; "
                     f"{show_size(graph)} for the backward pass), more than the {show_size(limit)} {where}: use "
                     f"{' or '.join(hints)}")
