"""An output path that is a symlink is refused, whatever it points to, and the clean-up of a replaced
output never follows a link (issue 20, item 3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostile.conftest import refuse, run_in_process


def elsewhere(tmp_path: Path, kind: str) -> Path:
    """The folder the link points to: someone's work, an empty folder, or a previous merge."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    if kind == "work":
        (folder / "locked").mkdir()
        (folder / "locked" / "notes.txt").write_text("mine")
        (folder / "locked").chmod(0o500)  # a clean-up that follows the link would chmod it
    elif kind == "previous merge":
        (folder / "cocktail_recipe.yaml").write_text("models: []\n")
    return folder


@pytest.mark.parametrize("kind", ["work", "empty", "previous merge"])
@pytest.mark.parametrize("force", [True, False])
def test_an_output_that_is_a_symlink_is_refused(models, tmp_path, kind, force):
    a, b = models
    target = elsewhere(tmp_path, kind)
    link = tmp_path / "out"
    link.symlink_to(target)
    try:
        refuse(["merge", "--models", a, b, "-o", link, "--quiet"] + (["--force"] if force else []),
               inputs=[a, b, target], contains="symlink")
        assert os.readlink(link) == str(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "elsewhere", "out"]  # no .out.old-* left
    finally:
        if (target / "locked").exists():
            (target / "locked").chmod(0o700)


def test_a_previous_output_holding_a_link_out_is_replaced_without_following_it(models, tmp_path):
    a, b = models
    out = tmp_path / "out"
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    target = elsewhere(tmp_path, "work")
    (out / "link").symlink_to(target)
    try:
        before = oct((target / "locked").stat().st_mode)
        result = run_in_process(["merge", "--models", a, b, "-o", out, "--force", "--quiet"])
        assert result.returncode == 0, result
        assert oct((target / "locked").stat().st_mode) == before and (target / "locked" / "notes.txt").exists()
        assert not os.path.lexists(out / "link")
    finally:
        (target / "locked").chmod(0o700)
