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

from cocktail.errors import InputError, quoted
from cocktail.io import json_input
from cocktail.io.containment import open_regular

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

#: Every dtype code the safetensors format knows (``safe_open`` accepts these; cocktail reads
#: those in ``DTYPE_FROM_CODE``), with its size in bits.
FORMAT_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
               "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
               "F64": 64, "C64": 64, "I64": 64, "U64": 64}
MAX_HEADER_BYTES = 100_000_000  # as the safetensors library: a longer header is refused
USIZE = 2**64  # safetensors reads offsets and shapes as 64-bit unsigned integers


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and check a safetensors header: ``({name: TensorEntry}, metadata)``, tensors in file order.

    A header is accepted only if the ``safetensors`` library would accept it: a length that fits the
    file, UTF-8 JSON holding an object of tensors (``__metadata__`` a mapping of strings), each with
    a known dtype, a shape and two offsets that are non-negative integers, the tensors laid out one
    after the other from the first data byte to the last, each as long as its dtype and shape say."""
    try:
        with open_regular(path) as f:  # a FIFO would block an ordinary open forever
            raw = f.read(8)
            file_size = os.fstat(f.fileno()).st_size
            if len(raw) != 8:
                raise InputError(f"{path}: not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", raw)
            if size > MAX_HEADER_BYTES:
                raise InputError(f"{path}: not a safetensors file (header length {size} is over the "
                                 f"{MAX_HEADER_BYTES}-byte limit)")
            if 8 + size > file_size:
                raise InputError(f"{path}: not a safetensors file (header length {size} runs past the end of "
                                 f"the {file_size}-byte file)")
            body = f.read(size)
    except OSError as exc:
        raise InputError(f"{path}: cannot read safetensors header ({exc.strerror or exc})") from None
    try:
        header = json_input.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise InputError(f"{path}: safetensors header is not UTF-8 text") from None
    except ValueError as exc:
        raise InputError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    return _check_header(header, path, 8 + size, file_size)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _lone_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _check_header(header, path, data_start: int, file_size: int) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    bad = f"{path}: invalid safetensors header:"
    if not isinstance(header, dict):
        raise InputError(f"{bad} expected a JSON object of tensors, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) and not _lone_surrogate(k + v)
                                                 for k, v in metadata.items()):
        raise InputError(f"{bad} __metadata__ must map strings to strings")
    layout = []
    for name, info in header.items():
        if _lone_surrogate(name):
            raise InputError(f"{bad} tensor name {quoted(name)} is not valid Unicode")
        if not isinstance(info, dict):
            raise InputError(f"{bad} tensor {quoted(name)} is {type(info).__name__}, not an object with dtype, shape "
                             f"and data_offsets")
        missing = [key for key in ("dtype", "shape", "data_offsets") if key not in info]
        if missing:
            raise InputError(f"{bad} tensor {quoted(name)} has no {missing[0]}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in FORMAT_BITS:
            raise InputError(f"{bad} tensor {quoted(name)} has unknown dtype {quoted(code)}")
        if not isinstance(shape, list) or not all(_usize(d) for d in shape):
            raise InputError(f"{bad} tensor {quoted(name)}: shape must be a list of non-negative integers, got {quoted(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_usize(o) for o in offsets)):
            raise InputError(f"{bad} tensor {quoted(name)}: data_offsets must be two non-negative integers, got {quoted(offsets)}")
        layout.append((tuple(offsets), name, code, tuple(shape)))
    layout.sort(key=lambda item: item[0])  # as safetensors does: by (begin, end)
    entries = {}
    position = 0
    for (begin, end), name, code, shape in layout:
        if begin != position or end < begin:
            raise InputError(f"{bad} tensor {quoted(name)} has data_offsets [{begin}, {end}]: tensors must follow one "
                             f"another from offset 0 without gaps or overlaps (expected it to start at {position})")
        count = 1
        for dim in shape:
            count *= dim
            if count >= USIZE:
                raise InputError(f"{bad} tensor {quoted(name)} has an impossible shape {list(shape)}")
        if count * FORMAT_BITS[code] >= USIZE or count * FORMAT_BITS[code] % 8:
            raise InputError(f"{bad} tensor {quoted(name)} has an impossible shape {list(shape)} for {code}")
        if end - begin != count * FORMAT_BITS[code] // 8:
            raise InputError(f"{bad} tensor {quoted(name)} is {end - begin} bytes, but {code} {list(shape)} needs "
                             f"{count * FORMAT_BITS[code] // 8}")
        position = end
        if code not in DTYPE_FROM_CODE:
            raise InputError(f"{path}: tensor {quoted(name)} has dtype {code}, which cocktail cannot merge")
        entries[name] = TensorEntry(DTYPE_FROM_CODE[code], shape, data_start + begin, end - begin)
    if data_start + position != file_size:
        what = "is truncated" if data_start + position > file_size else "has bytes after its last tensor"
        raise InputError(f"{path}: file {what} (the header covers {position} data bytes, the file holds "
                         f"{file_size - data_start})")
    return entries, metadata


def _usize(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < USIZE


def read_tensor(fd: int, entry: TensorEntry) -> torch.Tensor:
    """Read one tensor from an open file descriptor into fresh memory."""
    buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
    if entry.nbytes:
        view = memoryview(buffer.numpy())
        done = 0
        while done < entry.nbytes:
            got = os.preadv(fd, [view[done:]], entry.start + done)
            if got <= 0:
                raise InputError(f"the file ends at byte {entry.start + done}, before the tensor does")
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
