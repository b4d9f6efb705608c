"""Loading models the way transformers does, with cocktail's checks: the device, the tokenizer,
the dtype of the weights, and the transformers class for each model type (where the weights of a
scored model live, spread by a device map or not, is :mod:`cocktail.modeling.placement`).

No code from a model folder runs unless the user asks for it: every config, tokenizer and model is
loaded with an explicit ``trust_remote_code`` (``False`` by default, so transformers never asks on
stdin), and a folder that needs its own code is refused with a message naming the flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from cocktail.errors import InputError, quoted
from cocktail.io.containment import check_files
from cocktail.io.sidefiles import SIDE_SUFFIXES
from cocktail.recipe.choices import MODEL_TYPES

#: The transformers class that loads each model type (LM-Cocktail's choice; FlagEmbedding's for the LLM ones).
AUTO_CLASSES = {"encoder": "AutoModel", "reranker": "AutoModelForSequenceClassification",
                "decoder": "AutoModelForCausalLM", "llm-embedder": "AutoModel", "llm-reranker": "AutoModelForCausalLM"}
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
        raise InputError(f"unknown device {quoted(name)} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name} asked for, but MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):  # meta holds no values; others cocktail never ran on
        raise InputError(f"device {name} cannot run the models: use cpu, cuda or cuda:N (or mps)")
    return device


def dtype_kwargs(dtype: torch.dtype = torch.float32) -> dict:
    """``from_pretrained`` / ``from_config`` keyword for weights in ``dtype`` (``dtype`` since transformers 5,
    ``torch_dtype`` before)."""
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


REMOTE_CODE_HINT = "pass --trust-remote-code (trust_remote_code=True from Python) to run it"


def needs_remote_code(exc: BaseException) -> bool:
    """Whether transformers refused ``exc`` because the folder's own code would have to run."""
    return "trust_remote_code" in str(exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_config(folder: Path, trust_remote_code: bool = False):
    """The transformers config saved in ``folder`` (its own code runs only with ``trust_remote_code``)."""
    from transformers import AutoConfig

    check_files(Path(folder), SIDE_SUFFIXES)  # what transformers reads stays inside and is regular
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many kinds for unreadable configs
        if needs_remote_code(exc):
            raise InputError(f"{folder}: its config needs the code in the model folder; {REMOTE_CODE_HINT}") from None
        raise InputError(f"{folder}: cannot read the model config ({_first_line(exc)})") from None


EMBEDDING_NAMES = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight", "tok_embeddings.weight",
                   "shared.weight")


def embedding_rows(plan) -> Optional[int]:
    """Rows of the plan's input embedding matrix (how many token ids the model knows), if it has one."""
    for planned in plan.tensors:
        if planned.component == "transformer" and planned.name.endswith(EMBEDDING_NAMES) and len(planned.shape) == 2:
            return planned.shape[0]
    return None


def load_tokenizer(folder: Path, needed_for: str = "to score examples", trust_remote_code: bool = False,
                   rows: Optional[int] = None):
    """The tokenizer saved in ``folder``; an :class:`InputError` when there is none (never a made-up one),
    or when its vocabulary is larger than the model's embedding ``rows`` (its ids would fall off the matrix)."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer that maps every word to [UNK]
        raise InputError(f"{folder}: cannot load its tokenizer, needed {needed_for} (no tokenizer files: "
                         f"expected one of {', '.join(TOKENIZER_FILES[:3])}, ...)")
    check_files(Path(folder), SIDE_SUFFIXES)  # what transformers reads stays inside and is regular
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many kinds when no tokenizer is there
        if needs_remote_code(exc):
            raise InputError(f"{folder}: its tokenizer needs the code in the model folder; {REMOTE_CODE_HINT}") from None
        raise InputError(f"{folder}: cannot load its tokenizer, needed {needed_for} ({_first_line(exc)})") from None
    vocabulary = getattr(tokenizer, "vocab_size", None)  # without added tokens, which a model may leave unused
    if rows is not None and isinstance(vocabulary, int) and vocabulary > rows:
        raise InputError(f"{folder}: its tokenizer has a vocabulary of {vocabulary} tokens, but the model's "
                         f"embeddings have {rows} rows: token ids from {rows} on have no embedding "
                         f"(a tokenizer of another model?)")
    return tokenizer


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the pad token, else EOS (decoders often have no pad token), else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def build_model(config, model_type: str, source: str, trust_remote_code: bool = False,
                dtype: torch.dtype = torch.float32):
    """An empty model of ``model_type`` for ``config``, its parameters in ``dtype`` (filled by the caller)."""
    try:
        return auto_class(model_type).from_config(config, trust_remote_code=trust_remote_code, **dtype_kwargs(dtype))
    except Exception as exc:
        if needs_remote_code(exc):
            raise InputError(f"{source}: its model needs the code in the model folder; {REMOTE_CODE_HINT}") from None
        raise InputError(f"{source}: cannot build a {model_type} model of type "
                         f"{getattr(config, 'model_type', None)!r} ({_first_line(exc)})") from None


def load_pretrained(path, model_type: str, trust_remote_code: bool = False):
    """A saved folder loaded with the transformers class LM-Cocktail uses for ``model_type``."""
    try:
        return auto_class(model_type).from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if needs_remote_code(exc):
            raise InputError(f"{path}: this model needs the code in its folder; {REMOTE_CODE_HINT}") from None
        raise
