"""The search's frontier, drawn: every merge ``--search`` evaluated as (keep loss, target loss), the
input models, the softmax start and the chosen answer, with the keep-loss limit and the Pareto front
of the evaluated merges (``cocktail weights --search --keep ... --plot frontier.png``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from cocktail.errors import InputError, option
from cocktail.io.figure import pareto_front, pyplot, save_png


def frontier_points(result: dict) -> dict:
    """The points of the plot, from a few-shot result's ``to_dict()``: ``inputs`` (name, keep loss,
    loss), ``merges`` (every evaluated merge), ``softmax`` and ``chosen``."""
    search = result.get("search")
    if not search or result.get("keep_losses") is None:
        raise InputError(f"the frontier plot needs {option('search')} and {option('keep')} (it draws keep loss "
                         "against target loss)")
    inputs = [{"model": m, "keep_loss": k, "loss": t}
              for m, k, t in zip(result["models"], result["keep_losses"], result["losses"])]
    return {"inputs": inputs, "merges": [p for p in search["points"] if p.get("keep_loss") is not None],
            "softmax": {"keep_loss": search["start_keep_loss"], "loss": search["start_loss"]},
            "chosen": {"keep_loss": search["keep_loss"], "loss": search["loss"]},
            "keep_limit": (search.get("objective") or {}).get("keep_limit")}


def plot_search_frontier(result: dict, path: Union[str, os.PathLike]) -> Path:
    """Draw the search of ``result`` (a few-shot result's ``to_dict()``) into the PNG file ``path``."""
    points = frontier_points(result)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    merges = points["merges"]
    for allowed, style in ((True, dict(color="tab:blue", label="merges evaluated")),
                           (False, dict(color="tab:gray", label="merges over the keep limit"))):
        chosen = [p for p in merges if bool(p.get("allowed", True)) == allowed]
        if chosen:
            ax.scatter([p["keep_loss"] for p in chosen], [p["loss"] for p in chosen], s=18, alpha=0.7, **style)
    front = pareto_front([(p["keep_loss"], p["loss"]) for p in merges]
                         + [(p["keep_loss"], p["loss"]) for p in points["inputs"]])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", alpha=0.4,
                label="Pareto front")
    for item in points["inputs"]:
        ax.scatter([item["keep_loss"]], [item["loss"]], marker="s", s=60, color="tab:orange", zorder=3)
        ax.annotate(Path(str(item["model"])).name or str(item["model"]), (item["keep_loss"], item["loss"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter([points["softmax"]["keep_loss"]], [points["softmax"]["loss"]], marker="^", s=80, color="tab:purple",
               zorder=4, label="softmax weights")
    ax.scatter([points["chosen"]["keep_loss"]], [points["chosen"]["loss"]], marker="*", s=180, color="tab:red",
               zorder=5, label="chosen")
    if points["keep_limit"] is not None:
        ax.axvline(points["keep_limit"], color="tab:red", linestyle="--", alpha=0.5, label="keep loss limit")
    ax.set_xlabel("keep loss (lower keeps more)")
    ax.set_ylabel("target loss (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("cocktail weights --search: target loss against keep loss")
    fig.tight_layout()
    return save_png(fig, path)
