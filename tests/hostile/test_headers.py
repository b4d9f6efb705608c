"""A safetensors header is accepted only if the ``safetensors`` library accepts it (item 5), and each
malformed header is one ``error:`` line (items 12 and 16): a property test against ``safe_open`` and
the cases of the issue through the command line."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from cocktail.errors import InputError
from cocktail.io.safetensors_format import DTYPE_FROM_CODE, read_header, read_tensor
from hostile.conftest import refuse

TENSORS = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16),
           "c": torch.tensor([1, 2], dtype=torch.int64), "d": torch.zeros(0, dtype=torch.float32)}


def valid_file() -> tuple[dict, bytes]:
    """A real file written by the safetensors library: its header (parsed) and its data bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        save_file(TENSORS, str(path), metadata={"format": "pt"})
        raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + size]), raw[8 + size:]


HEADER, DATA = valid_file()
NAMES = sorted(k for k in HEADER if k != "__metadata__")
ODD = st.one_of(st.integers(-3, 3), st.integers(0, 80), st.just(2**64), st.floats(0, 64), st.text(max_size=2),
                st.none(), st.booleans(), st.lists(st.integers(0, 64), max_size=3))
# safe_open and cocktail know the same dtypes, except those cocktail cannot merge (C64, F4, ...): left out
DTYPES = st.sampled_from(sorted(DTYPE_FROM_CODE) + ["f32", "X", ""])


def mutation():
    name = st.sampled_from(NAMES)
    return st.one_of(
        st.tuples(st.just("offset"), name, st.integers(0, 1), ODD),
        st.tuples(st.just("shift"), name, st.integers(-8, 8), st.integers(-8, 8)),
        st.tuples(st.just("shape"), name, st.integers(0, 2), ODD),
        st.tuples(st.just("dtype"), name, DTYPES, st.none()),
        st.tuples(st.just("drop"), name, st.sampled_from(["dtype", "shape", "data_offsets"]), st.none()),
        st.tuples(st.just("entry"), name, ODD, st.none()),
        st.tuples(st.just("add"), st.text(min_size=1, max_size=3), st.integers(0, 70), st.integers(0, 70)),
        st.tuples(st.just("metadata"), st.none(), st.one_of(st.none(), st.integers(), st.text(max_size=2),
                                                            st.dictionaries(st.text(max_size=2), ODD, max_size=2)),
                  st.none()),
        st.tuples(st.just("swap"), name, name, st.none()),
        st.tuples(st.just("data"), st.none(), st.integers(-6, 6), st.none()),
        st.tuples(st.just("length"), st.none(), st.integers(-4, 4), st.none()),
        st.tuples(st.just("whole"), st.none(), st.sampled_from([[], "x", 3, None]), st.none()),
    )


def build(mutations) -> bytes:
    header = json.loads(json.dumps(HEADER))
    data, length_delta = DATA, 0
    for kind, x, y, z in mutations:
        entry = header.get(x) if isinstance(header, dict) else None
        if kind == "offset" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list):
            if y < len(entry["data_offsets"]):
                entry["data_offsets"][y] = z
        elif kind == "shift" and isinstance(entry, dict):
            offsets = entry.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
                entry["data_offsets"] = [offsets[0] + y, offsets[1] + z]
        elif kind == "shape" and isinstance(entry, dict) and isinstance(entry.get("shape"), list):
            if y < len(entry["shape"]):
                entry["shape"][y] = z
            else:
                entry["shape"].append(z)
        elif kind == "dtype" and isinstance(entry, dict):
            entry["dtype"] = y
        elif kind == "drop" and isinstance(entry, dict):
            entry.pop(y, None)
        elif kind == "entry" and isinstance(header, dict):
            header[x] = y
        elif kind == "add" and isinstance(header, dict):
            header[x] = {"dtype": "U8", "shape": [abs(z - y)], "data_offsets": [y, z]}
        elif kind == "metadata" and isinstance(header, dict):
            header["__metadata__"] = y
        elif kind == "swap" and isinstance(header, dict) and isinstance(entry, dict) and isinstance(header.get(y), dict):
            entry["data_offsets"], header[y]["data_offsets"] = header[y].get("data_offsets"), entry.get("data_offsets")
        elif kind == "data":
            data = data + b"\0" * y if y >= 0 else data[:y]
        elif kind == "length":
            length_delta = y
        elif kind == "whole":
            header = y
    body = json.dumps(header).encode()
    return struct.pack("<Q", max(0, len(body) + length_delta)) + body + data


def safetensors_reads(path: Path):
    """What the safetensors library reads from ``path`` (None if it refuses the file)."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - any refusal of the library counts
        return None


def cocktail_reads(path: Path):
    try:
        entries, _ = read_header(path)
    except InputError:
        return None
    with open(path, "rb") as f:
        return {k: read_tensor(f.fileno(), e) for k, e in entries.items()}


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation(), min_size=1, max_size=3))
def test_cocktail_refuses_exactly_the_headers_safetensors_refuses(mutations):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        path.write_bytes(build(mutations))
        theirs, ours = safetensors_reads(path), cocktail_reads(path)
    assert (ours is None) == (theirs is None), (mutations, "cocktail refused" if ours is None else "cocktail accepted")
    if ours is not None:
        assert set(ours) == set(theirs) and all(ours[k].equal(theirs[k]) for k in theirs)


def test_the_unmodified_file_is_read_like_safetensors_reads_it():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        path.write_bytes(build([]))
        ours, theirs = cocktail_reads(path), safetensors_reads(path)
    assert set(ours) == set(TENSORS) and all(ours[k].equal(theirs[k]) for k in TENSORS)


def spoiled(header: dict, case: str):
    """The header of a real model file, spoiled as item 12 lists (returns the header or raw bytes)."""
    name = next(k for k in header if k != "__metadata__")
    entry = header[name]
    begin, end = entry["data_offsets"]
    if case == "float offsets":
        entry["data_offsets"] = [float(begin), float(end)]
    elif case == "string offsets":
        entry["data_offsets"] = [str(begin), str(end)]
    elif case == "no data_offsets":
        del entry["data_offsets"]
    elif case == "reversed offsets":
        entry["data_offsets"] = [end, begin]
    elif case == "negative offsets":
        entry["data_offsets"] = [begin - 8, end - 8]
    elif case == "overlapping offsets":
        other = [k for k in header if k not in ("__metadata__", name)][0]
        header[other]["data_offsets"] = list(entry["data_offsets"])
    elif case == "header a list":
        return [header]
    elif case == "entry a string":
        header[name] = "F32"
    elif case == "size not the shape's":
        entry["shape"] = [dim + 1 for dim in entry["shape"]]
    elif case == "metadata not strings":
        header["__metadata__"] = {"format": 1}
    return header


HEADER_CASES = ["float offsets", "string offsets", "no data_offsets", "reversed offsets", "negative offsets",
                "overlapping offsets", "header a list", "entry a string", "size not the shape's",
                "metadata not strings", "oversized length", "truncated", "not UTF-8"]


@pytest.mark.parametrize("case", HEADER_CASES)
def test_a_malformed_header_is_one_error_line(models, tmp_path, case):
    a, b = models
    weights = a / "model.safetensors"
    raw = weights.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + size]), raw[8 + size:]
    if case == "oversized length":
        new = struct.pack("<Q", len(raw)) + raw[8:]
        expected = "runs past the end"
    elif case == "truncated":
        new = raw[:-4]
        expected = "truncated"
    elif case == "not UTF-8":
        body = raw[8:8 + size].replace(b'"__metadata__"', b'"__metadata\xff_"')
        new = raw[:8] + body + data
        expected = "UTF-8"
    else:
        body = json.dumps(spoiled(header, case)).encode()
        new = struct.pack("<Q", len(body)) + body + data
        expected = "model.safetensors"
    weights.write_bytes(new)
    out = tmp_path / "out"
    result = refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], outputs=[out], contains=expected)
    assert str(weights) in result.stderr.strip()
