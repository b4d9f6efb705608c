"""How token states become one sentence embedding: the model's own pooling.

A sentence-transformers folder says it in its Pooling module's ``config.json`` (``pooling_mode`` since
sentence-transformers 5, ``pooling_mode_*_token(s)`` flags before); a bare transformers folder is
pooled like BGE: the ``[CLS]`` token. Used by the few-shot losses and by ``cocktail eval`` / ``sweep``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cocktail.errors import InputError
from cocktail.io.checkpoints import read_json

LEGACY_POOLING_KEYS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                       ("pooling_mode_mean_tokens", "mean"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                       ("pooling_mode_weightedmean_tokens", "weightedmean"), ("pooling_mode_lasttoken", "lasttoken"))
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")


@dataclass(frozen=True)
class Pooling:
    """Pooling modes (concatenated when several, as in sentence-transformers) and where they came from."""

    modes: tuple[str, ...] = ("cls",)
    source: str = "default (BGE: [CLS])"

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``(batch, tokens, dim)`` states with the attention mask (right-padded rows)."""
        mask_f = mask.unsqueeze(-1).to(hidden.dtype)
        parts = []
        for mode in self.modes:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(mask_f == 0, float("-inf")).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                total = (hidden * mask_f).sum(dim=1)
                count = mask_f.sum(dim=1).clamp(min=1e-9)
                parts.append(total / (count if mode == "mean" else count.sqrt()))
            elif mode == "lasttoken":
                last = mask.sum(dim=1).long() - 1
                parts.append(hidden[torch.arange(hidden.size(0), device=hidden.device), last])
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


LAST_TOKEN = Pooling(("lasttoken",), "default (LLM embedders: the last token)")


def read_pooling(root: Path, default: Pooling = Pooling()) -> Pooling:
    """The pooling a model folder asks for: its sentence-transformers Pooling module, else ``default``
    (``[CLS]``, as BGE; :data:`LAST_TOKEN` for decoder embedders)."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return default
    modules = read_json(modules_path, root=root)
    pooling_dir = next((m.get("path", "") for m in modules if isinstance(m, dict)
                        and str(m.get("type", "")).endswith("Pooling")), None) if isinstance(modules, list) else None
    if pooling_dir is None:
        return default
    config_path = root / pooling_dir / "config.json"
    config = read_json(config_path, dict, "a JSON object", root=root)
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(name for key, name in LEGACY_POOLING_KEYS if config.get(key)) or ("mean",)
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise InputError(f"{config_path}: pooling mode {unsupported[0]!r} is not supported "
                         f"(supported: {', '.join(POOLING_MODES)})")
    return Pooling(modes, f"{config_path.relative_to(root)} ({'+'.join(modes)})")
