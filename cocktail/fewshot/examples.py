"""Few-shot example files: read them, check them, and say exactly what is wrong when they are bad.

Three layouts are read, whatever the file's suffix (a gzipped file, ``.jsonl.gz``, is read through gzip):

- JSON Lines: one example object per line (blank lines are skipped);
- a JSON list of example objects;
- LM-Cocktail's task-keyed object ``{"ArguAna": [...], "FiQA": [...]}`` (pick tasks with ``task``).

An example for an ``encoder``, ``reranker``, ``llm-embedder`` or ``llm-reranker`` is ``{"query": str, "pos": [str, ...], "neg": [str, ...]}``
with an optional ``"prompt"`` (a per-example query instruction, as in FlagEmbedding's training data);
embedders may leave out ``neg`` (their loss uses the other examples' passages as in-batch negatives),
rerankers may not (their loss ranks a query's positive against its own negatives);
for a ``decoder`` it is ``{"input": str, "output": str}``. Other keys (``pos_scores``, ``type``) are
ignored. Every error names the file, the line (or task and item) and what is wrong.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from cocktail.errors import InputError, option
from cocktail.io import json_input
from cocktail.io.json_input import JSONLimitError
from cocktail.io.text_lines import bounded_lines
from cocktail.recipe.choices import MODEL_TYPES

ExampleSource = Union[str, os.PathLike, Sequence[dict], dict]
GZIP_MAGIC = b"\x1f\x8b"
MAX_GZIP_BYTES = 256 << 20  # a gzipped examples file unpacks to at most this (a small file can unpack to gigabytes)
FORMATS = '{"query": ..., "pos": [...], "neg": [...]}; {"input": ..., "output": ...} for decoders'


@dataclass(frozen=True)
class Example:
    """One checked example. ``where`` says where it came from (``few.jsonl line 3``), for messages."""

    where: str
    query: str = ""
    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()
    prompt: Optional[str] = None
    input: str = ""
    output: str = ""

    def to_dict(self) -> dict:
        if self.pos:
            data: dict[str, Any] = {"query": self.query, "pos": list(self.pos), "neg": list(self.neg)}
            if self.prompt is not None:
                data["prompt"] = self.prompt
            return data
        return {"input": self.input, "output": self.output}


@dataclass
class ExampleSet:
    """The examples to score, and a short description of where they came from (for provenance)."""

    examples: list[Example]
    source: str
    tasks: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def load_examples(source: ExampleSource, model_type: str = "encoder",
                  task: Union[str, Sequence[str], None] = None) -> ExampleSet:
    """Read and check few-shot examples for ``model_type``.

    Args:
        source: a path to a JSONL / JSON list / task-keyed JSON file, a list of example dicts, or a
            task-keyed dict.
        model_type: one of ``MODEL_TYPES`` (``decoder`` examples are ``{input, output}``, the others
            ``{query, pos, neg}``).
        task: for task-keyed data, the task name(s) to use (default: every task, in file order).

    Raises:
        cocktail.InputError: a clear message with the line (or item) and what is wrong.
    """
    if model_type not in MODEL_TYPES:
        raise InputError(f"unknown model type {model_type!r} (choose from {', '.join(MODEL_TYPES)})")
    if isinstance(source, (str, os.PathLike)):
        items, label, tasks = _read_file(Path(source).expanduser(), task)
    elif isinstance(source, dict):
        if _looks_like_example(source):
            items, label, tasks = [(source, "example 1")], "examples given in Python", []
        else:
            items, tasks = _select_tasks(source, task, "examples given in Python", None)
            label = "examples given in Python"
    elif isinstance(source, (list, tuple)):
        items = [(item, f"example {i + 1}") for i, item in enumerate(source)]
        label, tasks = "examples given in Python", []
        if task is not None:
            raise InputError("task was given, but the examples are a plain list, not keyed by task")
    else:
        raise InputError(f"examples must be a file path or a list of dicts, got {type(source).__name__}")
    if not items:
        raise InputError(f"{label}: no examples")
    examples = [_check(item, where, model_type) for item, where in items]
    return ExampleSet(examples, label, tasks)


# -- reading -------------------------------------------------------------------------------------


def _read_file(path: Path, task) -> tuple[list[tuple[Any, str]], str, list[str]]:
    label = str(path)
    if not path.exists():
        raise InputError(f"examples file not found: {path}")
    if path.is_dir():
        raise InputError(f"examples file {path} is a folder, not a file")
    try:
        text = _read_text(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise InputError(f"{path}: the examples file is empty")
    offset = len(text) - len(stripped)
    if stripped.startswith("["):
        data = _parse_whole(text, path)
        if not isinstance(data, list):  # pragma: no cover - a document starting with '[' is a list
            raise InputError(f"{path}: expected a JSON list of examples")
        lines = _array_item_lines(text, offset)
        items = [(item, f"{path.name} line {line}") for item, line in zip(data, lines)]
        if task is not None:
            raise InputError(f"{path}: {option('task')} was given, but the file is a plain list of examples, not keyed by task")
        return items, label, []
    if stripped.startswith("{"):
        try:
            whole = json_input.loads(text)
        except ValueError:
            whole = None
        if isinstance(whole, dict) and not _looks_like_example(whole) and whole \
                and all(isinstance(v, list) for v in whole.values()):
            lines = _object_item_lines(text, offset)
            items, tasks = _select_tasks(whole, task, str(path), lines, path.name)
            return items, label, tasks
    if task is not None:
        raise InputError(f"{path}: {option('task')} was given, but the file holds plain examples, not tasks")
    return _read_jsonl(text, path), label, []


def _read_text(path: Path) -> str:
    """The file's text (a gzipped file's unpacked, at most ``MAX_GZIP_BYTES`` of it), read a bounded line
    at a time (see :func:`~cocktail.io.text_lines.bounded_lines`), with universal newlines."""
    with open(path, "rb") as f:
        packed = f.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    opened = gzip.open(path, "rt", encoding="utf-8") if packed else open(path, encoding="utf-8")
    parts, size = [], 0
    with opened as handle:
        for _, line in bounded_lines(handle, path):
            size += len(line)
            if packed and size > MAX_GZIP_BYTES:
                raise InputError(f"{path}: unpacks to more than {MAX_GZIP_BYTES >> 20} MiB, too much for few-shot "
                                 "examples")
            parts.append(line)
    return "".join(parts)


def _parse_whole(text: str, path: Path) -> Any:
    try:
        return json_input.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except JSONLimitError as exc:
        raise InputError(f"{path}: JSON cocktail does not read: {exc}") from None


def _read_jsonl(text: str, path: Path) -> list[tuple[Any, str]]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            items.append((json_input.loads(line), f"{path.name} line {number}"))
        except json.JSONDecodeError as exc:
            if "\t" in line or path.suffix.lower() in (".tsv", ".csv", ".txt"):
                raise InputError(f"{path} line {number}: not JSON; examples are JSON Lines, one object per line "
                                 f"({FORMATS}), or a JSON list of them, not {path.suffix or 'tab-separated'} "
                                 "text") from None
            raise InputError(f"{path} line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except JSONLimitError as exc:
            raise InputError(f"{path} line {number}: JSON cocktail does not read: {exc}") from None
    return items


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n\ufeff":
        i += 1
    return i


def _array_item_lines(text: str, start: int) -> list[int]:
    """The line each item of the (valid) JSON array at ``text[start]`` starts on."""
    decoder = json.JSONDecoder()
    lines = []
    i = _skip_space(text, start + 1)
    while i < len(text) and text[i] != "]":
        lines.append(_line_of(text, i))
        _, i = decoder.raw_decode(text, i)
        i = _skip_space(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
    return lines


def _object_item_lines(text: str, start: int) -> dict[str, list[int]]:
    """For a (valid) JSON object of arrays at ``text[start]``: the line of each item of each array."""
    decoder = json.JSONDecoder()
    lines: dict[str, list[int]] = {}
    i = _skip_space(text, start + 1)
    while i < len(text) and text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _skip_space(text, i)
        i = _skip_space(text, i + 1)  # the colon
        lines[key] = _array_item_lines(text, i)
        _, i = decoder.raw_decode(text, i)
        i = _skip_space(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
    return lines


def _looks_like_example(data: dict) -> bool:
    return any(key in data for key in ("query", "pos", "neg", "input", "output"))


def _select_tasks(data: dict, task, label: str, lines: Optional[dict], short: Optional[str] = None
                  ) -> tuple[list[tuple[Any, str]], list[str]]:
    if not data:
        raise InputError(f"{label}: no tasks and no examples")
    for name, value in data.items():
        if not isinstance(value, list):
            raise InputError(f"{label}: task {name!r} must hold a list of examples, not {_kind(value)}")
    if task is None:
        chosen = list(data)
    else:
        chosen = [task] if isinstance(task, str) else list(task)
        unknown = [t for t in chosen if t not in data]
        if unknown:
            raise InputError(f"{label}: no task {unknown[0]!r} (tasks in the file: {', '.join(data)})")
    items = []
    for name in chosen:
        task_lines = (lines or {}).get(name, [])
        for i, item in enumerate(data[name]):
            if i < len(task_lines) and short:
                where = f"{short} line {task_lines[i]} (task {name}, example {i + 1})"
            else:
                where = f"task {name}, example {i + 1}"
            items.append((item, where))
    return items, chosen


# -- checking ------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _string(item: dict, key: str, where: str, required: bool = True) -> Optional[str]:
    if key not in item:
        if required:
            raise InputError(f"{where}: missing field {key!r}")
        return None
    value = item[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} must be a string, not {_kind(value)}")
    return _text(value, where, key)


def _text(value: str, where: str, key: str) -> str:
    """``value`` if it is text a tokenizer can take: a lone surrogate (``"\\ud800"`` in JSON) is no character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: {key} holds a lone surrogate escape (not a character): {ascii(value)[:60]}") from None
    return value


def _strings(item: dict, key: str, where: str) -> tuple[str, ...]:
    if key not in item:
        raise InputError(f"{where}: missing field {key!r}")
    value = item[key]
    if isinstance(value, str):
        raise InputError(f"{where}: field {key!r} must be a list of strings, not a single string (write [\"...\"])")
    if not isinstance(value, list):
        raise InputError(f"{where}: field {key!r} must be a list of strings, not {_kind(value)}")
    for j, text in enumerate(value):
        if not isinstance(text, str):
            raise InputError(f"{where}: {key}[{j}] must be a string, not {_kind(text)}")
        _text(text, where, f"{key}[{j}]")
    return tuple(value)


def _check(item: Any, where: str, model_type: str) -> Example:
    if not isinstance(item, dict):
        raise InputError(f"{where}: an example must be a JSON object, not {_kind(item)}")
    if model_type == "decoder":
        if "query" in item and "input" not in item:
            raise InputError(f"{where}: missing field 'input' (decoder examples are "
                             "{\"input\": ..., \"output\": ...}; this looks like an embedder example)")
        return Example(where, input=_string(item, "input", where), output=_string(item, "output", where))
    if "input" in item and "query" not in item:
        raise InputError(f"{where}: missing field 'query' ({model_type} examples are "
                         "{\"query\": ..., \"pos\": [...], \"neg\": [...]}; this looks like a decoder example)")
    query = _string(item, "query", where)
    pos = _strings(item, "pos", where)
    if not pos:
        raise InputError(f"{where}: 'pos' is empty (give at least one positive passage)")
    needs_negatives = model_type in ("reranker", "llm-reranker")
    if "neg" not in item and needs_negatives:
        raise InputError(f"{where}: missing field 'neg' (a {model_type}'s loss ranks each query's positive "
                         "against its own negatives; an embedder's can do without, using in-batch negatives)")
    neg = _strings(item, "neg", where) if "neg" in item else ()
    if needs_negatives and not neg:
        raise InputError(f"{where}: 'neg' is empty (a reranker's loss needs at least one negative per query)")
    prompt = _string(item, "prompt", where, required=False)
    return Example(where, query=query, pos=pos, neg=neg, prompt=prompt)
