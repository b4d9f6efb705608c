"""Where a scored model's weights live, and in which dtype.

By default the whole model sits on one device (cuda when present, else cpu), built there directly
in the dtype it is scored in (``score_dtype``: ``auto`` is the checkpoint's own dtype on a GPU and
float32 on a CPU). With a device map (``auto``, ``balanced``, ``sequential``) accelerate, the library
transformers itself uses for this, spreads its layers over the GPUs and the CPU within
``max_memory``; what does not fit goes to a folder on disk, read back layer by layer at each forward
pass. Nothing is loaded to place a model: it is built empty (on the meta device), the map is made
from its shapes, then each parameter is made where the map puts it, and the skeleton fills it.

A parameter on disk is a :class:`DiskWeight`: filling it writes its file in the offload folder
(accelerate's format, one ``.dat`` file per tensor), so a merge scored in memory (``--search``,
``sweep``) follows the same map. The offload folder is a temporary folder made for one model (in
``--offload-folder``, else beside the output or in cocktail's cache), never inside an input, and
removed when the model is closed, when a run fails or is interrupted, or at the latest when the
interpreter exits.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from cocktail.errors import InputError, OutputError, option, warn
from cocktail.io.containment import container, within
from cocktail.io.hashing import cache_folder
from cocktail.io.memory import MemoryCheckpoint
from cocktail.modeling.loading import resolve_device
from cocktail.recipe.scoring import ScoringOptions
from cocktail.recipe.sizes import show_size

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLOAD_PREFIX = "cocktail-offload-"
ACCELERATE_HINT = "pip install 'cocktail-merge[big]' (or pip install accelerate)"


def checkpoint_dtype(config: dict) -> torch.dtype:
    """The dtype a checkpoint's config.json names (``torch_dtype``, or ``dtype`` since transformers 5);
    float32 when it names none, or one that is not scored in (float64, int8)."""
    named = config.get("torch_dtype") or config.get("dtype")
    return DTYPES.get(str(named).replace("torch.", ""), torch.float32)


def score_dtype(name: Optional[str], device: torch.device, config: dict) -> tuple[torch.dtype, str]:
    """``(dtype, how it was chosen)`` for ``--score-dtype name`` (``None``: auto) on ``device``."""
    if name not in (None, "auto"):
        if name not in DTYPES:
            raise InputError(f"{option('score_dtype')} must be one of auto, {', '.join(DTYPES)}, got {name!r}")
        return DTYPES[name], "as asked"
    if device.type == "cpu":
        return torch.float32, "auto: float32 on CPU"
    return checkpoint_dtype(config), "auto: the checkpoint's dtype"


HEAP_MMAP_THRESHOLD = 4 << 20  # bytes: allocations this large get pages of their own, returned when freed
_heap_bounded = False


@functools.cache
def _glibc():
    """glibc, for its allocator's settings (``None``: not Linux, or a libc without them, like musl);
    looked up once (``find_library`` costs about a millisecond, and the heap is released after every
    chunk of a Fisher's per-example gradients)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both looked up: a libc without them is not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def bound_heap() -> bool:
    """Make glibc give the pages of every allocation of 4 MiB or more their own mapping, returned to the
    system when freed (``mallopt(M_MMAP_THRESHOLD)``); returns whether it could (glibc only).

    A model spread to disk loads each offloaded layer's weights at every forward pass and frees them
    after: with glibc's default (a threshold that grows to 32 MiB) those tens of MiB come from the heap,
    which keeps what is freed, so a run capped at ``cpu=2GB`` grew to 3.4 GB of RSS on a 1B model; with
    this, 2.7 GB, as fast (``benchmarks/big_model_scoring.py``). Every scoring run sets it (a model in
    memory frees its activations at every layer too; its peak varied by 400 MB from run to run without it)."""
    global _heap_bounded
    if _heap_bounded:
        return True
    libc = _glibc()
    if libc is None:
        return False
    M_MMAP_THRESHOLD = -3
    _heap_bounded = bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))
    return _heap_bounded


def release_heap() -> bool:
    """Give the free pages inside glibc's heap back to the system (``malloc_trim(0)``); returns whether
    it could (glibc only). Allocations under the :func:`bound_heap` threshold (a bge-base layer's 2.4 MB
    weight, gradient or activation) stay in the heap when freed: after a model's Fisher statistics about
    1 GB of it was free but held, and the merge that followed added its own memory on top."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def require_accelerate(what: str):
    """The accelerate package, or an :class:`InputError` that says how to install it."""
    try:
        import accelerate
    except ImportError:
        raise InputError(f"{what} needs the accelerate package: {ACCELERATE_HINT}") from None
    return accelerate


def input_folders(plan) -> list[Path]:
    """The folders of the plan's inputs (resolved, a hub snapshot as its cached repository)."""
    every = list(plan.checkpoints) + ([plan.base] if plan.base is not None else [])
    folders = []
    for checkpoint in every:
        if isinstance(checkpoint, MemoryCheckpoint):
            continue  # its files are cocktail's own temporary copy
        for folder in (getattr(checkpoint, "root", None), getattr(checkpoint, "folder", None)):
            if isinstance(folder, Path):
                folders.append(container(folder))
    return folders


class OffloadFolder:
    """A folder of offloaded weights made for one model: ``parent`` itself when cocktail makes it,
    else a fresh ``cocktail-offload-*`` folder inside it. Removed by :meth:`close` (and, should a caller
    forget, when the object is collected or the interpreter exits). Never inside an input."""

    def __init__(self, parent: Path, inputs: Sequence[Path]):
        parent = Path(parent).expanduser().absolute()
        for root in inputs:
            if within(parent, root):
                raise OutputError(f"the offload folder {parent} lies inside the input {root}: cocktail never writes "
                                  f"into an input; give {option('offload_folder')} elsewhere")
        try:
            if parent.exists():
                self.path = Path(tempfile.mkdtemp(prefix=OFFLOAD_PREFIX, dir=parent))
            else:
                parent.mkdir(parents=True)
                self.path = parent
        except OSError as exc:
            raise OutputError(f"cannot make the offload folder in {parent} ({exc.strerror or exc})") from None
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def close(self) -> None:
        """Remove the folder and everything in it."""
        self._remove()

    @property
    def removed(self) -> bool:
        return not self._remove.alive


class DiskWeight:
    """A parameter kept in the offload folder: :meth:`write` replaces its file(s), which accelerate's
    hooks read back at each forward pass (tied parameters share one DiskWeight with several names)."""

    def __init__(self, param: torch.nn.Parameter, names: list[str], folder: Path, index: dict):
        self.param = param  # the empty (meta) parameter it stands for: the skeleton's key
        self.shape = tuple(param.shape)
        self.dtype = param.dtype
        self.names = names
        self._folder = folder
        self._index = index
        for name in names:
            index[name] = {"dtype": dtype_name(self.dtype), "shape": list(self.shape)}

    def write(self, tensor: torch.Tensor) -> None:
        from accelerate.utils import offload_weight

        value = tensor.detach().to("cpu", self.dtype).contiguous()
        for name in self.names:
            offload_weight(value, name, str(self._folder), self._index)


@dataclass
class PlacedModel:
    """A model built empty and placed: ``model`` (dispatched), and as they were before dispatching,
    its ``parameters`` (name, parameter) and ``state`` (name -> tensor or :class:`DiskWeight`)."""

    model: torch.nn.Module
    parameters: list
    state: dict
    disk: dict = field(default_factory=dict)  # id(parameter) -> DiskWeight


@dataclass
class Placement:
    """Where and how a model is scored: ``device`` (where inputs go: the map's first device), ``dtype``,
    and with ``device_map`` the caps and the folder disk-offloaded weights go to."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    dtype_reason: str = "as asked"
    device_map: Optional[str] = None
    caps: Optional[dict] = None  # {GPU index or "cpu": bytes}
    offload_parent: Optional[Path] = None
    inputs: list = field(default_factory=list)
    folder: Optional[OffloadFolder] = None

    @classmethod
    def make(cls, options: Optional[ScoringOptions], device: Optional[str], plan,
             beside: Optional[Path] = None) -> "Placement":
        """The placement ``options`` ask for, for the models of ``plan`` (``device``: where to run,
        default cuda when present; ``beside``: the default parent of the offload folder, e.g. the output's)."""
        options = options or ScoringOptions()
        options.check()
        bound_heap()  # activations, and offloaded layers, come and go at every forward pass: their memory must go back
        where = resolve_device(device)
        dtype, reason = score_dtype(options.score_dtype, where, plan.checkpoints[0].config)
        caps = options.memory_caps()
        gpus = [key for key in (caps or {}) if key != "cpu"]
        if gpus and where.type != "cuda":
            raise InputError(f"{option('max_memory')} names GPU {gpus[0]}, but the models run on {where} "
                             "(CUDA is not available, or --device says cpu)")
        if options.device_map is None:
            if gpus and where.index is None:
                where = torch.device("cuda", gpus[0])
            return cls(where, dtype, reason, caps=caps)
        require_accelerate(f"{option('device_map')} {options.device_map}")
        if where.type == "cuda" and gpus:
            where = torch.device("cuda", gpus[0])  # accelerate fills the devices in the order given
        elif where.type == "cuda" and caps is None:
            where = torch.device("cuda", where.index or 0)
        elif where.type == "cuda":
            where = torch.device("cpu")  # only cpu named: the GPUs are left alone
        parent = Path(options.offload_folder).expanduser() if options.offload_folder is not None else None
        if parent is None:
            parent = beside if beside is not None else (cache_folder() or Path(tempfile.gettempdir()))
        return cls(where, dtype, reason, options.device_map, caps, parent, input_folders(plan))

    def describe(self) -> str:
        """For progress lines: ``bfloat16 (auto: the checkpoint's dtype) on cuda:0``."""
        spread = f", spread by device map {self.device_map}" if self.device_map else ""
        return f"{dtype_name(self.dtype)} ({self.dtype_reason}) on {self.device}{spread}"

    def memory_cap(self) -> Optional[int]:
        """The cap ``max_memory`` sets on the one device a model without a device map runs on."""
        if not self.caps:
            return None
        return self.caps.get("cpu" if self.device.type == "cpu" else (self.device.index or 0))

    # -- building ------------------------------------------------------------------------------------
    def build(self, make: Callable[[], torch.nn.Module], source: str) -> PlacedModel:
        """The model ``make()`` builds (weights not yet filled), placed: on the device, or by the map."""
        if self.device_map is None:
            with torch.device(self.device):
                model = make()
            if hasattr(model, "tie_weights"):
                model.tie_weights()  # tied embeddings (GPT-2's lm_head) share one tensor, as from_pretrained makes them
            model.eval()
            return PlacedModel(model, list(model.named_parameters(remove_duplicate=False)),
                               model.state_dict(keep_vars=True))
        return self._spread(make, source)

    def _spread(self, make: Callable[[], torch.nn.Module], source: str) -> PlacedModel:
        from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
        from accelerate.utils import get_balanced_memory, get_max_memory, set_module_tensor_to_device

        with init_empty_weights(include_buffers=False):
            model = make()
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        model.eval()
        caps = dict(self.caps) if self.caps else get_max_memory()
        if self.device.type == "cpu":
            caps = {k: v for k, v in caps.items() if k in ("cpu", "disk")} or {"cpu": 0}
        no_split = sorted(getattr(model, "_no_split_modules", None) or [])
        if self.device_map != "sequential":
            caps = get_balanced_memory(model, caps, no_split_module_classes=no_split, dtype=self.dtype)
        device_map = infer_auto_device_map(model, max_memory=caps, no_split_module_classes=no_split,
                                           dtype=self.dtype)

        for name, param in list(model.named_parameters()):
            where = _where(name, device_map)
            if where != "disk":
                value = torch.empty(param.shape, dtype=self.dtype, device=_torch_device(where))
                set_module_tensor_to_device(model, name, _torch_device(where), value=value)
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # making the parameters above untied them
        parameters = list(model.named_parameters(remove_duplicate=False))
        state = model.state_dict(keep_vars=True)
        index: dict = {}
        disk: dict = {}
        if "disk" in device_map.values():
            self.folder = OffloadFolder(self.offload_parent, self.inputs)
            aliases: dict[int, list[str]] = {}  # a tied parameter has several names, each gets its file
            for name, param in parameters:
                aliases.setdefault(id(param), []).append(name)
            for name, param in model.named_parameters():
                if param.device.type == "meta":
                    disk[id(param)] = DiskWeight(param, aliases[id(param)], self.folder.path, index)
            state = {name: disk.get(id(value), value) for name, value in state.items()}
        quiet = logging.getLogger("accelerate.big_modeling")  # its "parameters on the meta device" warning:
        level = quiet.level                                   # cocktail's own notice below says where they went
        quiet.setLevel(logging.ERROR)
        try:
            dispatch_model(model, device_map, main_device=self.device if self.device.type == "cuda" else None,
                           offload_dir=str(self.folder.path) if self.folder else None,
                           offload_index=index if disk else None,
                           skip_keys=getattr(model, "_skip_keys_device_placement", None))
        except BaseException:
            self.close()
            raise
        finally:
            quiet.setLevel(level)
        warn(self._notice(parameters, device_map, source))
        return PlacedModel(model, parameters, state, disk)

    def _notice(self, parameters, device_map: dict, source: str) -> str:
        """One line: how many bytes of weights went where."""
        sizes: dict[str, int] = {}
        seen = set()
        for name, param in parameters:
            if id(param) in seen:
                continue
            seen.add(id(param))
            where = str(_where(name, device_map))
            sizes[where] = sizes.get(where, 0) + param.numel() * param.element_size()
        order = sorted(sizes, key=lambda d: (d == "disk", d == "cpu", d))
        spread = ", ".join(f"{show_size(sizes[d])} on {d if d in ('cpu', 'disk') else f'cuda:{d}'}" for d in order)
        folder = f" (offload folder {self.folder.path})" if self.folder is not None else ""
        return f"{source}: device map {self.device_map}, {dtype_name(self.dtype)} weights: {spread}{folder}"

    def close(self) -> None:
        """Remove the offload folder, if one was made."""
        if self.folder is not None:
            self.folder.close()


def _where(name: str, device_map: dict):
    while name and name not in device_map:
        name = name.rpartition(".")[0]
    return device_map.get(name, device_map.get("", "cpu"))


def _torch_device(where) -> torch.device:
    return torch.device("cuda", where) if isinstance(where, int) else torch.device(where)


__all__ = ["Placement", "DiskWeight", "OffloadFolder", "score_dtype", "checkpoint_dtype", "require_accelerate",
           "bound_heap", "release_heap"]
