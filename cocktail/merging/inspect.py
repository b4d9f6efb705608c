"""``cocktail inspect``: what each model is, and whether a set of models can be merged."""

from __future__ import annotations

from typing import Optional

from cocktail.errors import CocktailError
from cocktail.io.adapters import AdapterCheckpoint, bases_for, open_path
from cocktail.io.checkpoints import TRANSFORMER, CheckpointLike
from cocktail.io.head_files import is_head_file
from cocktail.merging.plan import build_plan

CONFIG_KEYS_IGNORED = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}


def _first(config: dict, *keys: str):
    """The first of ``keys`` the config has (architectures name the same thing differently)."""
    return next((config[k] for k in keys if config.get(k) is not None), None)


def describe(ckpt: CheckpointLike) -> dict:
    """Architecture, size, dtypes and file layout of one checkpoint (headers only, no tensor read)."""
    parameters = 0
    dtypes: dict[str, int] = {}
    nbytes = 0
    tensors = 0
    for component in ckpt.components:
        for info in ckpt.infos(component).values():
            tensors += 1
            nbytes += info.nbytes
            if info.dtype.is_floating_point:
                parameters += info.numel
                key = str(info.dtype).replace("torch.", "")
                dtypes[key] = dtypes.get(key, 0) + info.numel
    config = ckpt.config
    return {
        "path": ckpt.source,
        "architecture": ckpt.architecture,
        "model_type": ckpt.model_type,
        "hidden_size": _first(config, "hidden_size", "n_embd", "d_model"),
        "num_layers": _first(config, "num_hidden_layers", "n_layer", "num_layers"),
        "vocab_size": config.get("vocab_size"),
        "parameters": parameters,
        "dtypes": dtypes,
        "tensors": tensors,
        "bytes": nbytes,
        "layout": ckpt.layout,
        "files": [str(p.relative_to(ckpt.root)) if p.is_relative_to(ckpt.root) else str(p) for p in ckpt.weight_files()],
        "modules": [k for k, c in ckpt.components.items() if k != TRANSFORMER and not is_head_file(c)],
        "head_files": [k for k, c in ckpt.components.items() if is_head_file(c)],
        "components": [{"name": k, "kind": _kind(k, c), "tensors": len(ckpt.infos(k))}
                       for k, c in ckpt.components.items()],
        "adapter": ckpt.describe() if isinstance(ckpt, AdapterCheckpoint) else None,
    }


def _kind(key: str, component) -> str:
    if key == TRANSFORMER:
        return "transformer"
    return "head file" if is_head_file(component) else "sentence-transformers module"


def config_differences(checkpoints: list[CheckpointLike]) -> list[str]:
    """Config values that differ between models, as ``key: a vs b``."""
    keys = sorted({k for c in checkpoints for k in c.config} - CONFIG_KEYS_IGNORED)
    differences = []
    for key in keys:
        values = [c.config.get(key) for c in checkpoints]
        if any(v != values[0] for v in values[1:]):
            differences.append(f"{key}: " + " vs ".join(repr(v) for v in values))
    return differences


def inspect_models(sources: list[str], adapter_base: Optional[str] = None) -> dict:
    """Describe each model (a LoRA adapter folder on ``adapter_base`` or the base its config names); for
    two or more, say whether they can be merged and what differs."""
    checkpoints = []
    try:
        for source, base in zip(sources, bases_for(sources, adapter_base)):
            checkpoints.append(open_path(source, base))
        report: dict = {"models": [describe(c) for c in checkpoints]}
        if len(checkpoints) > 1:
            report["config_differences"] = config_differences(checkpoints)
            try:
                plan = build_plan(checkpoints)
                counts = plan.summary()
                report.update(mergeable=True, reason=None, notes=plan.notes, merged_tensors=counts["merged_tensors"],
                              copied_tensors=counts["copied_tensors"])
            except CocktailError as exc:
                report.update(mergeable=False, reason=str(exc), notes=[])
        return report
    finally:
        for c in checkpoints:
            c.close()


def format_report(report: dict) -> str:
    lines = []
    for m in report["models"]:
        dtypes = ", ".join(f"{k} {v:,}" for k, v in m["dtypes"].items()) or "none"
        lines += [
            m["path"],
            f"  architecture  {m['architecture'] or '?'} ({m['model_type'] or '?'})",
            f"  parameters    {m['parameters']:,}  ({dtypes})",
            f"  shape         hidden {m['hidden_size']}, layers {m['num_layers']}, vocab {m['vocab_size']}",
            f"  layout        {m['layout']}: {', '.join(m['files'])}",
        ]
        if m["modules"]:
            lines.append(f"  modules       {', '.join(m['modules'])} (merged too)")
        if m["head_files"]:
            lines.append(f"  head files    {', '.join(m['head_files'])} (merged too)")
        if m.get("adapter"):
            lines += _adapter_lines(m["adapter"])
    if "mergeable" in report:
        lines.append("")
        if report["mergeable"]:
            lines.append(f"mergeable: yes ({report['merged_tensors']} tensors merged, {report['copied_tensors']} "
                         "copied, as cocktail merge counts them)")
        else:
            lines.append(f"mergeable: no: {report['reason']}")
        for note in report["notes"]:
            lines.append(f"  note: {note}")
        if report["config_differences"]:
            lines.append("config differences:")
            lines += [f"  {d}" for d in report["config_differences"]]
    return "\n".join(lines)


def _adapter_lines(adapter: dict) -> list[str]:
    scale = "alpha / sqrt(r)" if adapter["use_rslora"] else "alpha / r"
    targets = adapter["target_modules"]
    targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
    lines = [f"  adapter       LoRA r={adapter['r']}, lora_alpha {adapter['lora_alpha']} (scale {scale}), on base "
             f"{adapter['base']} (from {adapter['base_from']})",
             f"  targets       {targets}: {adapter['lora_modules']} modules"]
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter[key]:
            lines.append(f"  {key:<13} {adapter[key]}")
    if adapter["replaced_tensors"]:
        lines.append(f"  saved whole   {', '.join(adapter['replaced_tensors'])} (replace the base's)")
    return lines
