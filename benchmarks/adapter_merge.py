"""Wall time and peak RSS of applying a LoRA adapter to its base: cocktail beside PEFT.

Makes, in a temporary folder (or --workdir), a random fp32 checkpoint shaped like bge-base (BERT,
110M parameters) and a LoRA adapter for it (r=--rank on query, key, value and the attention output;
random A and B), then runs, each in a fresh process:

- cocktail: `python -m cocktail merge --models ./lora --weights 1 --output ... --quiet` (the adapter
            is read as its base with W + s * B @ A applied, tensor by tensor);
- peft:     what a PEFT user writes: `AutoModel.from_pretrained(base)`,
            `PeftModel.from_pretrained(model, lora).merge_and_unload()`, `save_pretrained(out)`;
- mix:      cocktail's "fine-tune mixed with its base", `--models ./lora ./base --weights 0.5 0.5`
            (PEFT has no one-step equivalent).

Each runs --repeats times with a warm page cache; the median wall time and the largest peak RSS are
reported. Needs peft (in the test extra). Usage:

    python benchmarks/adapter_merge.py [--rank 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from measure import measure

SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TARGETS = ["query", "key", "value", "attention.output.dense"]

PEFT_MERGE = r"""
import sys
from peft import PeftModel
from transformers import AutoModel
base, lora, out = sys.argv[1:]
model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), lora).merge_and_unload()
model.save_pretrained(out)
"""


def make_base_and_adapter(work: Path, rank: int) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    base, lora = work / "base", work / f"lora-r{rank}"
    if not (base / "model.safetensors").exists():
        base.mkdir(parents=True, exist_ok=True)
        config = BertConfig(**SHAPE)
        with torch.device("meta"):
            skeleton = BertModel(config)
        generator = torch.Generator().manual_seed(0)
        tensors = {name: (torch.randn(t.shape, generator=generator) * 0.02 if t.is_floating_point()
                          else torch.zeros(t.shape, dtype=t.dtype)) for name, t in skeleton.state_dict().items()}
        save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(base))
    if not (lora / "adapter_model.safetensors").exists():
        model = get_peft_model(BertModel.from_pretrained(str(base)),
                               LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        model.save_pretrained(str(lora))
        config_path = lora / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = str(base)
        config_path.write_text(json.dumps(config))
    return base, lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", help="keep the checkpoints here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cocktail-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        base, lora = make_base_and_adapter(work, args.rank)
        out = work / "out"
        commands = {
            "cocktail": [sys.executable, "-m", "cocktail", "merge", "--models", str(lora), "--weights", "1",
                         "--output", str(out / "cocktail"), "--force", "--quiet"],
            "peft": [sys.executable, "-c", PEFT_MERGE, str(base), str(lora), str(out / "peft")],
            "mix": [sys.executable, "-m", "cocktail", "merge", "--models", str(lora), str(base), "--weights", "0.5",
                    "0.5", "--output", str(out / "mix"), "--force", "--quiet"],
        }
        for name, command in commands.items():
            rows.append({"tool": name, "rank": args.rank, **measure(command, args.repeats, warmup=1)})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"adapter r={args.rank} on a bge-base-shaped BERT (fp32, 110M parameters), python {sys.version.split()[0]}")
    print(f"{'tool':9s} {'wall s':>8s} {'peak RSS MB':>12s}")
    for r in rows:
        print(f"{r['tool']:9s} {r['wall_s']:8.2f} {r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
