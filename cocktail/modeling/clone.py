"""A new model of an in-memory model's class, filled with merged tensors (what ``cocktail.merge``
returns when its first input is a loaded model). The original is never touched."""

from __future__ import annotations

import copy
from typing import Any

import torch

from cocktail.errors import InputError
from cocktail.io.memory import MemoryCheckpoint, unwrap


def empty_clone(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose parameters are new, uninitialised tensors (no gradients copied).

    Parameters shared inside the module stay shared in the copy; buffers are copied with their values.
    """
    module = unwrap(module)
    memo: dict[int, Any] = {}
    for param in module.parameters():
        fresh = torch.nn.Parameter(torch.empty_like(param, memory_format=torch.contiguous_format),
                                   requires_grad=param.requires_grad)
        memo[id(param)] = fresh
    return copy.deepcopy(module, memo)


def fill_clone(clone: torch.nn.Module, original: torch.nn.Module, checkpoint: MemoryCheckpoint,
               tensors) -> torch.nn.Module:
    """Copy ``(component, name, tensor)`` triples into ``clone``, one at a time; what the merge does not
    cover (buffers, weights a save drops) keeps the values of ``original``."""
    targets: dict[str, dict[str, torch.Tensor]] = {}
    for key, component in checkpoint.components.items():
        sub = clone.get_submodule(component.module_path) if component.module_path else clone
        targets[key] = sub.state_dict(keep_vars=True)
    filled: set[int] = set()
    with torch.no_grad():
        for component, name, tensor in tensors:
            target = targets.get(component, {}).get(name)
            if target is None:
                raise InputError(f"merged tensor {name} has no place in a {type(clone).__name__}")
            target.copy_(tensor)
            filled.add(id(target))
        original = unwrap(original)
        for (name, param), (_, source) in zip(clone.named_parameters(remove_duplicate=True),
                                               original.named_parameters(remove_duplicate=True)):
            if id(param) not in filled:
                param.copy_(source.detach())
    return clone
