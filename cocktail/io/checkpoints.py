"""A model on disk, opened lazily and read one tensor at a time.

``Checkpoint.open(source)`` accepts a model folder (single or sharded safetensors, legacy
``pytorch_model.bin`` loaded with ``weights_only=True``), a sentence-transformers folder (its
``modules.json`` says where the transformer lives and which other modules carry weights), a path to a
single ``.safetensors`` file, or a Hugging Face hub id resolved through the local cache.

Nothing is loaded up front but headers: names, dtypes and shapes come from the safetensors header,
tensors are read with ``pread`` when asked for, so a checkpoint costs no memory until it is used.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import torch

from cocktail.errors import InputError, cut, few_names, quoted, warn
from cocktail.io import json_input
from cocktail.io import safetensors_format as st_format
from cocktail.io.containment import inside, read_inside
from cocktail.io.hashing import file_hashes
from cocktail.io.head_files import head_file_names, tensor_prefix
from cocktail.io.json_input import JSONLimitError

TRANSFORMER = "transformer"  # key of the main weights; sentence-transformers modules use their folder
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return st_format.tensor_nbytes(self.dtype, self.shape)

    @property
    def numel(self) -> int:
        return self.nbytes // self.dtype.itemsize


class _SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        self.entries, self.metadata = st_format.read_header(path)
        self._fd: int | None = None

    def infos(self) -> dict[str, TensorInfo]:
        return {name: TensorInfo(e.dtype, e.shape) for name, e in self.entries.items()}

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``; a file that fails or shrinks while it is read is an error naming it (an
        input's fault, not the output's)."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return st_format.read_tensor(self._fd, self.entries[name])
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read tensor {name}: {exc.strerror or exc}") from None
        except InputError as exc:
            raise InputError(f"{self.path}: tensor {name}: {exc} (did the file change while it was read?)") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _TorchBinFile:
    """A legacy ``pytorch_model.bin``: loaded with ``weights_only=True`` (no code runs), memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        self._state: dict[str, torch.Tensor] | None = None

    def _load(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            try:
                with warnings.catch_warnings():  # torch's warnings are noise next to cocktail's one line
                    warnings.simplefilter("ignore")
                    try:
                        state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
                    except RuntimeError as exc:  # the pre-zip format cannot be memory-mapped
                        if "mmap" not in str(exc):
                            raise
                        state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickle errors come in many types
                raise InputError(f"{self.path}: cannot be loaded safely as weights ({_load_failure(exc)}); "
                                 f"a .safetensors file of the weights can be merged") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise InputError(f"{self.path}: does not hold a state dict of tensors")
            self._state = state
        return self._state

    def infos(self) -> dict[str, TensorInfo]:
        return {name: TensorInfo(t.dtype, tuple(t.shape)) for name, t in self._load().items()}

    def read(self, name: str) -> torch.Tensor:
        return self._load()[name]

    def close(self) -> None:
        self._state = None


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to load it unsafely."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    reason = " ".join(line for line in lines if "weights_only" not in line)
    return reason.replace("WeightsUnpickler error:", "").strip() or type(exc).__name__


class _HeadFile(_TorchBinFile):
    """A head saved with ``torch.save`` beside the transformer (bge-m3's ``colbert_linear.pt``): its
    tensors are named ``<file stem>.<key>`` (``colbert_linear.weight``)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.prefix = tensor_prefix(path.name)

    def infos(self) -> dict[str, TensorInfo]:
        return {self.prefix + name: info for name, info in super().infos().items()}

    def read(self, name: str) -> torch.Tensor:
        return super().read(name[len(self.prefix):])


def _open_weight_file(path: Path):
    if path.suffix == ".safetensors":
        return _SafetensorsFile(path)
    return _TorchBinFile(path)


@dataclass
class Component:
    """One set of weights inside a model: the transformer, or a sentence-transformers module (Dense...)."""

    key: str
    rel_dir: str  # folder, relative to the model root, that holds these weights ("" for the root)
    layout: str
    files: list = field(default_factory=list)
    head_file: Optional[str] = None  # the file name of a head saved with torch.save (``colbert_linear.pt``)
    weight_map: Optional[dict] = None  # a shard index's tensor name -> shard file name
    index: Optional[Path] = None  # the shard index file
    _where: dict = field(default_factory=dict)  # tensor name -> file object
    _infos: dict = field(default_factory=dict)

    def infos(self) -> dict[str, TensorInfo]:
        """Every tensor's dtype and shape; with a shard index, only the tensors its ``weight_map`` lists
        (transformers ignores the others, and so does cocktail, with a warning)."""
        if not self._infos:
            unlisted = []
            for f in self.files:
                for name, info in f.infos().items():
                    if self.weight_map is not None and name not in self.weight_map:
                        unlisted.append(name)
                        continue
                    if name in self._where:
                        raise InputError(f"tensor {quoted(name)} is in two shards, {self._where[name].path.name} and "
                                         f"{f.path.name} ({self.index}): which one transformers loads is undefined")
                    self._infos[name] = info
                    self._where[name] = f
            for name, shard in (self.weight_map or {}).items():
                if name not in self._where or self._where[name].path.name != Path(shard).name:
                    raise InputError(f"{self.index}: weight_map puts tensor {quoted(name)} in {cut(shard)}, which does not hold it")
            if unlisted:
                warn(f"{self.index}: {len(unlisted)} tensor{'s' if len(unlisted) > 1 else ''} in its shards that "
                     f"weight_map does not list, ignored as transformers ignores them: {few_names(unlisted)}")
        return self._infos

    def read(self, name: str) -> torch.Tensor:
        self.infos()
        return self._where[name].read(name)

    def paths(self) -> list[Path]:
        return [f.path for f in self.files]


def _read_index(index_path: Path, root: Path) -> dict[str, str]:
    """A shard index's ``weight_map`` (tensor name -> shard file name, both strings), read from the
    model folder ``root``."""
    index = read_json(index_path, dict, "a JSON object (a shard index)", root=root)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index_path}: not a valid shard index (weight_map must be a mapping of tensor names "
                         f"to shard files, got {type(weight_map).__name__})")
    bad = next((k for k, v in weight_map.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise InputError(f"{index_path}: weight_map names {quoted(weight_map[bad])} as the shard of {quoted(bad)}: "
                         f"expected a file name")
    return weight_map


def _sharded(folder: Path, index_name: str, key: str, rel_dir: str, layout: str, root: Path) -> Component:
    """The weights of a shard index: each tensor is read from the shard its ``weight_map`` names."""
    index_path = folder / index_name
    weight_map = _read_index(index_path, root)
    shards = {}
    for name in dict.fromkeys(weight_map.values()):
        path = inside(folder, name, "shard", index_path)
        if not os.path.isfile(path):  # False, not an error, for a name too long for the file system
            raise InputError(f"{index_path}: lists shard {cut(name)} which is not in the folder")
        shards[name] = _open_weight_file(path)
    return Component(key, rel_dir, layout, list(shards.values()), weight_map=weight_map, index=index_path)


def find_weights(folder: Path, key: str, rel_dir: str, required: bool, root: Optional[Path] = None) -> Component | None:
    """The weights in ``folder``, chosen as transformers' ``from_pretrained`` chooses them: ``model.safetensors``,
    then its shard index, then ``pytorch_model.bin``, then its index (``root``: the model folder they must stay in)."""
    root = root or folder

    def file(name: str) -> Path:
        return inside(root, str((folder / name).relative_to(root)), "weight file", root)

    if (folder / SAFE_SINGLE).is_file():
        return Component(key, rel_dir, "safetensors", [_SafetensorsFile(file(SAFE_SINGLE))])
    if (folder / SAFE_INDEX).is_file():
        return _sharded(folder, SAFE_INDEX, key, rel_dir, "sharded safetensors", root)
    if (folder / BIN_SINGLE).is_file():
        return Component(key, rel_dir, "pytorch .bin", [_TorchBinFile(file(BIN_SINGLE))])
    if (folder / BIN_INDEX).is_file():
        return _sharded(folder, BIN_INDEX, key, rel_dir, "sharded pytorch .bin", root)
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return Component(key, rel_dir, "safetensors", [_SafetensorsFile(file(others[0].name))])
    if required:
        raise InputError(
            f"{folder}: no weights found (expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX})"
        )
    return None


def looks_like_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not source.startswith(".") and not source.endswith(".safetensors")


def resolve(source: str) -> Path:
    """A local path for ``source``: the path itself, or the cached snapshot of a hub id."""
    if not source.strip():
        raise InputError("a model path is empty (give a folder, a .safetensors file or a hub id)")
    path = Path(source).expanduser()
    if path.exists():
        return path
    if os.path.lexists(path):
        raise InputError(f"model not found: {source} is a symlink that leads nowhere (its target is missing, "
                         f"or it is a loop of symlinks)")
    if not looks_like_hub_id(source):
        raise InputError(f"model not found: {source} (no such file or folder)")
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency, but stay clear if it is missing
        raise InputError(f"model not found: {source} (not a local folder, and huggingface_hub is not installed)") from None
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        folder = huggingface_hub.snapshot_download(
            source,
            local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.tiktoken", "*/*.json",
                            "*/*.safetensors", "*.bin"],
        )
    except Exception as exc:  # hub errors come in many types; all mean "not available"
        how = "offline (HF_HUB_OFFLINE=1) and not in the local Hugging Face cache" if offline else str(exc).splitlines()[0]
        raise InputError(f"model not found: {source} is not a local folder; as a hub id it is {how}") from None
    return Path(folder)


class CheckpointLike(Protocol):
    """What the plan, the engine and the writer need of a model: a :class:`Checkpoint` on disk, or a
    :class:`~cocktail.io.memory.MemoryCheckpoint` over a model held in memory."""

    source: str  # how the user named it (path, hub id, or ``<in memory: ...>``)
    config: dict
    components: dict  # component key -> its weights (``TRANSFORMER`` first)

    @property
    def root(self) -> Path: ...  # the folder holding its config and tokenizer files

    @property
    def model_type(self) -> Optional[str]: ...

    @property
    def architecture(self) -> Optional[str]: ...

    @property
    def layout(self) -> str: ...

    def weight_files(self) -> list[Path]: ...

    def infos(self, component: str = TRANSFORMER) -> dict[str, "TensorInfo"]: ...

    def read(self, component: str, name: str) -> torch.Tensor: ...

    def content_hash(self) -> dict[str, str]: ...  # what provenance records: {file or "tensors": sha256}

    def close(self) -> None: ...


class Checkpoint:
    """A model on disk: its config and the weights of each component, read lazily."""

    def __init__(self, source: str, root: Path, config: dict, components: dict[str, Component],
                 sentence_transformers: bool):
        self.source = source
        self.root = root
        self.config = config
        self.components = components
        self.sentence_transformers = sentence_transformers

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, source: str | os.PathLike) -> "Checkpoint":
        source = str(source)
        path = resolve(source)
        if path.is_file():
            if path.suffix != ".safetensors":
                raise InputError(f"{source}: a single weight file must be .safetensors (or give its folder)")
            config = read_config(path.parent / "config.json", required=False, root=path.parent)
            components = {TRANSFORMER: Component(TRANSFORMER, "", "safetensors", [_SafetensorsFile(path)])}
            return cls(source, path.parent, config, components, sentence_transformers=False)
        modules = read_modules(path)
        transformer_dir = ""
        extra: list[tuple[str, str]] = []
        for module_type, module_path in modules or []:
            if module_type.endswith("Transformer"):
                transformer_dir = module_path
            elif module_path and (path / module_path).is_dir():
                extra.append((module_path, module_path))
        main_dir = path / transformer_dir
        components = {TRANSFORMER: find_weights(main_dir, TRANSFORMER, transformer_dir, required=True, root=path)}
        for key, rel in extra:
            found = find_weights(path / rel, key, rel, required=False, root=path)
            if found is not None:
                components[key] = found
        for name in head_file_names(main_dir):
            head = inside(path, str((main_dir / name).relative_to(path)), "head file", path)
            components[name] = Component(name, transformer_dir, "torch head file", [_HeadFile(head)], head_file=name)
        config = read_config(main_dir / "config.json", required=True, root=path)
        return cls(source, path, config, components, sentence_transformers=modules is not None)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    @property
    def layout(self) -> str:
        layout = self.components[TRANSFORMER].layout
        return f"sentence-transformers, {layout}" if self.sentence_transformers else layout

    def weight_files(self) -> list[Path]:
        return [p for c in self.components.values() for p in c.paths()]

    def infos(self, component: str = TRANSFORMER) -> dict[str, TensorInfo]:
        return self.components[component].infos()

    def read(self, component: str, name: str) -> torch.Tensor:
        return self.components[component].read(name)

    def content_hash(self) -> dict[str, str]:
        """sha256 of each weight file, by its path in the model folder."""
        return file_hashes(self.root, self.weight_files())

    def close(self) -> None:
        for component in self.components.values():
            for f in component.files:
                f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}, {self.layout})"


def read_json(path: Path, kind: type = object, what: str = "JSON", root: Optional[Path] = None):
    """A JSON file's value, read as :func:`~cocktail.io.containment.read_inside` reads a file of the model
    folder ``root`` (default: the file's folder); unreadable, outside, not a regular file, invalid or
    not of ``kind`` is a one-line InputError."""
    data = read_inside(path, root or path.parent)
    try:
        value = json_input.loads(data)
    except JSONLimitError as exc:
        raise InputError(f"{path}: JSON cocktail does not read: {exc}") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise InputError(f"{path}: expected {what}")
    return value


def read_config(path: Path, required: bool, root: Optional[Path] = None) -> dict:
    """The ``config.json`` at ``path`` in the model folder ``root`` (``{}`` when there is none and it is
    not ``required``)."""
    if not os.path.lexists(path):
        if required:
            raise InputError(f"{path.parent}: no config.json (is this a transformers model folder?)")
        return {}
    config = read_json(path, dict, "a JSON object", root=root)
    model_type, architectures = config.get("model_type"), config.get("architectures")
    if model_type is not None and not isinstance(model_type, str):
        raise InputError(f"{path}: model_type must be a string, got {quoted(model_type)}")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        raise InputError(f"{path}: architectures must be a list of class names, got {quoted(architectures)}")
    return config


def transformer_dir(folder: Path) -> str:
    """Where a model folder keeps its transformer (config and weights), relative to the folder:
    the Transformer module's path of a sentence-transformers ``modules.json``, else ``""``."""
    for module_type, module_path in read_modules(folder) or []:
        if module_type.endswith("Transformer"):
            return module_path
    return ""


def read_modules(folder: Path) -> list[tuple[str, str]] | None:
    """The ``(type, path)`` of each module a sentence-transformers ``modules.json`` lists (``None``
    without one); every path is checked to stay inside ``folder``."""
    path = folder / "modules.json"
    if not os.path.lexists(path):
        return None
    modules = []
    for module in read_json(path, list, "a list of modules", root=folder):
        if not isinstance(module, dict) or not isinstance(module.get("type", ""), str):
            raise InputError(f"{path}: expected a list of modules (mappings with a type and a path), got {quoted(module)}")
        module_path = module.get("path", "")
        if module_path:
            inside(folder, module_path, "module path", path)
        modules.append((module["type"] if "type" in module else "", module_path))
    return modules
