"""``--verify``: check that a recipe's inputs are still the files it was made from.

A merged folder's ``cocktail_recipe.yaml`` records, under ``provenance.inputs``, the sha256 of every
weight file of every input (the models in order, then the base model). Before a rerun, each current
weight file is hashed again and compared; any change (a different hash, a missing or a new weight
file) refuses the run with a message that names the file.
"""

from __future__ import annotations

from pathlib import Path

from cocktail.io.provenance import sha256_file
from cocktail.errors import InputChangedError, InputError


def _inputs_of(recipe) -> list[str]:
    return [m.path for m in recipe.models] + ([recipe.base_model] if recipe.base_model else [])


def verify_inputs(recipe) -> int:
    """Hash the recipe's current input weight files and compare with its provenance.

    Returns the number of files checked. Raises :class:`InputChangedError` naming the first file that
    differs, and :class:`~cocktail.errors.InputError` when the recipe has no provenance to check against.
    """
    from cocktail.io.checkpoints import Checkpoint

    provenance = recipe.provenance or {}
    recorded = provenance.get("inputs")
    if not isinstance(recorded, list) or not recorded:
        raise InputError("--verify needs a recipe with provenance (the cocktail_recipe.yaml written into a "
                         "merged folder); this recipe records no input hashes")
    sources = _inputs_of(recipe)
    if len(recorded) != len(sources):
        raise InputChangedError(f"the recipe's provenance records {len(recorded)} inputs but it merges "
                                f"{len(sources)} (models and base model): cannot verify")
    checked = 0
    for source, record in zip(sources, recorded):
        hashes = record.get("sha256") if isinstance(record, dict) else None
        if not isinstance(hashes, dict) or not hashes:
            raise InputError(f"the recipe's provenance has no sha256 for input {source}: cannot verify")
        with Checkpoint.open(source) as checkpoint:
            root = checkpoint.root
            current = {_relative(p, root) for p in checkpoint.weight_files()}
        for name in sorted(current - set(hashes)):
            raise InputChangedError(f"input changed since the recipe was written: {root / name} is a weight "
                                    f"file the recipe does not record")
        for name, expected in hashes.items():
            path = root / name
            if not path.is_file():
                raise InputChangedError(f"input changed since the recipe was written: {path} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise InputChangedError(f"input changed since the recipe was written: {path} has sha256 "
                                        f"{actual[:12]}..., the recipe recorded {str(expected)[:12]}...")
            checked += 1
    return checked


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name
