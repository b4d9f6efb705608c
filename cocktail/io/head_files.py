"""Extra weight files of a model folder: heads saved beside the transformer with ``torch.save``.

bge-m3 and every FlagEmbedding fine-tune of it keep ``colbert_linear.pt`` (a ``Linear(hidden,
hidden)`` state dict) and ``sparse_linear.pt`` (``Linear(hidden, 1)``) next to ``config.json``. Each
such file is a component of the model: its tensors are named ``<file stem>.<key>``
(``colbert_linear.weight``) in the plan, in per-tensor filters and in messages, merged by the same
engine as the encoder, and written back under the same file name with ``torch.save`` of a state dict.
They are loaded with ``weights_only=True``: no code in them runs. Files a Trainer checkpoint keeps
(optimizer, scheduler, random state) are training state, not weights, and are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

HEAD_SUFFIXES = (".pt", ".pth")
TRAINING_STATE = re.compile(r"^(optimizer|scheduler|scaler|rng_state(_\d+)?|training_args)\.(pt|pth|bin)$")


def head_file_names(folder: Path) -> list[str]:
    """The head files in ``folder`` (sorted), e.g. ``["colbert_linear.pt", "sparse_linear.pt"]``."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix in HEAD_SUFFIXES and p.is_file() and not TRAINING_STATE.match(p.name))


def is_head_file(component) -> bool:
    """Whether a checkpoint's component (``checkpoint.components[key]``) is a head file."""
    return bool(getattr(component, "head_file", None))


def tensor_prefix(file_name: str) -> str:
    """What a head file's tensor names start with in the plan: ``colbert_linear.`` for ``colbert_linear.pt``."""
    return f"{Path(file_name).stem}."


class HeadFileWriter:
    """Collects one head file's merged tensors (small: a few linear layers) and saves them as a state
    dict under the file's own name, with the keys the input file had; the writer's interface is the
    safetensors writer's (``write``, ``close``, ``abort``)."""

    def __init__(self, folder: Path, file_name: str, entries: list[tuple[str, torch.dtype, tuple]]):
        self.path = Path(folder) / file_name
        self.prefix = tensor_prefix(file_name)
        self.expected = [name for name, _, _ in entries]
        self.state: dict[str, torch.Tensor] = {}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if not name.startswith(self.prefix):
            raise RuntimeError(f"head file {self.path.name} got tensor {name}")
        self.state[name[len(self.prefix):]] = tensor.contiguous().clone()

    def close(self) -> list[str]:
        if len(self.state) != len(self.expected):
            raise RuntimeError(f"{self.path.name}: closed after {len(self.state)} of {len(self.expected)} tensors")
        torch.save(self.state, self.path)
        return [self.path.name]

    def abort(self) -> None:
        pass
