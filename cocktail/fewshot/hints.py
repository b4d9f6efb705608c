"""What a user should hear about few-shot weights that are computed fine but may not mean much:
weights the temperature flattens to uniform, a search checked on too few held-out examples, a keep
tolerance wider than the inputs' keep losses are apart."""

from __future__ import annotations

from typing import Optional, Sequence

from cocktail.errors import option

#: every weight within this of 1/n: the examples made no difference worth a merge
NEAR_UNIFORM = 0.01
#: fewer held-out examples than this cannot tell a better merge from noise
MIN_TRUSTED_HOLDOUT = 5


def near_uniform_note(losses: Sequence[float], weights: Sequence[float], temperature: float) -> Optional[str]:
    """A hint when ``softmax(-loss / temperature)`` is close to equal weights."""
    n = len(weights)
    if n < 2 or any(abs(w - 1 / n) > NEAR_UNIFORM for w in weights):
        return None
    return (f"the few-shot weights are nearly uniform ({', '.join(f'{w:.3f}' for w in weights)}): the losses "
            f"({', '.join(f'{x:.3g}' for x in losses)}) differ by far less than the temperature {temperature:g}; "
            f"a lower {option('temperature')} (e.g. {_lower(losses)}) or {option('search')} lets the examples decide")


def _lower(losses: Sequence[float]) -> str:
    """A temperature that turns the loss spread into a clear preference (weights ~ e^-3 apart)."""
    spread = max(losses) - min(losses)
    return f"{spread / 3:.2g}" if spread > 0 else "0.01"


def small_holdout_note(count: int) -> Optional[str]:
    if 0 < count < MIN_TRUSTED_HOLDOUT:
        return (f"only {count} example{'' if count == 1 else 's'} kept aside to check the search: too few to trust "
                f"its holdout loss (use more examples, {MIN_TRUSTED_HOLDOUT * 5} or so)")
    return None


def loose_tolerance_note(keep_losses: Sequence[float], tolerance: float) -> Optional[str]:
    """A hint when the keep limit (best input's keep loss + ``tolerance``) lets in every input: the keep
    set then holds back only merges worse on it than every input, and the search walks to the target."""
    if len(keep_losses) < 2:
        return None
    best, worst = min(keep_losses), max(keep_losses)
    spread = worst - best
    if spread <= 0 or tolerance < spread:
        return None
    return (f"the keep tolerance {tolerance:g} lets in every input's keep loss ({best:.4g} to {worst:.4g}): it holds "
            f"back only merges worse on the keep set than every input; a {option('keep_tolerance')} below "
            f"{spread:.2g} (e.g. {spread / 4:.2g}) makes the search trade target loss for keep loss")
