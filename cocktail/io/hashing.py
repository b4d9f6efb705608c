"""sha256 of input files: what provenance records and ``--verify`` checks, remembered between runs.

Hashing every input costs about a CPU-second per GB, on every merge. A merge of the same inputs
again (a sweep of weights, a rerun) takes the hash from a cache instead: one JSON file,
``sha256.json``, in cocktail's cache folder (``$COCKTAIL_CACHE_DIR``, else
``$XDG_CACHE_HOME/cocktail``, else ``~/.cache/cocktail``; ``COCKTAIL_CACHE_DIR=`` empty turns it off).

An entry is trusted only when everything the file system says about the file still matches: its
real path, size, mtime_ns, ctime_ns (which no one can set back), inode and device. A file changed
in the last two seconds is not remembered (a second change within the clock's resolution could
leave its times unchanged), nor is one that changed while it was hashed. The cache is written
whole to a temporary file and renamed into place; an unreadable, corrupt or unwritable cache is
ignored (and rebuilt when it can be). ``--verify`` never reads it: it hashes every file again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from cocktail.io import json_input

CHUNK = 8 * 1024 * 1024
CACHE_ENV = "COCKTAIL_CACHE_DIR"
CACHE_FILE = "sha256.json"
CACHE_VERSION = 1
MAX_ENTRIES = 4096  # the oldest entries go first
RECENT_NS = 2_000_000_000  # a file modified this recently is hashed but not remembered
_HEX = re.compile(r"[0-9a-f]{64}")
_lock = threading.Lock()  # inputs are hashed on several threads


def cache_folder() -> Optional[Path]:
    """Where the hash cache lives (``None``: no cache, ``COCKTAIL_CACHE_DIR`` set empty)."""
    given = os.environ.get(CACHE_ENV)
    if given is not None:
        return Path(given).expanduser() if given.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: a relative value is ignored
    return base / "cocktail"


def _file_key(path: Path) -> tuple[str, list[int]]:
    """``(real path, [size, mtime_ns, ctime_ns, inode, device])``: what must not change for a hash to hold."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and bool(_HEX.fullmatch(entry["sha256"]))
            and isinstance(entry.get("key"), list) and len(entry["key"]) == 5
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry["key"]))


def _read_cache(folder: Path) -> dict[str, dict]:
    """The cache's entries by real path; ``{}`` for a missing, unreadable or corrupt cache file."""
    try:
        data = json_input.loads((folder / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return {path: entry for path, entry in data["files"].items() if isinstance(path, str) and _valid_entry(entry)}


def _write_cache(folder: Path, entries: dict[str, dict]) -> None:
    """Replace the cache file with ``entries`` (atomically); any failure leaves the old one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "files": entries}, f)
            os.replace(tmp, folder / CACHE_FILE)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a cache that cannot be written costs a re-hash next time, nothing else


def cached_sha256(path: Path) -> Optional[str]:
    """The remembered sha256 of ``path``, if the cache holds one for the file as it is now."""
    folder = cache_folder()
    if folder is None:
        return None
    try:
        real, key = _file_key(path)
    except OSError:
        return None
    with _lock:
        entry = _read_cache(folder).get(real)
    return entry["sha256"] if entry is not None and entry["key"] == key else None


def remember_sha256(path: Path, key_before: tuple[str, list[int]], digest: str) -> None:
    """Remember ``digest`` for ``path`` if the file did not change while it was hashed and is not too new."""
    folder = cache_folder()
    if folder is None:
        return
    try:
        real, key = _file_key(path)
    except OSError:
        return
    if (real, key) != key_before or time.time_ns() - max(key[1], key[2]) < RECENT_NS:
        return
    with _lock:
        entries = _read_cache(folder)
        entries.pop(real, None)
        entries[real] = {"key": key, "sha256": digest}
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        _write_cache(folder, entries)


def sha256_file(path: Path, cached: bool = True) -> str:
    """The sha256 of a file; ``cached``: take it from the hash cache when the file is unchanged, and
    remember it there (``cached=False``, as ``--verify`` does, always reads every byte)."""
    if cached:
        known = cached_sha256(path)
        if known is not None:
            return known
        try:
            key_before = _file_key(path)
        except OSError:
            key_before = None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)  # releases the GIL: hashing runs beside the merge
    hexdigest = digest.hexdigest()
    if cached and key_before is not None:
        remember_sha256(path, key_before, hexdigest)
    return hexdigest


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (a model's files outside its folder are named by their name)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def file_hashes(root: Path, files: Sequence[Path]) -> dict[str, str]:
    """``{path relative to root: sha256}`` of each file."""
    return {relative(f, root): sha256_file(f) for f in files}
