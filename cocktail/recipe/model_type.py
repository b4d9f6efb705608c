"""Which of cocktail's model types a model is, read off its config.json; and a given type checked
against it.

The ``architectures`` a model was saved with say what it is: ``…ForSequenceClassification`` is a
cross-encoder (``reranker``), ``…ForCausalLM`` a causal LM (``decoder``; ``llm-reranker`` and
``llm-embedder`` build on one too), a bare decoder such as ``MistralModel`` an ``llm-embedder``, and
any other (``BertModel``, ``XLMRobertaModel``, ``…ForMaskedLM``) an ``encoder``. A bge-m3 folder is an
``encoder`` whose extra head files go with it. A config that names no architecture says nothing, and
any type is taken for it, as for a model of custom code whose class name says neither.

Where the class name and the family decide it (BERT, XLM-R and the other encoder families, the common
decoders), the type is read without importing transformers, which takes longer than merging a small
model; other names are looked up in transformers' tables.
"""

from __future__ import annotations

from typing import Optional

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


# What the class names alone decide, without importing transformers (1.3 s of a small merge): the
# families transformers has long known, with the prefix of their class names; ``tests/recipe/
# test_model_type.py`` checks every answer these give against transformers' own tables.
ENCODER_FAMILIES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "distilbert": "DistilBert",
                    "electra": "Electra", "deberta": "Deberta", "deberta-v2": "DebertaV2", "mpnet": "MPNet",
                    "camembert": "Camembert", "albert": "Albert"}
ENCODER_HEADS = ("Model", "ForMaskedLM", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
                 "ForPreTraining")
BARE_DECODERS = {"llama": "LlamaModel", "mistral": "MistralModel", "qwen2": "Qwen2Model", "gemma": "GemmaModel",
                 "gemma2": "Gemma2Model", "gpt2": "GPT2Model"}
CAUSAL_LM_HEADS = {"GPT2LMHeadModel", "OpenAIGPTLMHeadModel", "BertLMHeadModel", "CTRLLMHeadModel", "XLNetLMHeadModel",
                   "XLMWithLMHeadModel"}  # causal LMs whose names do not end in ForCausalLM


def detect(config: dict) -> Optional[str]:
    """The model type ``config`` describes, or ``None`` when it names no architecture."""
    arch = architecture(config)
    if arch is None:
        return None
    family = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    return detect_by_name(arch, family) or detect_with_transformers(arch, family)


def detect_by_name(arch: str, family: Optional[str]) -> Optional[str]:
    """The type the class name ``arch`` of a model of ``family`` (config.json's ``model_type``) decides
    on its own, or ``None`` when transformers' tables must be asked."""
    if arch.endswith("ForSequenceClassification"):
        return "reranker"
    if arch.endswith("ForCausalLM") or arch in CAUSAL_LM_HEADS:
        return "decoder"
    if family in ENCODER_FAMILIES and arch in {ENCODER_FAMILIES[family] + head for head in ENCODER_HEADS}:
        return "encoder"
    if family in BARE_DECODERS and arch == BARE_DECODERS[family]:  # the bare model: an embedder's
        return "llm-embedder"
    return None


def detect_with_transformers(arch: str, family: Optional[str]) -> Optional[str]:
    """The type of ``arch`` (of ``family``) by transformers' tables of model classes."""
    from transformers.models.auto import modeling_auto as auto

    if arch.endswith("ForSequenceClassification"):
        return "reranker"
    causal_lms = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if arch.endswith("ForCausalLM") or arch in causal_lms:  # GPT2LMHeadModel is one too
        return "decoder"
    if family not in auto.MODEL_MAPPING_NAMES:
        return None  # a family transformers does not know (custom code): its names say nothing more
    decoder_only = family in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and family not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if decoder_only and arch == auto.MODEL_MAPPING_NAMES.get(family, arch):  # the bare model: an embedder's
        return "llm-embedder"
    return "encoder"


def settle(given: Optional[str], first) -> str:
    """The model type of a merge whose output is shaped like ``first`` (a model with ``.source`` and
    ``.config``: its config.json and side files go to the output): ``given`` when that config does not
    contradict it, else an :class:`~cocktail.errors.InputError`; the type the config says when ``given``
    is ``None`` (``encoder`` when it says none). The other models need only fit the first one's tensors
    (an encoder merges with the encoder inside a classifier)."""
    if given is not None and given not in MODEL_TYPES:
        raise InputError(f"unknown model type {given!r} (choose from {', '.join(MODEL_TYPES)})")
    kind = detect(first.config) if first is not None else None
    if given is None:
        return kind or "encoder"
    if kind is not None and given not in COMPATIBLE[kind]:
        raise InputError(f"{option('model_type')} {given} contradicts {first.source}: its config.json says "
                         f"{architecture(first.config)}, {_a(kind)} model (leave {option('model_type')} out to "
                         f"use the type the config says, or give one of: {', '.join(COMPATIBLE[kind])})")
    return given


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' or kind.startswith('llm') else 'a'} {kind}"
