"""Fixtures of the hostile-input tests: two tiny BERTs to spoil, and ``refuse``, which runs the CLI
in-process and checks what every refusal promises."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_bert, run_in_process


def tree_hashes(*paths) -> dict[str, str]:
    """sha256 (and mode) of every file under ``paths`` (files or folders), symlinks by their target."""
    hashes = {}
    for root in map(Path, paths):
        if not os.path.lexists(root):
            continue
        items = [root] if not root.is_dir() or root.is_symlink() else [root, *sorted(root.rglob("*"))]
        for p in items:
            if p.is_symlink():
                hashes[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                hashes[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode:o}"
            elif p.is_dir():
                hashes[str(p)] = "dir"
    return hashes


def refuse(args, *, inputs=(), outputs=(), cwd=None, contains: str = ""):
    """Run ``cocktail ARGS`` and assert a refusal: exit 2, exactly one ``error:`` line on stderr (holding
    ``contains``), every input's bytes unchanged, no output (nor a temporary folder beside it)."""
    before = tree_hashes(*inputs)
    result = run_in_process(args, cwd)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" not in lines[0], result
    assert contains in lines[0], result
    assert tree_hashes(*inputs) == before, "an input changed"
    for out in map(Path, outputs):
        assert not os.path.lexists(out), f"{out} was written"
        if out.parent.is_dir():
            left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
            assert not left, f"left behind: {left}"
    return result


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """A and B of the issue: tiny random BertModels (hidden 32, 2 layers), seeds 0 and 1; copy before spoiling."""
    root = tmp_path_factory.mktemp("tiny")
    return make_bert(root / "A", seed=0), make_bert(root / "B", seed=1)


@pytest.fixture
def models(tiny_models, tmp_path) -> tuple[Path, Path]:
    """Fresh copies of A and B in this test's folder (``tmp_path/A``, ``tmp_path/B``)."""
    return tuple(Path(shutil.copytree(m, tmp_path / m.name)) for m in tiny_models)
