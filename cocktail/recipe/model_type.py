"""Which of cocktail's model types a model is, read off its config.json; and a given type checked
against it.

The ``architectures`` a model was saved with say what it is: ``…ForSequenceClassification`` is a
cross-encoder (``reranker``), ``…ForCausalLM`` a causal LM (``decoder``; ``llm-reranker`` and
``llm-embedder`` build on one too), a bare decoder such as ``MistralModel`` an ``llm-embedder``, and
any other (``BertModel``, ``XLMRobertaModel``, ``…ForMaskedLM``) an ``encoder``. A bge-m3 folder is an
``encoder`` whose extra head files go with it. A config that names no architecture says nothing, and
any type is taken for it.
"""

from __future__ import annotations

from typing import Iterable, Optional

from cocktail.errors import InputError, option
from cocktail.recipe.choices import MODEL_TYPES

#: detected type -> the types a user may give for such a model
COMPATIBLE = {
    "encoder": ("encoder",),
    "reranker": ("reranker",),
    "decoder": ("decoder", "llm-reranker", "llm-embedder"),
    "llm-embedder": ("llm-embedder",),
}


def architecture(config: dict) -> Optional[str]:
    archs = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def detect(config: dict) -> Optional[str]:
    """The model type ``config`` describes, or ``None`` when it names no architecture."""
    arch = architecture(config)
    if arch is None:
        return None
    if arch.endswith("ForSequenceClassification"):
        return "reranker"
    if arch.endswith("ForCausalLM"):
        return "decoder"
    if arch.endswith("Model") and _decoder_only(config.get("model_type")):
        return "llm-embedder"
    return "encoder"


def _decoder_only(config_model_type) -> bool:
    """A family transformers builds causal LMs of and no masked LMs (llama, mistral, gemma2, qwen2, …)."""
    if not isinstance(config_model_type, str):
        return False
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return config_model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config_model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def settle(given: Optional[str], models: Iterable) -> str:
    """The model type to use for ``models`` (each with ``.source`` and ``.config``): ``given`` when it
    fits every model's config, the detected one when ``given`` is ``None`` (``encoder`` when no config
    says), and an :class:`~cocktail.errors.InputError` when they disagree."""
    if given is not None and given not in MODEL_TYPES:
        raise InputError(f"unknown model type {given!r} (choose from {', '.join(MODEL_TYPES)})")
    found = [(m.source, architecture(m.config), detect(m.config)) for m in models if m is not None]
    found = [f for f in found if f[2] is not None]
    if given is None:
        kinds = {kind for _, _, kind in found}
        if len(kinds) > 1:
            described = "; ".join(f"{source} is {_a(kind)} ({arch})" for source, arch, kind in found)
            raise InputError(f"the models are not of one type: {described}; merge models of one type "
                             f"(or give {option('model_type')} to say which)")
        return kinds.pop() if kinds else "encoder"
    for source, arch, kind in found:
        if given not in COMPATIBLE[kind]:
            raise InputError(f"{option('model_type')} {given} contradicts {source}: its config.json says "
                             f"{arch}, {_a(kind)} model (leave {option('model_type')} out to use the type the "
                             f"config says, or give one of: {', '.join(COMPATIBLE[kind])})")
    return given


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' or kind.startswith('llm') else 'a'} {kind}"
