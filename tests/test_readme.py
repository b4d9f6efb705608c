"""The README is executable truth: every shell, YAML and Python snippet in it runs as written, in a
folder holding tiny models under the names the snippet uses, and succeeds.

A snippet that cannot run as written (the install commands CI itself runs, a reference listing of
every recipe key, a fragment that uses the reader's own objects) is marked, just above its fence,
with ``<!-- readme-test: skip (why) -->``; a snippet about decoder models runs among tiny decoders
when marked ``<!-- readme-test: world=decoder -->``. An unmarked snippet that fails fails this test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_bert, make_decoder, make_lora, make_m3

README = REPO / "README.md"
LANGUAGES = ("bash", "yaml", "python")
FENCE = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)


def snippets() -> list:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if match["lang"] not in LANGUAGES:
            continue
        line = text[: match.start("body")].count("\n")
        found.append(pytest.param(match["lang"], match["body"], match["mark"] or "", id=f"README.md:{line}"))
    return found


ENCODERS = ["bge-with-inst", "bge-no-inst", "ft-a", "ft-b", "base", "ft", "a", "b", "c", "fine-tuned", "bge-small"]
RERANKERS = ["rr-ft", "bge-reranker-base"]
M3 = ["m3-ft-a", "m3-ft-b"]
DECODERS = ["base", "gemma-ft", "bge-reranker-v2-gemma", "icl-a", "icl-b"]
ADAPTERS = ["lora-ft", "lora-a", "lora-b"]


def _data(world: Path) -> None:
    """Few-shot examples, a BEIR folder and an STS file under the names the README uses."""
    rows = [{"query": f"red cat {i}", "pos": [f"the cat is red {i}"], "neg": ["the dog is blue", "sun moon star"]}
            for i in range(6)]
    for name in ("few.jsonl", "target.jsonl", "keep.jsonl", "dev.jsonl"):
        (world / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    sts = "".join(f"{a}\t{b}\t{s}\n" for a, b, s in [("the cat is red", "a red cat", 4), ("the dog", "sun moon", 1),
                                                    ("red", "blue", 2), ("one two three", "one two", 3.5),
                                                    ("fire", "water", 0.5)])
    for name in ("sts.tsv", "general.tsv", "sick.tsv"):
        (world / name).write_text(sts)
    for name in ("scifact", "target"):
        folder = world / name
        (folder / "qrels").mkdir(parents=True)
        docs = {"d1": "the cat is red", "d2": "the dog is blue", "d3": "one two three", "d4": "sun moon star sky"}
        queries = {"q1": "red cat", "q2": "blue dog", "q3": "sky star"}
        (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                                     for k, v in docs.items()))
        (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n"
                                                      for k, v in queries.items()))
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td4\t1\n")
    (world / "my.yaml").write_text("models:\n  - {path: ./a, weight: 0.7}\n  - {path: ./b, weight: 0.3}\noutput: ./merged\n")
    (world / "run.trec").write_text("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d3 2 1.0 bm25\nq2 Q0 d2 1 2.0 bm25\n"
                                    "q2 Q0 d4 2 1.0 bm25\nq3 Q0 d4 1 2.0 bm25\nq3 Q0 d1 2 1.0 bm25\n")
    shutil.copytree(REPO / "recipes", world / "recipes")
    (world / "examples").mkdir()
    os.symlink(REPO / "examples" / "data", world / "examples" / "data")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    """Each world made once; every snippet runs in a fresh copy of one."""
    encoder = tmp_path_factory.mktemp("encoder-world")
    for seed, name in enumerate(ENCODERS):
        make_bert(encoder / name, seed=seed)
    for seed, name in enumerate(RERANKERS):
        make_bert(encoder / name, seed=seed, model_class="BertForSequenceClassification")
    for seed, name in enumerate(M3):
        make_m3(encoder / name, seed=seed)
    _data(encoder)
    decoder = tmp_path_factory.mktemp("decoder-world")
    for seed, name in enumerate(DECODERS):
        make_decoder(decoder / name, seed=seed)
    from peft import LoraConfig

    for seed, name in enumerate(ADAPTERS):
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        make_lora(decoder / "base", decoder / name, config, "AutoModelForCausalLM", seed=seed,
                  base_name=str(decoder / "base"))
    _data(decoder)
    return {"encoder": encoder, "decoder": decoder}


def _run(lang: str, body: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if lang == "bash":  # `cocktail` is this checkout's, as `pip install -e .` would make it
        script = f'set -euo pipefail\ncocktail() {{ "{sys.executable}" -m cocktail "$@"; }}\n{body}'
        command = ["bash", "-c", script]
    elif lang == "yaml":  # a recipe: run as written, into ./snippet-out unless it names an output
        (cwd / "snippet.yaml").write_text(body)
        extra = [] if re.search(r"^output:", body, re.M) else ["--output", "snippet-out"]
        command = [sys.executable, "-m", "cocktail", "run", "snippet.yaml", *extra]
    else:
        command = [sys.executable, "-c", body]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("lang, body, mark", snippets())
def test_readme_snippet_runs_as_written(lang, body, mark, worlds, tmp_path):
    if mark.startswith("skip"):
        assert re.fullmatch(r"skip \(.+\)", mark), f"say why a snippet is skipped: {mark!r}"
        pytest.skip(mark)
    world = re.fullmatch(r"world=(\w+)", mark)
    assert mark == "" or world, f"unknown readme-test mark {mark!r}"
    cwd = tmp_path / "world"
    shutil.copytree(worlds[world[1] if world else "encoder"], cwd, symlinks=True)
    proc = _run(lang, body, cwd)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def test_every_shipped_recipe_is_in_the_readme_table():
    text = README.read_text(encoding="utf-8")
    table = {m for m in re.findall(r"^\| `(recipes/[\w.-]+\.yaml)` \|", text, re.M)}
    shipped = {f"recipes/{p.name}" for p in (REPO / "recipes").glob("*.yaml")}
    assert shipped == table, f"not in the table: {sorted(shipped - table)}; not shipped: {sorted(table - shipped)}"
