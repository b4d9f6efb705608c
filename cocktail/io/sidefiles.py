"""Everything in a model folder besides its weights: config, tokenizer, sentence-transformers files.

They are copied from the first model (or ``config_from``). ``config.json`` gets the output dtype. An
encoder without sentence-transformers files gets BGE's (CLS pooling, then Normalize) so that the
output loads correctly in sentence-transformers. The sha256 of every file copied goes into the
output's provenance, so ``--verify`` sees a changed config or tokenizer as it sees changed weights.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from cocktail.io.checkpoints import read_json, read_modules, resolve
from cocktail.io.containment import check_write, inside, open_regular
from cocktail.io.hashing import sha256_file

SIDE_SUFFIXES = {".json", ".txt", ".model", ".py", ".tiktoken", ".jinja", ".vocab"}
NOT_COPIED = {
    "model.safetensors.index.json", "pytorch_model.bin.index.json", "trainer_state.json",
    "cocktail_recipe.yaml", "README.md",
}
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf"}


def _is_side_file(path: Path) -> bool:
    """A file to copy by its name (one that is not a regular file is refused when it is read)."""
    return path.suffix in SIDE_SUFFIXES and path.name not in NOT_COPIED and not path.is_dir()


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Copy config, tokenizer and sentence-transformers files from ``source``; returns what was copied.

    Every file read stays inside ``source`` and is a regular file, and every file written lies inside
    ``dest``; copies get the user's ordinary file mode (a read-only input gives a writable output)."""
    copied = []
    for path in sorted(source.iterdir()):
        if _is_side_file(path):
            _copy(inside(source, path.name, "file", source), dest / path.name, dest)
            copied.append(path.name)
    for _, module in read_modules(source) or []:
        module_src = source / module
        if not module or not module_src.is_dir():
            continue
        for path in sorted(module_src.rglob("*")):
            if path.is_dir() or path.suffix in WEIGHT_SUFFIXES or path.name in NOT_COPIED:
                continue
            rel = str(path.relative_to(source))
            _copy(inside(source, rel, "file", source / module), dest / rel, dest)
            copied.append(rel)
        (dest / module).mkdir(parents=True, exist_ok=True)  # e.g. 2_Normalize holds no files
    return copied


def side_file_folder(config_from: Optional[str], first_root: Path) -> Path:
    """The folder an output's side files come from: ``config_from``, else the first model's folder."""
    source = resolve(config_from) if config_from else Path(first_root)
    return source.parent if source.is_file() else source


def copied_hashes(dest: Path, copied: list[str]) -> dict[str, str]:
    """``{name: sha256}`` of the side files :func:`copy_side_files` just copied into ``dest`` (hashed
    before ``config.json`` is given the output dtype: what the input holds)."""
    return {name: sha256_file(dest / name, cached=False) for name in copied if (dest / name).is_file()}


def side_file_hashes(source: Path) -> dict[str, str]:
    """``{name: sha256}`` of the side files a merge would copy from ``source`` now: they are copied
    into a scratch folder and hashed there, so the selection is the merge's own."""
    with tempfile.TemporaryDirectory(prefix="cocktail-verify-") as scratch:
        return copied_hashes(Path(scratch), copy_side_files(source, Path(scratch)))


def _copy(path: Path, target: Path, dest: Path) -> None:
    """Copy the bytes of ``path`` (a regular file) to ``target`` inside ``dest``, as a new file of the
    user's normal mode."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_regular(path) as source, open(check_write(target, dest), "wb") as copy:
        shutil.copyfileobj(source, copy)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def config_dtype_key() -> str:
    """The key a ``config.json`` names its dtype by: ``dtype`` since transformers 5 (``torch_dtype`` is
    deprecated there), ``torch_dtype`` for the transformers 4 installed here."""
    try:
        major = int(importlib.metadata.version("transformers").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = 5
    return "dtype" if major >= 5 else "torch_dtype"


def set_config_dtype(config_path: Path, dtype: torch.dtype) -> None:
    """Record the output dtype in a copied ``config.json``, under the key the installed transformers
    uses (the other one is dropped, so the two can never disagree)."""
    if not config_path.is_file():
        return
    config = read_json(config_path, dict, "a JSON object")
    key = config_dtype_key()
    config.pop("torch_dtype" if key == "dtype" else "dtype", None)
    config[key] = dtype_name(dtype)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def has_sentence_transformers_files(folder: Path) -> bool:
    return (folder / "modules.json").is_file()


def write_bge_sentence_transformers_files(dest: Path, config: dict) -> list[str]:
    """BGE's sentence-transformers layout: Transformer -> CLS pooling -> Normalize."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (dest / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (dest / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": config.get("hidden_size"),
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (dest / "2_Normalize").mkdir(exist_ok=True)
    (dest / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": min(512, config.get("max_position_embeddings") or 512),
                    "do_lower_case": False}, indent=2) + "\n")
    (dest / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2) + "\n")
    return ["modules.json", "1_Pooling/config.json", "2_Normalize/", "sentence_bert_config.json",
            "config_sentence_transformers.json"]
