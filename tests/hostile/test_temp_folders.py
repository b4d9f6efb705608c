"""The clean-up of temporary folders removes only what cocktail made: a work folder whose marker names
a process that is gone (its pid and start time, so a recycled pid is not mistaken for it). A folder
merely named like one, a marker that is a link or holds absurd numbers, is never deleted and crashes
nothing (issue 20, items 9 and 8)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cocktail.io.temp_folders import MARKER, started
from hostile.conftest import run_in_process, tree_hashes

REPO = str(Path(__file__).resolve().parents[2])


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def marked_by_a_process_now_gone(folder: Path) -> Path:
    """``folder`` with the marker a cocktail process writes, written by a process that then exits."""
    folder.mkdir(parents=True)
    (folder / "output").mkdir()
    (folder / "output" / "model.safetensors").write_bytes(b"partial")
    code = "import sys; from pathlib import Path; from cocktail.io.temp_folders import write_marker; " \
           "write_marker(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, folder], check=True, env={**os.environ, "PYTHONPATH": REPO})
    return folder


def merges(a, b, out, *extra):
    for force in ([], ["--force"]):  # the first run makes the output, the second replaces it
        result = run_in_process(["merge", "--models", a, b, "-o", out, "--quiet", *force, *extra])
        assert result.returncode == 0, result


def test_an_input_named_like_a_temporary_folder_is_never_deleted(models, tmp_path):
    a, b = models
    named = Path(shutil.copytree(a, tmp_path / f".out.cocktail-{dead_pid()}-x1"))
    unmarked = [tmp_path / f".out.cocktail-{dead_pid()}-abc", tmp_path / f".out.old-{dead_pid()}-0a1b2c3d"]
    for folder in unmarked:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "thesis.tex").write_text("three years of work")
    before = tree_hashes(named, *unmarked)
    merges(named, b, tmp_path / "out")
    assert tree_hashes(named, *unmarked) == before


def test_the_folders_a_killed_run_leaves_are_removed(models, tmp_path):
    a, b = models
    stale = [marked_by_a_process_now_gone(tmp_path / f".out.cocktail-{n}-abc12{n}") for n in range(2)]
    other = marked_by_a_process_now_gone(tmp_path / ".other.cocktail-1-abc123")  # another output's: kept
    merges(a, b, tmp_path / "out")
    assert not any(os.path.lexists(p) for p in stale) and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.cocktail-1-abc123", "A", "B", "out"]


def marker(folder: Path, data) -> Path:
    (folder / "output").mkdir(parents=True)
    (folder / MARKER).write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


@pytest.mark.skipif(started(os.getpid()) is None, reason="no /proc: process start times are unknown here")
def test_a_running_process_keeps_its_folder_and_a_recycled_pid_does_not(models, tmp_path):
    a, b = models
    parent = os.getppid()
    live = marker(tmp_path / ".out.cocktail-1-live", {"pid": parent, "started": started(parent), "aside": None})
    recycled = marker(tmp_path / ".out.cocktail-2-recycled",  # this pid, but a process that started earlier
                      {"pid": os.getpid(), "started": started(os.getpid()) - 1, "aside": None})
    merges(a, b, tmp_path / "out")
    assert live.is_dir() and not os.path.lexists(recycled)


@pytest.mark.parametrize("data", [
    {"pid": 99999999999999999999, "started": None, "aside": None},
    {"pid": 2 ** 31, "started": None, "aside": None},
    {"pid": -1, "started": None, "aside": None},
    {"pid": True, "started": None, "aside": None},
    {"pid": 123456789, "started": "yesterday", "aside": None},
    "[" * 100000,
    "1" * 5000,
    {"pid": 123456789, "started": None, "aside": "../../elsewhere"},
    {"pid": 123456789, "started": None, "aside": ".out.old-99999999999999999999-0a1b2c3d"},
], ids=["huge pid", "2**31", "negative", "true", "start a word", "deep JSON", "long", "aside leaves", "huge aside"])
def test_absurd_markers_and_names_crash_nothing_and_delete_nothing(models, tmp_path, data):
    a, b = models
    odd = marker(tmp_path / ".out.cocktail-99999999999999999999-abc", {"pid": 10 ** 30})
    bad = marker(tmp_path / ".out.cocktail-123-bad", data)
    (tmp_path / "elsewhere").mkdir()
    before = tree_hashes(odd, bad, tmp_path / "elsewhere")
    merges(a, b, tmp_path / "out")
    assert tree_hashes(odd, bad, tmp_path / "elsewhere") == before


def test_a_marker_that_is_a_link_or_a_fifo_is_not_a_marker(models, tmp_path):
    a, b = models
    real = marked_by_a_process_now_gone(tmp_path / "real")
    linked = tmp_path / ".out.cocktail-5-linked"
    (linked / "output").mkdir(parents=True)
    (linked / MARKER).symlink_to(real / MARKER)
    fifo = tmp_path / ".out.cocktail-6-fifo"
    (fifo / "output").mkdir(parents=True)
    os.mkfifo(fifo / MARKER)
    folder_link = tmp_path / ".out.cocktail-7-dirlink"
    folder_link.symlink_to(real)
    merges(a, b, tmp_path / "out")
    assert linked.is_dir() and fifo.is_dir() and folder_link.is_symlink() and (real / MARKER).is_file()
