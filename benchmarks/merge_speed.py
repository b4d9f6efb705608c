"""`cocktail merge` against the I/O floor, paired run by run, on an idle machine and with one core busy.

Makes random fp32 checkpoints shaped like bge-base (110M parameters) and bge-large (335M) in a
temporary folder (or --workdir), then times, each in a fresh process:

- floor:    a script that only reads every input tensor once (safetensors, copied out of the memory
            map so that every byte is really read) and writes one output of the same size with
            safetensors.save_file; the least any merge tool can do.
- cocktail, first run: `python -m cocktail merge --models ... --output ... --force --quiet` with an
            empty hash cache (COCKTAIL_CACHE_DIR a fresh folder): every input is hashed.
- cocktail, repeated run: the same with the hash cache of an earlier run of the same inputs.
- naive:    what LM-Cocktail does: from_pretrained every model, average the state dicts,
            save_pretrained (only with --naive; it holds every model in memory).

The paired method: after one uncounted run of each (the page cache is then warm), each pair runs
the floor and both cocktail runs back to back (their order rotating from pair to pair), and the
ratio to the floor is taken pair by pair; the table gives the median of those ratios (at least 7
pairs by default), so that a machine whose speed drifts (other jobs) compares like with like.
Each case is measured idle and busy: busy, the benchmark itself keeps one core busy with a CPU-bound
loop (a child process, bounded in time and stopped when the measurement ends). Peak RSS is the
largest over all runs, checked against the limits cocktail holds (2 x base <= 600 MB,
2 x large <= 800 MB). Usage:

    python benchmarks/merge_speed.py                         # base2, base3, large2; idle and busy
    python benchmarks/merge_speed.py --only base2 --pairs 3 --load idle    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import measure, measure_once

REPO = Path(__file__).resolve().parent.parent

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
CASES = {"base2": ("base", 2), "base3": ("base", 3), "large2": ("large", 2)}
RSS_LIMIT_MB = {"base2": 600, "large2": 800}  # what cocktail promises (README, Benchmarks)
BUSY_LIMIT_S = 1800  # the busy loop never outlives this, whatever happens to the benchmark


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


def make_checkpoint(folder: Path, shape, seed: int) -> Path:
    """A random fp32 BertModel checkpoint of ``shape`` (a name in :data:`SHAPES`, or BertConfig's
    keyword arguments) in ``folder``, unless one is there already."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(**(SHAPES[shape] if isinstance(shape, str) else shape))
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



BUSY = r"""
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""


class BusyCore:
    """A CPU-bound child process keeping one core busy for at most ``limit`` seconds (stopped on exit)."""

    def __init__(self, limit: float = BUSY_LIMIT_S):
        self.limit = limit
        self.proc = None

    def __enter__(self) -> "BusyCore":
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY, str(self.limit)])
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def commands(work: Path, case: str) -> tuple[list[str], list[str], list[Path]]:
    shape, count = CASES[case]
    models = [make_checkpoint(work / f"{shape}-{i}", shape, seed=i) for i in range(count)]
    floor = [sys.executable, "-c", FLOOR, str(work / "floor.safetensors"), *(str(m / "model.safetensors") for m in models)]
    cocktail = [sys.executable, "-m", "cocktail", "merge", "--models", *map(str, models), "--output",
                str(work / "out"), "--force", "--quiet"]
    return floor, cocktail, models


def cache_env(folder: Path) -> dict:
    env = dict(os.environ, COCKTAIL_CACHE_DIR=str(folder))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")  # this checkout's cocktail
    return env


def run_pairs(work: Path, case: str, pairs: int) -> dict:
    """Paired runs of the floor, cocktail's first run and its repeated run: medians of per-pair ratios."""
    floor, cocktail, _ = commands(work, case)
    warm_cache = work / "cache-warm"
    shutil.rmtree(warm_cache, ignore_errors=True)
    measure_once(floor)  # page cache warm
    measure_once(cocktail, cache_env(warm_cache))  # and the hash cache of the repeated runs
    if not (warm_cache / "sha256.json").exists():  # inputs written under 2 s ago are not remembered yet
        time.sleep(2)
        measure_once(cocktail, cache_env(warm_cache))
    runs = {"floor": [], "first": [], "repeated": []}
    for pair in range(pairs):
        cold_cache = work / f"cache-cold-{pair}"
        jobs = [("floor", floor, None), ("first", cocktail, cache_env(cold_cache)),
                ("repeated", cocktail, cache_env(warm_cache))]
        for _ in range(pair % 3):  # rotate the order, so neither tool always runs first
            jobs.append(jobs.pop(0))
        for name, command, env in jobs:
            runs[name].append(measure_once(command, env))
        shutil.rmtree(cold_cache, ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    walls = {name: [r["wall_s"] for r in rs] for name, rs in runs.items()}
    return {
        "case": case, "pairs": pairs,
        "floor_s": statistics.median(walls["floor"]),
        **{f"{name}_s": statistics.median(walls[name]) for name in ("first", "repeated")},
        **{f"{name}_ratio": statistics.median(c / f for c, f in zip(walls[name], walls["floor"]))
           for name in ("first", "repeated")},
        **{f"{name}_cpu_s": statistics.median(r["cpu_s"] for r in runs[name]) for name in runs},
        "cocktail_rss_mb": max(r["peak_rss_mb"] for r in runs["first"] + runs["repeated"]),
        "floor_rss_mb": max(r["peak_rss_mb"] for r in runs["floor"]),
    }


def run_naive(work: Path, case: str, repeats: int) -> dict:
    _, _, models = commands(work, case)
    result = measure([sys.executable, "-c", NAIVE, str(work / "naive"), *map(str, models)], repeats, warmup=1)
    shutil.rmtree(work / "naive", ignore_errors=True)
    return result


def print_table(load: str, rows: list[dict]) -> None:
    print(f"\n{load}: median of per-pair ratios to the floor ({rows[0]['pairs']} pairs)\n")
    print("| case | floor | cocktail, first run (cold hash cache) | cocktail, repeated run | CPU s floor / first / "
          "repeated | cocktail peak RSS | floor peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        limit = RSS_LIMIT_MB.get(r["case"])
        rss = f"{r['cocktail_rss_mb']:.0f} MB" + (f" ({'ok' if r['cocktail_rss_mb'] <= limit else 'OVER'} <= {limit})"
                                                  if limit else "")
        print(f"| {r['case']} | {r['floor_s']:.2f} s | {r['first_ratio']:.2f}x ({r['first_s']:.2f} s) | "
              f"{r['repeated_ratio']:.2f}x ({r['repeated_s']:.2f} s) | {r['floor_cpu_s']:.2f} / {r['first_cpu_s']:.2f} / "
              f"{r['repeated_cpu_s']:.2f} | {rss} | {r['floor_rss_mb']:.0f} MB |")
        if "naive_s" in r:
            print(f"|   naive (LM-Cocktail style) | | {r['naive_s'] / r['floor_s']:.2f}x ({r['naive_s']:.2f} s) | | | "
                  f"{r['naive_rss_mb']:.0f} MB | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only these cases")
    parser.add_argument("--pairs", type=int, default=7, help="paired runs per case and load (default 7)")
    parser.add_argument("--load", choices=["idle", "busy"], action="append",
                        help="measure only idle or only with one core busy (default: both)")
    parser.add_argument("--naive", action="store_true", help="also time an LM-Cocktail-style in-memory merge (idle)")
    parser.add_argument("--workdir", help="keep the random checkpoints here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cocktail-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = {}
    try:
        for load in args.load or ["idle", "busy"]:
            rows = []
            for case in args.only or list(CASES):
                if load == "busy":
                    with BusyCore():
                        rows.append({**run_pairs(work, case, args.pairs), "load": load})
                else:
                    rows.append({**run_pairs(work, case, args.pairs), "load": load})
                    if args.naive:
                        naive = run_naive(work, case, 3)
                        rows[-1].update(naive_s=naive["wall_s"], naive_rss_mb=naive["peak_rss_mb"])
            tables[load] = rows
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(tables, indent=2))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, 1-minute load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    for load, rows in tables.items():
        print_table("idle" if load == "idle" else "one core busy (a CPU-bound loop beside it)", rows)


if __name__ == "__main__":
    main()
