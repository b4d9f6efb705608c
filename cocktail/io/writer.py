"""Streamed safetensors writing, in shards.

Every output tensor's name, dtype and shape is known before the first one is merged, so each
shard's header is written first and tensors are appended as they are made: nothing but the tensor
being written is held in memory. More than one shard gets a ``model.safetensors.index.json``
like the one transformers writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cocktail.io import safetensors_format as st_format

WRITE_BUFFER = 1 << 20  # small tensors (biases, norms) go out together, in writes of up to 1 MiB
def plan_shards(entries: list[tuple[str, torch.dtype, tuple]], max_bytes: int) -> list[list]:
    """Split tensors, in order, into shards of at most ``max_bytes`` (a larger tensor gets its own)."""
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = st_format.tensor_nbytes(entry[1], entry[2])
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


class ShardedSafetensorsWriter:
    """Write planned tensors, in the planned order, into ``folder/<basename>[-0000i-of-0000n].safetensors``."""

    def __init__(self, folder: Path, entries: list[tuple[str, torch.dtype, tuple]], max_shard_bytes: int,
                 basename: str = "model", metadata: dict | None = None):
        self.folder = Path(folder)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(entries, max_shard_bytes)
        count = len(self.shards)
        self.file_names = ([f"{basename}.safetensors"] if count == 1 else
                           [f"{basename}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
        self.basename = basename
        self._queue = [(s, e) for s, shard in enumerate(self.shards) for e in shard]
        self._next = 0
        self._file = None
        self._shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard, (expected, dtype, shape) = self._queue[self._next]
        if name != expected or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"writer expected {expected} {dtype} {list(shape)}, got {name} {tensor.dtype} {list(tensor.shape)}")
        if shard != self._shard:
            self._open_shard(shard)
        self._file.write(st_format.tensor_bytes(tensor))
        self._next += 1

    def _open_shard(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        self._shard = shard
        self._file = open(self.folder / self.file_names[shard], "wb", buffering=WRITE_BUFFER)
        self._file.write(st_format.encode_header(self.shards[shard], self.metadata))

    def close(self) -> list[str]:
        """Finish the files (and the index when sharded); returns the file names written."""
        if self._next != len(self._queue):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._queue)} tensors")
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._queue:  # no tensors at all: still a valid, empty file
            (self.folder / self.file_names[0]).write_bytes(st_format.encode_header([], self.metadata))
        written = list(self.file_names)
        if len(self.file_names) > 1:
            total = sum(st_format.tensor_nbytes(d, s) for _, d, s in (e for _, e in self._queue))
            weight_map = {name: self.file_names[s] for s, (name, _, _) in self._queue}
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            index_name = f"{self.basename}.safetensors.index.json"
            (self.folder / index_name).write_text(json.dumps(index, indent=2) + "\n")
            written.append(index_name)
        return written

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
