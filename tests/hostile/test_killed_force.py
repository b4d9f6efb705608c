"""``kill -9`` while ``--force`` replaces an output never loses the previous one: it survives until the
new one is in place, and the next run puts it back (issue 20, item 10). A real merge is killed by
SIGKILL at each moment of the replacement."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hostile.conftest import refuse, run_in_process, tree_hashes

REPO = str(Path(__file__).resolve().parents[2])

#: The step of OutputFolder.commit at whose start the merge is killed.
MOMENTS = {
    "after the old output was moved aside": "cocktail.io.output.OutputFolder._put_in_place",
    "while the old output is removed": "cocktail.io.output.rmtree",
}


def killed_merge(a, b, out, moment: str) -> None:
    """``cocktail merge ... --force`` in a subprocess that SIGKILLs itself at ``moment``."""
    where, name = MOMENTS[moment].rsplit(".", 1)
    module, owner = (where.rsplit(".", 1) if name == "_put_in_place" else (where, None))
    code = (f"import importlib, os, signal, sys\n"
            f"place = importlib.import_module({module!r})\n"
            + (f"place = getattr(place, {owner!r})\n" if owner else "")
            + f"setattr(place, {name!r}, lambda *a: os.kill(os.getpid(), signal.SIGKILL))\n"
            "from cocktail.cli import cli; cli.main(sys.argv[1:])")
    killed = subprocess.run([sys.executable, "-c", code, "merge", "--models", a, b, "--weights", "0.9", "0.1",
                             "-o", out, "--force", "--quiet"], env={**os.environ, "PYTHONPATH": REPO},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr


def replaced_cleanly(a, b, out: Path) -> None:
    """After the clean-up, ``--force`` replaces the output as usual and leaves nothing beside it."""
    result = run_in_process(["merge", "--models", a, b, "--weights", "0.3", "0.7", "-o", out, "--force", "--quiet"])
    assert result.returncode == 0, result
    assert "0.3" in (out / "cocktail_recipe.yaml").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["A", "B", "out"]


def test_killed_after_moving_the_old_output_aside_the_next_run_puts_it_back(models, tmp_path):
    a, b = models
    out = tmp_path / "out"
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    previous = {Path(p).relative_to(out).as_posix(): h for p, h in tree_hashes(out).items()}
    killed_merge(a, b, out, "after the old output was moved aside")
    assert not out.exists()  # the moment the issue describes: no out, the old one renamed beside it
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(aside) == 1 and {Path(p).relative_to(aside[0]).as_posix(): h
                                for p, h in tree_hashes(aside[0]).items()} == previous
    # the next run, even one that is then refused, first puts the previous output back
    refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], contains="already exists")
    assert {Path(p).relative_to(out).as_posix(): h for p, h in tree_hashes(out).items()} == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "out"]
    replaced_cleanly(a, b, out)


def test_killed_while_removing_the_old_output_the_next_run_finishes(models, tmp_path):
    a, b = models
    out = tmp_path / "out"
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    killed_merge(a, b, out, "while the old output is removed")
    assert "0.9" in (out / "cocktail_recipe.yaml").read_text()  # the new one is in place
    assert any(p.name.startswith(".out.old-") for p in tmp_path.iterdir())
    new = tree_hashes(out)
    refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], contains="already exists")
    assert tree_hashes(out) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "out"]
    replaced_cleanly(a, b, out)


def test_a_replaced_output_is_never_put_back(models, tmp_path):
    """Killed while removing the replaced output, then the new output deleted by its user: the next run
    removes what is left of the old one instead of putting it back in its place."""
    a, b = models
    out = tmp_path / "out"
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    killed_merge(a, b, out, "while the old output is removed")
    shutil.rmtree(out)
    result = run_in_process(["merge", "--models", a, b, "--weights", "0.3", "0.7", "-o", out, "--quiet"])
    assert result.returncode == 0, result
    assert "0.3" in (out / "cocktail_recipe.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "out"]
