"""Loading models the way transformers does, with cocktail's checks: the device, the tokenizer,
float32 weights, and the transformers class for each model type."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from cocktail.errors import InputError
from cocktail.recipe.choices import MODEL_TYPES

#: The transformers class that loads each model type (LM-Cocktail's choice).
AUTO_CLASSES = {"encoder": "AutoModel", "reranker": "AutoModelForSequenceClassification",
                "decoder": "AutoModelForCausalLM"}
assert tuple(AUTO_CLASSES) == MODEL_TYPES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "sentencepiece.bpe.model", "spiece.model", "spm.model")


def auto_class(model_type: str):
    """The transformers Auto class for ``model_type``."""
    import transformers

    if model_type not in AUTO_CLASSES:
        raise InputError(f"unknown model type {model_type!r} (choose from {', '.join(MODEL_TYPES)})")
    return getattr(transformers, AUTO_CLASSES[model_type])


def resolve_device(name: Optional[str]) -> torch.device:
    """``name`` as a torch device (default: cuda when present, else cpu); refused when not available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {name!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} asked for, but CUDA is not available here")
    return device


def float32_kwargs() -> dict:
    """``from_pretrained`` keyword for float32 weights (``dtype`` since transformers 5, ``torch_dtype`` before)."""
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}


def load_tokenizer(folder: Path, needed_for: str = "to score examples"):
    """The tokenizer saved in ``folder``; an :class:`InputError` when there is none (never a made-up one)."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer that maps every word to [UNK]
        raise InputError(f"{folder}: cannot load its tokenizer, needed {needed_for} (no tokenizer files: "
                         f"expected one of {', '.join(TOKENIZER_FILES[:3])}, ...)")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds when no tokenizer is there
        raise InputError(f"{folder}: cannot load its tokenizer, needed {needed_for} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def load_pretrained(path, model_type: str):
    """A saved folder loaded with the transformers class LM-Cocktail uses for ``model_type``."""
    return auto_class(model_type).from_pretrained(str(path))
