"""Models already in memory as merge inputs: ``torch.nn.Module``s and state dicts.

:class:`MemoryCheckpoint` is a :class:`~cocktail.io.checkpoints.CheckpointLike`, as a folder's
:class:`~cocktail.io.checkpoints.Checkpoint` is, so the plan,
the methods and the writer treat a loaded model exactly like a folder on disk. It holds references
to the live tensors (no copy of the model is made) and ``read`` returns one tensor at a time,
detached and on the CPU; nothing here ever writes into an input.

A module shows the tensors its ``save_pretrained`` (transformers) or ``save`` (sentence-transformers)
would write, under the same names and in the same order, so merging a loaded model writes the same
bytes as merging the folder it was saved to. :func:`open_any` opens any input: a path or hub id (a
:class:`Checkpoint`), a module or a state dict.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch

from cocktail.errors import InputError, quoted
from cocktail.io import safetensors_format as st_format
from cocktail.io import sidefiles
from cocktail.io.adapters import AdapterCheckpoint, open_path
from cocktail.io.checkpoints import TRANSFORMER, Checkpoint, TensorInfo

LAYOUT = "in memory"


def is_module(value: Any) -> bool:
    """A loaded model (any ``torch.nn.Module``)."""
    return isinstance(value, torch.nn.Module)


def is_state_dict(value: Any) -> bool:
    """A mapping of names to tensors (checked entry by entry when opened)."""
    return isinstance(value, Mapping) and not isinstance(value, (str, bytes))


def is_path(value: Any) -> bool:
    """A folder, file or hub id."""
    return isinstance(value, (str, os.PathLike))


def describe(value: Any) -> str:
    """How an input is named in messages and in the recorded recipe."""
    if is_path(value):
        return str(value)
    if is_module(value):
        return f"<in memory: {type(unwrap(value)).__name__}>"
    return "<in memory: state dict>"


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``torch.compile`` / DDP wrappers (their state dicts carry extra prefixes)."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if inner is None and type(module).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


class MemoryComponent:
    """One set of in-memory weights (the transformer, or a sentence-transformers module like Dense)."""

    layout = LAYOUT
    files: list = []

    def __init__(self, key: str, rel_dir: str, tensors: dict[str, torch.Tensor], module_path: Optional[str] = None):
        self.key = key
        self.rel_dir = rel_dir
        self.tensors = tensors  # name -> live tensor, in the order a safetensors file would hold them
        self.module_path = module_path  # where these weights live inside the module (for rebuilding it)

    def infos(self) -> dict[str, TensorInfo]:
        return {name: TensorInfo(t.dtype, tuple(t.shape)) for name, t in self.tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        tensor = self.tensors[name].detach()
        return tensor if tensor.device.type == "cpu" else tensor.to("cpu")

    def paths(self) -> list[Path]:
        return []


class MemoryCheckpoint:
    """A model in memory, a :class:`~cocktail.io.checkpoints.CheckpointLike` as a folder's ``Checkpoint`` is.

    ``root`` is a temporary folder holding the files the model can describe itself with (config,
    tokenizer, sentence-transformers files); it is written the first time it is asked for (only when
    an output folder is written) and removed by :meth:`close`.
    """

    def __init__(self, source: str, config: dict, components: dict[str, MemoryComponent],
                 sentence_transformers: bool = False, module: Optional[torch.nn.Module] = None,
                 write_side_files: Optional[Callable[[Path], None]] = None):
        for component in components.values():
            for name, tensor in component.tensors.items():
                _check_values(source, name, tensor)
        self.source = source
        self.config = config
        self.components = components
        self.sentence_transformers = sentence_transformers
        self.module = module
        self.model_type_hint: Optional[str] = None
        self._write_side_files = write_side_files
        self._root: Optional[Path] = None

    # -- facts -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source

    @property
    def model_type(self) -> Optional[str]:
        return self.config.get("model_type") or self.model_type_hint

    @property
    def architecture(self) -> Optional[str]:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    @property
    def layout(self) -> str:
        return f"sentence-transformers, {LAYOUT}" if self.sentence_transformers else LAYOUT

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="cocktail-memory-"))
            if self._write_side_files is not None:
                try:
                    self._write_side_files(self._root)
                except Exception as exc:
                    raise InputError(f"{self.source}: cannot write its config and tokenizer files ({exc})") from None
        return self._root

    def weight_files(self) -> list[Path]:
        return []

    def infos(self, component: str = TRANSFORMER) -> dict[str, TensorInfo]:
        return self.components[component].infos()

    def read(self, component: str, name: str) -> torch.Tensor:
        return self.components[component].read(name)

    def content_hash(self) -> dict[str, str]:
        """sha256 of every tensor (names, dtypes, shapes, bytes): what provenance records for it."""
        digest = hashlib.sha256()
        for key, component in self.components.items():
            for name, tensor in component.tensors.items():
                tensor = component.read(name)
                digest.update(json.dumps([key, name, str(tensor.dtype), list(tensor.shape)]).encode())
                digest.update(st_format.tensor_bytes(tensor))
        return {"tensors (in memory)": digest.hexdigest()}

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> "MemoryCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryCheckpoint({self.source!r}, {self.layout})"


def _check_values(label: str, name: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor whose values cannot be read as a dense array: on the meta device (a model built
    without weights), sparse or quantized."""
    if tensor.is_meta:
        raise InputError(f"{label}: tensor {quoted(name)} is on the meta device, so it holds no values "
                         f"(load the model's weights first)")
    if tensor.layout != torch.strided:
        raise InputError(f"{label}: tensor {quoted(name)} is a sparse tensor ({str(tensor.layout).replace('torch.', '')}); "
                         f"cocktail merges dense tensors (give tensor.to_dense())")
    if tensor.is_quantized:
        raise InputError(f"{label}: tensor {quoted(name)} is quantized ({tensor.dtype}); cocktail merges "
                         f"float tensors (give tensor.dequantize())")


# -- building ------------------------------------------------------------------------------------
def safetensors_order(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The order in which ``safetensors`` lays these tensors out in a file (by dtype, then name).

    Asked of safetensors itself with one-element stand-ins, so it holds for any version of it.
    """
    names = list(tensors)
    try:
        from safetensors.torch import save

        blob = save({name: torch.zeros(1, dtype=t.dtype) for name, t in tensors.items()})
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + size])
        return sorted(names, key=lambda n: header[n]["data_offsets"][0])
    except Exception:  # a dtype safetensors cannot store: keep the given order
        return names


def _ordered(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensors[name] for name in safetensors_order(tensors)}


def _distinct_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop names whose tensor shares storage with an earlier one (what safetensors' save_model does)."""
    seen = set()
    kept = {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        kept[name] = tensor
    return kept


def saved_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``model.save_pretrained`` writes: tied copies dropped, names as saved, no copies made."""
    state = model.state_dict()  # detached references to the live parameters
    ignore = getattr(model, "_keys_to_ignore_on_save", None) or []
    for key in ignore:
        state.pop(key, None)
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, model)
    except ImportError:  # older transformers: keep the first name of each shared tensor
        state = _distinct_storage(state)
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:
        pass
    return dict(state)


def _transformers_config(model) -> dict:
    config = model.config.to_dict()
    if not config.get("architectures"):
        config["architectures"] = [type(model).__name__]
    return config


def _save_transformers_config(model, folder: Path) -> None:
    """``config.json`` (and ``generation_config.json``) as ``model.save_pretrained`` writes them."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        config.dtype = str(dtype).split(".")[1]
    config.save_pretrained(str(folder))
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))


def _is_transformers_model(module: torch.nn.Module) -> bool:
    config = getattr(module, "config", None)
    return config is not None and hasattr(config, "to_dict") and hasattr(module, "save_pretrained")


def _is_sentence_transformer(module: torch.nn.Module) -> bool:
    first = next(iter(module._modules.values()), None) if len(module._modules) else None
    return (type(module).__name__ in ("SentenceTransformer", "SparseEncoder", "CrossEncoder")
            or (first is not None and getattr(first, "auto_model", None) is not None and hasattr(module, "save")))


def from_module(module: torch.nn.Module, label: str, tokenizer=None,
                side_files_from: Optional[Path] = None) -> MemoryCheckpoint:
    """A checkpoint over the live weights of a transformers or sentence-transformers model.

    ``tokenizer`` is saved with the output when the model carries none itself; otherwise the side
    files a transformers model cannot write come from the folder ``side_files_from``.
    """
    module = unwrap(module)
    if _is_sentence_transformer(module):
        return _from_sentence_transformer(module, label)
    if _is_transformers_model(module):
        tensors = _ordered(saved_state_dict(module))

        def write(folder: Path) -> None:
            if side_files_from is not None and tokenizer is None:
                sidefiles.copy_side_files(side_files_from, folder)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(folder))
            _save_transformers_config(module, folder)

        components = {TRANSFORMER: MemoryComponent(TRANSFORMER, "", tensors, module_path="")}
        return MemoryCheckpoint(label, _transformers_config(module), components, module=module,
                                write_side_files=write)
    tensors = _ordered(_distinct_storage(module.state_dict()))
    if not tensors:
        raise InputError(f"{label}: the module has no weights")
    components = {TRANSFORMER: MemoryComponent(TRANSFORMER, "", tensors, module_path="")}

    def write_plain(folder: Path) -> None:
        if side_files_from is not None:
            sidefiles.copy_side_files(side_files_from, folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    return MemoryCheckpoint(label, {}, components, module=module, write_side_files=write_plain)


def _st_module_dir(model, idx: int, module) -> str:
    if idx == 0 and getattr(module, "save_in_root", False):
        return ""
    return f"{idx}_{type(module).__name__}"


def _from_sentence_transformer(model: torch.nn.Module, label: str) -> MemoryCheckpoint:
    """The transformer (its ``auto_model``) plus each module that saves weights (Dense, ...)."""
    components: dict[str, MemoryComponent] = {}
    transformer = None
    layout: list[tuple[int, str, str, torch.nn.Module]] = []
    for idx, (name, module) in enumerate(model._modules.items()):
        rel = _st_module_dir(model, idx, module)
        layout.append((idx, name, rel, module))
        auto_model = getattr(module, "auto_model", None)
        if transformer is None and isinstance(auto_model, torch.nn.Module):
            transformer = auto_model
            components[TRANSFORMER] = MemoryComponent(TRANSFORMER, rel, _ordered(saved_state_dict(auto_model)),
                                                      module_path=f"{name}.auto_model")
            continue
        state = _distinct_storage(module.state_dict())
        if state:
            components[rel] = MemoryComponent(rel, rel, _ordered(state), module_path=name)
    if transformer is None:
        raise InputError(f"{label}: a sentence-transformers model without a transformers model inside")
    components = {TRANSFORMER: components.pop(TRANSFORMER), **components}

    def write(folder: Path) -> None:
        _save_sentence_transformer_files(model, layout, folder)

    return MemoryCheckpoint(label, _transformers_config(transformer), components, sentence_transformers=True,
                            module=model, write_side_files=write)


def _save_sentence_transformer_files(model, layout, folder: Path) -> None:
    """What ``SentenceTransformer.save`` writes, without the weights."""
    get_config = getattr(model, "_get_model_config", None)
    if callable(get_config):
        with open(folder / "config_sentence_transformers.json", "w", encoding="utf8") as f:
            json.dump(get_config(), f, indent=2, sort_keys=True)
    modules_config = []
    for idx, name, rel, module in layout:
        module_dir = folder / rel
        module_dir.mkdir(parents=True, exist_ok=True)
        auto_model = getattr(module, "auto_model", None)
        if isinstance(auto_model, torch.nn.Module):
            _save_transformers_config(auto_model, module_dir)
            processor = getattr(module, "processor", None) or getattr(module, "tokenizer", None)
            if processor is not None:
                processor.save_pretrained(str(module_dir))
            if hasattr(module, "save_config"):
                module.save_config(str(module_dir))
        elif not module.state_dict():
            module.save(str(module_dir))  # config-only modules (Pooling, Normalize) write no weights
        elif hasattr(module, "save_config"):
            module.save_config(str(module_dir))
        entry = {"idx": idx, "name": name, "path": rel, "type": f"{type(module).__module__}.{type(module).__name__}"}
        kwargs = getattr(model, "module_kwargs", None) or {}
        if kwargs.get(name):
            entry["kwargs"] = kwargs[name]
        modules_config.append(entry)
    with open(folder / "modules.json", "w", encoding="utf8") as f:
        json.dump(modules_config, f, indent=2)


def from_state_dict(state: Mapping[str, Any], label: str, side_files_from: Optional[Path] = None) -> MemoryCheckpoint:
    """A checkpoint over a ``{name: tensor}`` state dict (no config: the model type comes from the other inputs)."""
    if not state:
        raise InputError(f"{label}: the state dict is empty")
    for key, value in state.items():
        if not isinstance(key, str):
            raise InputError(f"{label}: state dict keys must be strings, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{label}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    components = {TRANSFORMER: MemoryComponent(TRANSFORMER, "", _ordered(dict(state)))}

    def write(folder: Path) -> None:
        if side_files_from is not None:
            sidefiles.copy_side_files(side_files_from, folder)

    return MemoryCheckpoint(label, {}, components, write_side_files=write)


ModelInput = Union[str, os.PathLike, torch.nn.Module, Mapping[str, torch.Tensor]]


def open_any(value: Any, label: Optional[str] = None, tokenizer=None, side_files_from: Optional[Path] = None,
             adapter_base: Optional[str] = None) -> Union[Checkpoint, AdapterCheckpoint, MemoryCheckpoint]:
    """Open a merge input: a path or hub id (a model, or a LoRA adapter on ``adapter_base`` or the base
    its config names), a ``torch.nn.Module`` or a state dict."""
    if isinstance(value, (Checkpoint, AdapterCheckpoint, MemoryCheckpoint)):
        return value
    label = label or describe(value)
    if is_path(value):
        return open_path(value, adapter_base)
    if adapter_base is not None:
        raise InputError(f"{label}: a base model is given for it ({adapter_base}), but only an adapter folder "
                         "takes one")
    if is_module(value):
        return from_module(value, label, tokenizer=tokenizer, side_files_from=side_files_from)
    if is_state_dict(value):
        return from_state_dict(value, label, side_files_from=side_files_from)
    raise InputError(f"{label}: expected a model folder, hub id, torch.nn.Module or state dict, "
                     f"got {type(value).__name__}")


def share_model_type(checkpoints: list) -> None:
    """State dicts carry no config: let them take the model type of the other inputs (for name matching)."""
    known = next((c.model_type for c in checkpoints if c is not None and c.model_type), None)
    for ckpt in checkpoints:
        if isinstance(ckpt, MemoryCheckpoint) and not ckpt.model_type:
            ckpt.model_type_hint = known
