"""The figure helpers: the Pareto front of a cloud of points, and PNGs written whole or not at all."""

from __future__ import annotations

import pytest
from conftest import assert_png

from cocktail.errors import InputError
from cocktail.io.figure import pareto_front, pyplot, save_png


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 1)]
    assert pareto_front(points) == [(1, 5), (2, 3), (4, 1)]  # lower is better on both
    assert pareto_front(points, x_lower=False, y_lower=False) == [(5, 1), (3, 4), (1, 5)]  # higher is better


def test_save_png_writes_the_file_whole_and_refuses_a_missing_folder(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert_png(save_png(fig, tmp_path / "f.png"))
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    fig, _ = plt.subplots()
    with pytest.raises(InputError, match="folder .* does not exist"):
        save_png(fig, tmp_path / "nowhere" / "f.png")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_plot_is_an_ordinary_file_under_the_users_umask(tmp_path, umask):
    """A plot gets the mode every other output file gets (0644 under umask 022), not mkstemp's 0600."""
    import os
    import stat

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    old = os.umask(umask)
    try:
        target = save_png(fig, tmp_path / "f.png")
        with open(tmp_path / "other.txt", "w") as f:  # any file the user's programs write
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE((tmp_path / "other.txt").stat().st_mode)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
