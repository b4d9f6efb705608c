"""A LoRA adapter folder as a model: its base with the adapter applied, one tensor at a time.

A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``) opens as
an :class:`AdapterCheckpoint`, a :class:`~cocktail.io.checkpoints.CheckpointLike` like a model folder:
it shows the base model's tensors, and ``read`` returns each one as PEFT's ``merge_and_unload`` would
leave it: ``W + s * B @ A`` for the modules the adapter targets (transposed for ``fan_in_fan_out``
layers such as GPT-2's ``Conv1D`` and for embeddings), ``s = lora_alpha / r`` (``/ sqrt(r)`` with
``use_rslora``; ``rank_pattern`` / ``alpha_pattern`` per module), ``lora_B`` biases added to the
base biases, and the tensors the adapter saves whole (``modules_to_save``, trained biases) in place of
the base's. Nothing is held but the tensor asked for and its two small LoRA factors.

The base is the adapter config's ``base_model_name_or_path`` (a local folder or a hub id in the local
cache) unless one is given. Adapter types and options cocktail does not apply (DoRA, LoHa, LoKr, IA3,
...) are refused with a message that names them: nothing is approximated. :func:`open_path` opens any
model path: an adapter folder, or a model as :meth:`Checkpoint.open` does.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cocktail.errors import InputError, few_names, quoted
from cocktail.io.checkpoints import TRANSFORMER, Checkpoint, TensorInfo, _open_weight_file, read_json, resolve
from cocktail.io.containment import inside
from cocktail.io.hashing import relative, sha256_file
from cocktail.io.patterns import compile_pattern

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
BASE_HINT = "give it: models[i].base in a recipe, --adapter-base on the command line, adapter_base= from Python"

#: PEFT adapter types, as people write them (only LORA is applied).
PEFT_TYPE_NAMES = {"LORA": "LoRA", "LOHA": "LoHa", "LOKR": "LoKr", "IA3": "IA3", "ADALORA": "AdaLoRA",
                   "BOFT": "BOFT", "OFT": "OFT", "VERA": "VeRA", "FOURIERFT": "FourierFT", "VBLORA": "VB-LoRA",
                   "PROMPT_TUNING": "prompt tuning", "PREFIX_TUNING": "prefix tuning", "P_TUNING": "P-tuning"}

#: LoRA options that change what the adapter computes beyond ``W + s * B @ A``: refused when set.
UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (use_dora)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QALoRA (use_qalora)",
    "megatron_config": "Megatron layers (megatron_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "kasa_config": "KaSA (kasa_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "velora_config": "VeLoRA (velora_config)",
}

LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<param>weight|bias)$"
                      r"|^(?P<emodule>.+)\.(?P<epart>lora_embedding_A|lora_embedding_B)$")


def adapter_folder(source: str | os.PathLike) -> Optional[Path]:
    """The folder of ``source`` when it is a PEFT adapter folder (local or cached hub id), else ``None``."""
    try:
        path = resolve(str(source))
    except InputError:
        return None
    return path if path.is_dir() and (path / ADAPTER_CONFIG).is_file() else None


def bases_for(models, adapter_base: Optional[str | os.PathLike]) -> list[Optional[str]]:
    """One adapter base per model: ``adapter_base`` for the LoRA adapter folders among ``models`` (paths;
    models in memory are not adapters), ``None`` for the rest; refused when none is an adapter."""
    if adapter_base is None:
        return [None] * len(models)
    bases = [str(adapter_base) if isinstance(m, (str, os.PathLike)) and adapter_folder(m) is not None else None
             for m in models]
    if not any(bases):
        raise InputError(f"an adapter base is given ({adapter_base}), but no model is a LoRA adapter folder "
                         f"(with {ADAPTER_CONFIG})")
    return bases


def open_path(source: str | os.PathLike, adapter_base: Optional[str | os.PathLike] = None):
    """Open a model path: an adapter folder as an :class:`AdapterCheckpoint` (on ``adapter_base``, else
    the base its config names), anything else as :meth:`Checkpoint.open` does."""
    folder = adapter_folder(source)
    if folder is not None:
        return AdapterCheckpoint.open(str(source), folder, None if adapter_base is None else str(adapter_base))
    if adapter_base is not None:
        raise InputError(f"{source}: a base model is given for it ({adapter_base}), but it is not a LoRA adapter "
                         f"folder (no {ADAPTER_CONFIG})")
    return Checkpoint.open(source)


@dataclass(frozen=True)
class LoraPatch:
    """One base tensor changed by the adapter: ``W + scale * delta`` and/or replaced by a saved tensor."""

    module: str  # the module path as PEFT names it (without ``base_model.model.``)
    a: Optional[str] = None  # adapter tensor names of the factors (``None``: no low-rank update)
    b: Optional[str] = None
    scale: float = 0.0
    transpose: bool = False  # fan_in_fan_out layers and embeddings: delta = (B @ A).T
    bias: bool = False  # add ``scale * lora_B.bias`` (this patch is a bias)
    replace: Optional[str] = None  # adapter tensor that replaces the base tensor


def _module_pattern(key: str):
    """PEFT's ``get_pattern_key`` matches ``(.*\\.)?(KEY)$`` at the start of a module path (the key matches
    its end, after a dot or from the start): the same pattern, compiled with RE2 (it cannot hang)."""
    return compile_pattern(rf"(.*\.)?({key})$")


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of the module path wins."""
    for key, value in (patterns or {}).items():
        if _module_pattern(key).match(module):
            return value
    return default


def _check_config(source: str, config: dict) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        name = PEFT_TYPE_NAMES.get(peft_type, peft_type or "unknown")
        raise InputError(f"{source}: a {name} adapter (peft_type {peft_type or 'missing'}); cocktail applies LoRA "
                         f"adapters only, not LoHa, LoKr, IA3, AdaLoRA, ... (merge it with PEFT first)")
    used = [label for key, label in UNSUPPORTED_OPTIONS.items() if config.get(key) not in (None, False, [], {})]
    if used:
        raise InputError(f"{source}: a LoRA adapter with {', '.join(used)}, which cocktail does not apply "
                         f"(only W + s * B @ A is); merge it with PEFT's merge_and_unload first")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not _positive(value):
            raise InputError(f"{source}: {ADAPTER_CONFIG} has {key}={value!r}; expected a positive number")
    for key in ("fan_in_fan_out", "use_rslora"):
        if not isinstance(config.get(key, False), bool):
            raise InputError(f"{source}: {ADAPTER_CONFIG} has {key}={config[key]!r}; expected true or false")
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise InputError(f"{source}: {ADAPTER_CONFIG} has a {key} that is not a mapping of module patterns")
        for pattern, value in patterns.items():
            if not _positive(value):
                raise InputError(f"{source}: {ADAPTER_CONFIG} {key}[{pattern!r}] is {value!r}; expected a positive "
                                 "number")
            try:
                _module_pattern(pattern)
            except InputError as exc:
                raise InputError(f"{source}: {ADAPTER_CONFIG} {key} has a pattern cocktail cannot match, "
                                 f"{quoted(pattern)} ({exc})") from None


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


class AdapterCheckpoint:
    """A LoRA adapter applied to its base, read one tensor at a time (see the module docstring).

    ``source`` is the adapter as the user named it; ``root``, ``config`` and ``components`` are the
    base's (the output takes its config, tokenizer and code files from the base).
    """

    def __init__(self, source: str, folder: Path, adapter_config: dict, base: Checkpoint, base_source: str,
                 base_from: str, weights, patches: dict[str, LoraPatch]):
        self.source = source
        self.folder = folder
        self.adapter_config = adapter_config
        self.base = base
        self.base_source = base_source  # the base as resolved (absolute path or hub id)
        self.base_from = base_from  # "adapter_config.json" or "given"
        self._weights = weights
        self.patches = patches
        self.config = base.config
        self.components = base.components
        self.sentence_transformers = base.sentence_transformers

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, source: str, folder: Path, base: Optional[str] = None) -> "AdapterCheckpoint":
        config = read_json(folder / ADAPTER_CONFIG, dict, "a JSON object (a PEFT adapter config)")
        _check_config(source, config)
        base_from = "given" if base is not None else ADAPTER_CONFIG
        if base is None:
            base = config.get("base_model_name_or_path")
            if not isinstance(base, str) or not base.strip():
                raise InputError(f"{source}: its {ADAPTER_CONFIG} names no base model (base_model_name_or_path); "
                                 f"{BASE_HINT}")
        if adapter_folder(base) is not None:
            raise InputError(f"{source}: its base {base} is itself an adapter; give the model both were trained on")
        try:
            base_checkpoint = Checkpoint.open(base)
        except InputError as exc:
            raise InputError(f"{source}: its base model ({base}, from {base_from}) cannot be opened: {exc}"
                             + ("" if base_from == "given" else f"; {BASE_HINT}")) from None
        base_source = str(Path(base).expanduser().absolute()) if Path(base).expanduser().exists() else base
        weights_path = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()), None)
        try:
            if weights_path is None:
                raise InputError(f"{source}: no adapter weights (expected {' or '.join(ADAPTER_WEIGHTS)})")
            weights = _open_weight_file(inside(folder, weights_path.name, "adapter weights", folder))
            patches = _plan_patches(source, config, weights.infos(), base_checkpoint.infos(TRANSFORMER))
        except BaseException:
            base_checkpoint.close()
            raise
        return cls(source, folder, config, base_checkpoint, base_source, base_from, weights, patches)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source

    @property
    def root(self) -> Path:
        return self.base.root

    @property
    def model_type(self) -> Optional[str]:
        return self.base.model_type

    @property
    def architecture(self) -> Optional[str]:
        return self.base.architecture

    @property
    def rank(self) -> int:
        return int(self.adapter_config["r"])

    @property
    def layout(self) -> str:
        return f"LoRA adapter (r={self.rank}) on {self.base.layout}"

    def weight_files(self) -> list[Path]:
        return [self._weights.path] + self.base.weight_files()

    def named_weight_files(self) -> dict[str, Path]:
        """Every file the merged tensors come from, by the name provenance records: the adapter's files
        by their path in the adapter folder, the base's under ``base/``."""
        named = {relative(self._weights.path, self.folder): self._weights.path}
        for path in self.base.weight_files():
            named[f"base/{relative(path, self.base.root)}"] = path
        return named

    def content_hash(self) -> dict[str, str]:
        return {name: sha256_file(path) for name, path in self.named_weight_files().items()}

    def infos(self, component: str = TRANSFORMER) -> dict[str, TensorInfo]:
        return self.base.infos(component)

    def describe(self) -> dict:
        """What ``cocktail inspect`` shows of the adapter."""
        config = self.adapter_config
        low_rank = sorted({p.module for p in self.patches.values() if p.a is not None})
        replaced = sorted(name for name, p in self.patches.items() if p.replace is not None)
        targets = config.get("target_modules")
        return {
            "base": self.base_source, "base_from": self.base_from, "r": self.rank,
            "lora_alpha": config.get("lora_alpha"), "use_rslora": bool(config.get("use_rslora")),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "rank_pattern": config.get("rank_pattern") or {}, "alpha_pattern": config.get("alpha_pattern") or {},
            "lora_modules": len(low_rank), "replaced_tensors": replaced,
            "files": [relative(self._weights.path, self.folder)],
        }

    # -- reading ---------------------------------------------------------------------------------
    def read(self, component: str, name: str) -> torch.Tensor:
        tensor = self.base.read(component, name)
        patch = self.patches.get(name) if component == TRANSFORMER else None
        if patch is None:
            return tensor
        dtype = tensor.dtype
        merged = tensor.to(torch.float32)
        if patch.replace is not None:
            merged = self._weights.read(patch.replace).to(torch.float32)
        if patch.bias:
            merged = merged + self._weights.read(patch.b).to(torch.float32) * patch.scale
        elif patch.a is not None:
            a = self._weights.read(patch.a).to(torch.float32)
            b = self._weights.read(patch.b).to(torch.float32)
            delta = b @ a
            if patch.transpose:
                delta = delta.T
            merged = merged + delta * patch.scale  # PEFT's order: (B @ A) * scaling, then added
        return merged.to(dtype)

    def close(self) -> None:
        self._weights.close()
        self.base.close()

    def __enter__(self) -> "AdapterCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AdapterCheckpoint({self.source!r}, {self.layout})"


# -- which base tensor each adapter tensor changes --------------------------------------------------


def _base_name_finder(base_names):
    """``find(name)``: the base tensor a PEFT name means, allowing for a base-model prefix (``bert.``,
    ``model.``) on either side: a fine-tune of ``BertForSequenceClassification`` names
    ``bert.encoder...``, a base saved from ``BertModel`` has ``encoder...``."""
    names = set(base_names)
    stripped: dict[str, list[str]] = {}
    for name in names:
        if "." in name:
            stripped.setdefault(name.split(".", 1)[1], []).append(name)

    def find(name: str) -> Optional[str]:
        if name in names:
            return name
        if "." in name and name.split(".", 1)[1] in names:
            return name.split(".", 1)[1]
        found = stripped.get(name, [])
        return found[0] if len(found) == 1 else None

    return find


def _plan_patches(source: str, config: dict, adapter_infos: dict[str, TensorInfo],
                  base_infos: dict[str, TensorInfo]) -> dict[str, LoraPatch]:
    """``{base tensor name: patch}`` for every tensor of the adapter file, every shape checked."""
    find = _base_name_finder(base_infos)
    factors: dict[str, dict[str, str]] = {}  # module -> {"A": name, "B": name, "bias": name, "kind": ...}
    patches: dict[str, LoraPatch] = {}
    unmatched: list[str] = []
    for key, info in adapter_infos.items():
        if not info.dtype.is_floating_point:
            raise InputError(f"{source}: adapter tensor {key} is {info.dtype}, not a float tensor")
        short = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if "lora_magnitude_vector" in short:
            raise InputError(f"{source}: holds DoRA magnitudes ({key}); cocktail does not apply DoRA")
        match = LORA_KEY.match(short)
        if match is None:
            target = find(short.replace(".base_layer.", "."))
            if target is None:
                unmatched.append(key)
                continue
            if adapter_infos[key].shape != base_infos[target].shape:
                raise InputError(f"{source}: {key} has shape {list(adapter_infos[key].shape)} but replaces "
                                 f"{target} of shape {list(base_infos[target].shape)} in the base")
            patches[target] = LoraPatch(short, replace=key)
            continue
        module = match.group("module") or match.group("emodule")
        part = match.group("part") or match.group("epart")
        slot = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "A", "lora_embedding_B": "B"}[part]
        entry = factors.setdefault(module, {"kind": "embedding" if match.group("epart") else "linear"})
        entry["bias" if match.group("param") == "bias" else slot] = key
    if unmatched:
        raise InputError(f"{source}: adapter tensors that match no tensor of the base model: {few_names(unmatched)} "
                         f"(is the base right? {BASE_HINT})")
    r_default, alpha_default = config["r"], config["lora_alpha"]
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    for module, entry in factors.items():
        if "A" not in entry or "B" not in entry:
            raise InputError(f"{source}: LoRA module {module} has only one of its two factors (A and B)")
        a, b = adapter_infos[entry["A"]], adapter_infos[entry["B"]]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise InputError(f"{source}: LoRA module {module} is not a linear or embedding layer (factor shapes "
                             f"{list(a.shape)}, {list(b.shape)}); cocktail does not apply LoRA on convolutions")
        r = _pattern_value(config.get("rank_pattern"), module, r_default)
        alpha = _pattern_value(config.get("alpha_pattern"), module, alpha_default)
        if a.shape[0] != r or b.shape[1] != r:
            raise InputError(f"{source}: LoRA module {module} has factors of rank {a.shape[0]} and {b.shape[1]}, "
                             f"but its config says r={r}")
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        transpose = entry["kind"] == "embedding" or fan_in_fan_out
        target = find(f"{module}.weight")
        if target is None:
            raise InputError(f"{source}: LoRA module {module} changes {module}.weight, which the base model does "
                             f"not have (is the base right? {BASE_HINT})")
        shape = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
        if tuple(base_infos[target].shape) != shape:
            raise InputError(f"{source}: LoRA module {module} makes an update of shape {list(shape)} for {target}, "
                             f"which is {list(base_infos[target].shape)} in the base")
        patches[target] = LoraPatch(module, a=entry["A"], b=entry["B"], scale=scale, transpose=transpose,
                                    replace=patches[target].replace if target in patches else None)
        if "bias" in entry:
            bias = find(f"{module}.bias")
            if bias is None:
                raise InputError(f"{source}: LoRA module {module} has a lora_B bias but the base's layer has none")
            if tuple(base_infos[bias].shape) != tuple(adapter_infos[entry["bias"]].shape):
                raise InputError(f"{source}: the lora_B bias of {module} does not fit {bias} of the base")
            patches[bias] = LoraPatch(module, b=entry["bias"], scale=scale, bias=True,
                                      replace=patches[bias].replace if bias in patches else None)
    return patches
