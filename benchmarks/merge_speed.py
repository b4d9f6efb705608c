"""Wall time and peak RSS of `cocktail merge`, beside an I/O floor and an LM-Cocktail-style merge.

Makes random fp32 checkpoints shaped like bge-base (110M parameters) and bge-large (335M) in a
temporary folder (or --workdir), then runs, each in a fresh process:

- floor:    a script that only reads every input tensor once (safetensors, copied out of the memory
            map so that every byte is really read) and writes one output of the same size with
            safetensors.save_file; the least any merge tool can do.
- cocktail: `python -m cocktail merge --models ... --output ... --quiet`.
- naive:    what LM-Cocktail does: from_pretrained every model, average the state dicts,
            save_pretrained (only with --naive; it holds every model in memory).

Each case runs --repeats times with a warm page cache; the median wall time and the largest peak RSS
are reported. Usage:

    python benchmarks/merge_speed.py                 # 2 x base, 3 x base, 2 x large
    python benchmarks/merge_speed.py --only base2 --repeats 5 --naive
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from measure import measure

REPO = Path(__file__).resolve().parent.parent

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
CASES = {"base2": ("base", 2), "base3": ("base", 3), "large2": ("large", 2)}


FLOOR = r"""
import sys
from safetensors import safe_open
from safetensors.torch import save_file
out, inputs = sys.argv[1], sys.argv[2:]
keep = {}
for i, path in enumerate(inputs):
    with safe_open(path, framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name).clone()  # safe_open maps the file: clone() makes the read real
            if i == 0:
                keep[name] = t
save_file(keep, out, metadata={"format": "pt"})
"""

NAIVE = r"""
import sys, torch
from transformers import AutoModel
out, inputs = sys.argv[1], sys.argv[2:]
weights = [1.0 / len(inputs)] * len(inputs)
states = [AutoModel.from_pretrained(p).state_dict() for p in inputs]
merged = {k: sum(w * s[k] for w, s in zip(weights, states)) if s[k].is_floating_point() else states[0][k]
          for k in states[0] for s in states[:1]}
model = AutoModel.from_pretrained(inputs[0])
model.load_state_dict(merged)
model.save_pretrained(out)
"""


def make_checkpoint(folder: Path, shape: str, seed: int) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(**SHAPES[shape])
    with torch.device("meta"):
        skeleton = BertModel(config)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in skeleton.state_dict().items():
        if t.is_floating_point():
            tensors[name] = torch.randn(t.shape, generator=generator) * 0.02
        else:
            tensors[name] = torch.zeros(t.shape, dtype=t.dtype)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(folder))
    return folder


def run_case(work: Path, case: str, repeats: int, naive: bool) -> list[dict]:
    shape, count = CASES[case]
    models = [make_checkpoint(work / f"{shape}-{i}", shape, seed=i) for i in range(count)]
    out = work / "out"
    commands = {
        "floor": [sys.executable, "-c", FLOOR, str(work / "floor.safetensors"), *(str(m / "model.safetensors") for m in models)],
        "cocktail": [sys.executable, "-m", "cocktail", "merge", "--models", *map(str, models), "--output", str(out),
                     "--force", "--quiet"],
    }
    if naive:
        commands["naive"] = [sys.executable, "-c", NAIVE, str(work / "naive"), *map(str, models)]
    rows = []
    for name, command in commands.items():
        result = measure(command, repeats, warmup=1)  # the warm-up run fills the page cache
        rows.append({"case": case, "tool": name, **result})
    shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only these cases")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also time an LM-Cocktail-style in-memory merge")
    parser.add_argument("--workdir", help="keep the random checkpoints here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cocktail-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env_note = f"python {sys.version.split()[0]}"
    rows = []
    try:
        for case in args.only or list(CASES):
            rows += run_case(work, case, args.repeats, args.naive)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'case':8s} {'tool':9s} {'wall s':>8s} {'x floor':>8s} {'peak RSS MB':>12s}   ({env_note})")
    floors = {r["case"]: r["wall_s"] for r in rows if r["tool"] == "floor"}
    for r in rows:
        print(f"{r['case']:8s} {r['tool']:9s} {r['wall_s']:8.2f} {r['wall_s'] / floors[r['case']]:8.2f} {r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
