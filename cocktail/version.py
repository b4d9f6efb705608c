__version__ = "0.1.0"

# The name on PyPI ("pip install cocktail-merge"): PyPI's `cocktail` is an unrelated project. The command
# and the import name stay `cocktail`.
DISTRIBUTION = "cocktail-merge"
PROJECT_PAGE = f"https://pypi.org/project/{DISTRIBUTION}/"  # where model cards point: this project itself


def install_hint(extra: str) -> str:
    """The pip command that adds an optional extra (``plot``, ``st``, ...) to this distribution."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
