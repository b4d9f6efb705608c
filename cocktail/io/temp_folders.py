"""The temporary folders cocktail makes beside an output, and the clean-up after a run that was killed.

A run builds its output in a work folder ``.<name>.cocktail-<pid>-<random>`` beside the target:
``output/`` inside it is the output being built, and a marker file, ``.cocktail-temporary``, names
the process that made it (its pid and start time, so a recycled pid is not mistaken for it) and,
while an existing output is being replaced, the name that output was moved aside to
(``.<name>.old-<pid>-<hex>``).

:func:`recover` runs before the next run into the same output. It touches only work folders whose
marker is valid and names a process that is gone: a previous output that was moved aside is put
back when no output is in place (the run was killed between the two renames), else removed; then
the work folder goes. A folder without a valid marker (someone's model folder that happens to be
named like one, a marker that is a link, absurd numbers) is never deleted, and no link is followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Optional

MARKER = ".cocktail-temporary"
MARKER_LIMIT = 4096  # bytes: a marker is a line of JSON
BUILT = "output"  # the folder inside a work folder that becomes the output
PID_LIMIT = 2 ** 31  # pid_t is a 32-bit int; a larger number is no process


def temp_stem(target: Path) -> str:
    """The start of the temporary names beside ``target``: ``.<name>`` (a digest of a long name, so the
    temporary name fits in a file name too)."""
    name = target.name
    if len(os.fsencode(name)) > 150:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return f".{name}"


def work_prefix(target: Path) -> str:
    """The name of a work folder of this process beside ``target``, less its random end."""
    return f"{temp_stem(target)}.cocktail-{os.getpid()}-"


def aside_name(target: Path) -> str:
    """A fresh name to move the existing output ``target`` aside to while its replacement is put in place."""
    return f"{temp_stem(target)}.old-{os.getpid()}-{os.urandom(4).hex()}"


def started(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``); ``None`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read(4096)
    except OSError:
        return None
    fields = line[line.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return int(fields[19])  # field 22 of proc(5), counted from the state (field 3)
    except (IndexError, ValueError):
        return None


def write_marker(work: Path, aside: Optional[str] = None) -> None:
    """Mark ``work`` as this process's (and name the output moved aside, once there is one): written
    whole to a new file and renamed over the old one."""
    data = {"pid": os.getpid(), "started": started(os.getpid()), "aside": aside}
    new = work / f"{MARKER}.new"
    new.write_text(json.dumps(data) + "\n")
    os.replace(new, work / MARKER)


def read_marker(work: Path, target: Path) -> Optional[dict]:
    """The marker of the work folder ``work`` beside ``target``, or ``None`` when it is not a marker of
    cocktail's: missing, a link or special file, too long, not the JSON cocktail writes, a pid no
    process can have, or an aside name that is not one of this output's."""
    try:
        if not stat.S_ISDIR(os.lstat(work).st_mode):
            return None
        fd = os.open(work / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, MARKER_LIMIT + 1)
        if len(text) > MARKER_LIMIT:
            return None
        data = json.loads(text.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    pid, start, aside = data.get("pid"), data.get("started"), data.get("aside")
    if type(pid) is not int or not 0 < pid < PID_LIMIT or not (start is None or type(start) is int):
        return None
    aside_pattern = rf"{re.escape(temp_stem(target))}\.old-[0-9]{{1,10}}-[0-9a-f]{{8}}"
    if aside is not None and not (isinstance(aside, str) and re.fullmatch(aside_pattern, aside)):
        return None
    return data


def running(pid: int, start: Optional[int]) -> bool:
    """Process ``pid`` is alive and is the one that started at ``start`` (where both start times are known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    except (OverflowError, OSError):
        return False
    now = started(pid)
    return start is None or now is None or now == start


def recover(target: Path) -> list[Path]:
    """Clean up after the killed runs into ``target`` (see the module docstring); returns the folders
    that went or were put back."""
    pattern = re.compile(rf"^{re.escape(temp_stem(target))}\.cocktail-[0-9]+-[A-Za-z0-9_]+$")
    touched: list[Path] = []
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return touched
    for name in names:
        work = target.parent / name
        marker = read_marker(work, target) if pattern.match(name) else None
        if marker is None or running(marker["pid"], marker["started"]):
            continue
        aside = target.parent / marker["aside"] if marker["aside"] else None
        if aside is not None and stat_kind(aside) == stat.S_IFDIR:
            if not os.path.lexists(target):
                os.rename(aside, target)  # killed between moving the old output aside and putting the new one in place
            else:
                rmtree(aside)
            touched.append(aside)
        remove_work(work)
        touched.append(work)
    return touched


def stat_kind(path: Path) -> Optional[int]:
    """The file type bits of ``path`` itself (a link is a link), ``None`` when there is nothing."""
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except OSError:
        return None


def remove_work(work: Path) -> None:
    """Remove a work folder, its marker last, so a removal cut short leaves a folder still marked."""
    try:
        entries = [e for e in os.listdir(work) if e != MARKER]
    except OSError:
        return
    for entry in entries:
        rmtree(work / entry)
    try:
        os.unlink(work / MARKER)
        os.rmdir(work)
    except OSError:
        pass


def rmtree(path: Path) -> None:
    """Remove ``path`` whole, read-only folders inside it included; a link is never followed (one at
    ``path`` itself is removed as a link)."""
    if os.path.islink(path) or stat_kind(path) not in (stat.S_IFDIR, None):
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    for folder, _, _ in os.walk(path):
        mode = os.lstat(folder).st_mode
        if not stat.S_ISLNK(mode) and mode & 0o700 != 0o700:
            os.chmod(folder, mode | 0o700)
    shutil.rmtree(path, ignore_errors=True)
