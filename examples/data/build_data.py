"""Rebuild the small data files in this folder from the full public data sets (see README.md here).

    python examples/data/build_data.py [/path/to/shared/data]    # default: ../shared/data from the repository root

Deterministic: the same sources give the same files (fixed seed, sorted ids, gzip without a timestamp).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
EVAL_DISTRACTORS = 117  # documents besides the relevant ones in the evaluation corpus (400 in all)
STS_PAIRS = 400


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [(q, d, int(s)) for q, d, s in rows[1:]]


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(text.encode("utf-8"))


def jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(shared: Path) -> None:
    rng = random.Random(SEED)
    scifact = shared / "scifact"
    corpus = {d["_id"]: d for d in read_jsonl_gz(scifact / "corpus.jsonl.gz")}
    queries = {q["_id"]: q["text"] for q in read_jsonl_gz(scifact / "queries.jsonl.gz")}
    test, train = read_qrels(scifact / "qrels" / "test.tsv.gz"), read_qrels(scifact / "qrels" / "train.tsv.gz")

    # evaluation: every SciFact test query, its relevant abstracts, and random other abstracts
    relevant = sorted({d for _, d, _ in test}, key=int)
    train_docs = {d for _, d, _ in train}
    others = sorted((d for d in corpus if d not in set(relevant) and d not in train_docs), key=int)
    docs = sorted(relevant + rng.sample(others, EVAL_DISTRACTORS), key=int)
    test_queries = sorted({q for q, _, _ in test}, key=int)
    out = HERE / "scifact"
    write_gz(out / "corpus.jsonl.gz", jsonl({"_id": d, "title": corpus[d]["title"], "text": corpus[d]["text"]}
                                            for d in docs))
    write_gz(out / "queries.jsonl.gz", jsonl({"_id": q, "text": queries[q]} for q in test_queries))
    write_gz(out / "qrels" / "test.tsv.gz", "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in test))

    # training: SciFact train claims with their cited abstracts (one record per claim), shuffled
    by_query: dict[str, list[str]] = {}
    for q, d, _ in train:
        by_query.setdefault(q, []).append(d)
    records = [{"query": queries[q], "pos": [f"{corpus[d]['title']} {corpus[d]['text']}".strip() for d in ds]}
               for q, ds in sorted(by_query.items(), key=lambda item: int(item[0]))]
    rng.shuffle(records)
    write_gz(HERE / "scifact-train.jsonl.gz", jsonl(records))

    # general skill: sentence pairs from the STS Benchmark test split
    with tarfile.open(shared / "stsbenchmark" / "Stsbenchmark.tar.gz") as tar:
        lines = tar.extractfile("stsbenchmark/sts-test.csv").read().decode("utf-8").splitlines()
    rows = [line.split("\t")[:7] for line in lines if line.strip()]
    picked = sorted(rng.sample(range(len(rows)), STS_PAIRS))
    text = "sentence1\tsentence2\tscore\n" + "".join(f"{rows[i][5]}\t{rows[i][6]}\t{rows[i][4]}\n" for i in picked)
    (HERE / "sts-test-400.tsv").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1].parent / "shared" / "data")  # beside the checkout
