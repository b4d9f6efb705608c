"""The safetensors file format, read and written by hand.

A safetensors file is an 8-byte little-endian header length, a JSON header (names -> dtype, shape,
byte offsets; plus ``__metadata__``), then the raw tensor bytes. Knowing this lets cocktail read one
tensor at a time with a plain ``pread`` (no memory map that would pin whole files in RSS) and write
an output header first, then append tensors as they are made.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import torch

from cocktail.errors import InputError

DTYPE_FROM_CODE = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
for _code, _name in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _name):
        DTYPE_FROM_CODE[_code] = getattr(torch, _name)
CODE_FROM_DTYPE = {dtype: code for code, dtype in DTYPE_FROM_CODE.items()}

MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse a safetensors header: ``({name: TensorEntry}, metadata)``, tensors in file order."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise InputError(f"{path}: not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", raw)
            if size > MAX_HEADER_BYTES:
                raise InputError(f"{path}: not a safetensors file (header of {size} bytes)")
            header = json.loads(f.read(size))
            file_size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read safetensors header ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + size
    entries = {}
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        code = info.get("dtype")
        if code not in DTYPE_FROM_CODE:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
        begin, end = info["data_offsets"]
        if data_start + end > file_size:
            raise InputError(f"{path}: file is truncated (tensor {name!r} runs past its end)")
        entries[name] = TensorEntry(DTYPE_FROM_CODE[code], tuple(info["shape"]), data_start + begin, end - begin)
    return entries, metadata


def read_tensor(fd: int, entry: TensorEntry) -> torch.Tensor:
    """Read one tensor from an open file descriptor into fresh memory."""
    buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
    if entry.nbytes:
        view = memoryview(buffer.numpy())
        done = 0
        while done < entry.nbytes:
            got = os.preadv(fd, [view[done:]], entry.start + done)
            if got <= 0:
                raise InputError(f"unexpected end of file while reading a tensor at byte {entry.start + done}")
            done += got
    return buffer.view(entry.dtype).reshape(entry.shape)


def tensor_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * dtype.itemsize


def encode_header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """The header bytes (length prefix included) for tensors laid out in the given order."""
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = tensor_nbytes(dtype, shape)
        header[name] = {"dtype": CODE_FROM_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)  # data starts 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(body)) + body


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is already contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
