"""How a model is run to score examples or data: its dtype, and how it is spread over devices and disk.

:class:`ScoringOptions` is the one owner of these four options: ``weights_from`` (few-shot weights, a
recipe's keys), ``cocktail eval`` / ``sweep`` and the Python API all take them from its fields. Light
(no torch), like the CLI that uses it; the modeling room turns them into a placed model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from cocktail.errors import InputError, option
from cocktail.recipe.sizes import parse_size

SCORE_DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "sequential")
GPU_KEY = re.compile(r"(?:cuda:)?(\d+)")

MemoryCaps = dict  # {GPU index (int) or "cpu": bytes}


@dataclass
class ScoringOptions:
    """The dtype a model is scored in and where its weights live (``None``: the defaults)."""

    score_dtype: Optional[str] = None  # None: auto (the checkpoint's dtype on a GPU, float32 on CPU)
    device_map: Optional[str] = None  # None: the whole model on one device
    max_memory: Union[str, dict, None] = None  # "0=20GiB,cpu=30GiB" or {0: "20GiB", "cpu": "30GiB"}
    offload_folder: Any = None  # None: a temporary folder in cocktail's cache (or beside the output)

    def check(self) -> None:
        """Refuse a bad value, naming the option as the user wrote it."""
        if self.score_dtype is not None and self.score_dtype not in SCORE_DTYPES:
            raise InputError(f"{option('score_dtype')} must be one of {', '.join(SCORE_DTYPES)}, "
                             f"got {self.score_dtype!r}")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise InputError(f"{option('device_map')} must be one of {', '.join(DEVICE_MAPS)}, got {self.device_map!r}")
        self.memory_caps()
        if self.offload_folder is not None:
            if not isinstance(self.offload_folder, (str, os.PathLike)) or not os.fspath(self.offload_folder).strip():
                raise InputError(f"{option('offload_folder')} must be a folder path, got {self.offload_folder!r}")
            if self.device_map is None:
                raise InputError(f"{option('offload_folder')} needs {option('device_map')} (say how to spread the "
                                 "model; what does not fit in --max-memory goes to that folder)")

    def memory_caps(self) -> Optional[MemoryCaps]:
        """``max_memory`` as ``{0: bytes, "cpu": bytes}`` (GPU indices as integers), or ``None``."""
        return parse_memory_caps(self.max_memory)


def parse_memory_caps(value: Union[str, dict, None]) -> Optional[MemoryCaps]:
    """``"0=20GiB,cpu=30GiB"`` (or the same as a mapping) as ``{0: 21474836480, "cpu": 32212254720}``."""
    if value is None:
        return None
    what = option("max_memory")
    if isinstance(value, str):
        pairs = []
        for part in (p.strip() for p in value.split(",")):
            key, sep, size = part.partition("=")
            if not sep:
                raise InputError(f"{what}: {part!r} is not DEVICE=SIZE (e.g. \"0=20GiB,cpu=30GiB\")")
            pairs.append((key.strip(), size.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise InputError(f"{what} must be a text like \"0=20GiB,cpu=30GiB\" or a mapping, got {value!r}")
    if not pairs:
        raise InputError(f"{what} names no device (e.g. \"0=20GiB,cpu=30GiB\")")
    caps: MemoryCaps = {}
    for key, size in pairs:
        text = str(key).strip().lower()
        gpu = GPU_KEY.fullmatch(text)
        if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
            name: Union[int, str] = key
        elif gpu:
            name = int(gpu.group(1))
        elif text == "cpu":
            name = "cpu"
        else:
            raise InputError(f"{what}: unknown device {key!r} (a GPU index such as 0, or cpu)")
        caps[name] = parse_size(size, f"{what} of {name}")
    return caps
