"""Scoring big models on the machines people have: a score dtype, a device map that spreads a model over
the CPU and disk (accelerate), and a memory estimate that refuses, before loading, a run that would not fit.

Every model here is tiny, so "big" is made by small caps: ``--max-memory cpu=100KiB`` puts the layers of
a 150 kB model on disk. Losses and scores must be the in-memory ones (float tolerance), and the offload
folder must be gone afterwards, also after an error or Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_bert, make_decoder, make_m3, run_cli, snapshot
from safetensors.torch import load_file, save_file

import cocktail
from cocktail.errors import CocktailWarning, OutputError
from cocktail.evaluation.evaluate import evaluate_models
from cocktail.evaluation.sweep import sweep_weights
from cocktail.io.adapters import open_path
from cocktail.merging.plan import build_plan
from cocktail.modeling.encoder import Encoder
from cocktail.modeling.placement import Placement
from cocktail.modeling.skeleton import Skeleton
from cocktail.recipe.scoring import ScoringOptions

EXAMPLES = [
    {"query": "the cat sat", "pos": ["the cat sat on the mat"], "neg": ["red car blue car", "the sun and the moon"]},
    {"query": "capital of france", "pos": ["paris is the capital"], "neg": ["a dog runs in the park"]},
    {"query": "protein cell", "pos": ["science paper claim study result protein cell gene"],
     "neg": ["merge models with a cocktail of weights", "the moon"]},
    {"query": "what is the capital", "pos": ["paris is the capital of france"], "neg": ["red car", "the sun"]},
]
STS = "the cat sat on the mat\ta cat sat on a mat\t4.5\nred car\tblue car\t3.0\nthe sun\tthe moon\t1.0\n"
SMALL_CPU = "cpu=100KiB"  # of a ~150 kB tiny decoder: the embeddings on the CPU, the layers on disk
TOLERANCE = 1e-5  # offloaded weights are the same bytes: only the order of float operations may differ
# bfloat16 keeps 8 bits of mantissa: a loss of a few units moves by about 1% of itself, never more than this
BF16_TOLERANCE = 0.02


def decoders(tmp_path: Path, model_type: str) -> list[str]:
    model_class = "Model" if model_type == "llm-embedder" else "ForCausalLM"
    return [str(make_decoder(tmp_path / f"{model_type}-{seed}", seed=seed, model_class=model_class))
            for seed in (1, 2)]


def offloaded(options: dict, folder: Path) -> dict:
    return {**options, "device_map": "auto", "max_memory": SMALL_CPU, "offload_folder": str(folder)}


@pytest.mark.parametrize("model_type", ["llm-embedder", "llm-reranker"])
def test_offloaded_decoders_give_the_in_memory_losses_weights_and_search(tmp_path, model_type):
    models = decoders(tmp_path, model_type)
    options = dict(model_type=model_type, search=True, search_budget=4, device="cpu")
    in_memory = cocktail.few_shot_losses(models, EXAMPLES, **options)
    folder = tmp_path / "offload"
    with pytest.warns(CocktailWarning, match="on cpu, .* on disk") as notices:
        spread = cocktail.few_shot_losses(models, EXAMPLES, **offloaded(options, folder))
    assert str(folder) in str(notices[0].message)  # cocktail made the folder: it was the offload folder
    assert spread.device_map == "auto"
    assert spread.losses == pytest.approx(in_memory.losses, abs=TOLERANCE)
    assert spread.weights == pytest.approx(in_memory.weights, abs=TOLERANCE)
    # the merged candidates of --search were scored through the same map: the same points, the same answer
    assert [p["loss"] for p in spread.search.points] == pytest.approx([p["loss"] for p in in_memory.search.points],
                                                                      abs=TOLERANCE)
    assert not folder.exists()


def test_disk_weights_are_files_while_the_model_is_used_and_go_with_it(tmp_path):
    model = make_decoder(tmp_path / "m", seed=3, model_class="Model")
    parent = tmp_path / "scratch"
    parent.mkdir()
    scoring = ScoringOptions(device_map="sequential", max_memory=SMALL_CPU, offload_folder=str(parent))
    with open_path(str(model)) as checkpoint:
        plan = build_plan([checkpoint], dtype=torch.float32)
        with pytest.warns(CocktailWarning, match="on disk"):
            skeleton = Skeleton(plan, "llm-embedder", Placement.make(scoring, "cpu", plan))
        folder = skeleton.placement.folder.path
        skeleton.fill_from_checkpoint(0)
        written = sorted(p.name for p in folder.glob("*.dat"))
        assert written and all(p.stat().st_size > 0 for p in folder.glob("*.dat"))
        ids = torch.tensor([[1, 5, 9, 12, 2]])
        spread = skeleton.model(input_ids=ids).last_hidden_state
        reference = Skeleton(plan, "llm-embedder", "cpu")
        reference.fill_from_checkpoint(0)
        assert torch.allclose(spread, reference.model(input_ids=ids).last_hidden_state, atol=TOLERANCE)
        skeleton.close()
    assert folder.parent == parent and not folder.exists()
    assert parent.is_dir() and not any(parent.iterdir())  # the folder given is kept: only what cocktail made goes


def write_examples(tmp_path: Path) -> Path:
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return path


def test_the_offload_folder_is_removed_after_an_error(tmp_path):
    good, broken = decoders(tmp_path, "llm-embedder")
    weights = Path(broken) / "model.safetensors"
    tensors = load_file(str(weights))
    tensors = {name: torch.full_like(t, float("nan")) if name.endswith("norm.weight") else t
               for name, t in tensors.items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    folder = tmp_path / "offload"
    result = run_cli("weights", "--models", good, broken, "--model-type", "llm-embedder", "--examples",
                     write_examples(tmp_path), "--device", "cpu", "--device-map", "auto", "--max-memory", SMALL_CPU,
                     "--offload-folder", folder)
    assert result.returncode == 2, result
    assert "on disk" in result.stderr and "its loss on the examples is nan" in result.stderr
    assert not folder.exists()


def test_the_offload_folder_is_removed_after_ctrl_c(tmp_path):
    models = decoders(tmp_path, "llm-reranker")
    parent = tmp_path / "scratch"
    parent.mkdir()
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COCKTAIL_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "cocktail", "weights", "--models", *models, "--model-type", "llm-reranker",
               "--examples", str(write_examples(tmp_path)), "--device", "cpu", "--device-map", "auto",
               "--max-memory", SMALL_CPU, "--offload-folder", str(parent), "--search", "--search-budget", "100000"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=default_sigint) as process:
        for line in process.stderr:  # the notice says the weights are on disk: the losses and search are to come
            if "offload folder" in line:  # (the search converges in a few merges: later, it may be done first)
                break
        assert any(parent.iterdir()), "the offload folder exists while the model is scored"
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=120) == 130, rest
    assert "interrupted" in rest
    assert not any(parent.iterdir())


HEAP_PROBE = """
import sys, torch
from cocktail.modeling.placement import bound_heap
assert bound_heap()
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
t = torch.empty(4 << 20).fill_(1.0); del t
base = rss()
big, small = [], []
for i in range(32):  # 8 MiB tensors (an offloaded layer's weights) between small ones that stay
    big.append(torch.empty(2 << 20).fill_(1.0))
    small.append(torch.empty(1024).fill_(1.0))
del big
print((rss() - base) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_bounded_heap_gives_freed_layer_weights_back_to_the_system():
    """What the weights of offloaded layers, loaded and freed at every forward pass, leave behind: with
    glibc's default thresholds this probe keeps 64 MiB of 256 freed; a spread model's process keeps none."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 16, proc.stdout


def test_every_scoring_placement_bounds_the_heap(tmp_path, monkeypatch):
    from cocktail.modeling import placement

    calls = []
    monkeypatch.setattr(placement, "bound_heap", lambda: calls.append(1) or True)
    models = decoders(tmp_path, "llm-embedder")
    with open_path(str(models[0])) as checkpoint:
        plan = build_plan([checkpoint])
        Placement.make(ScoringOptions(), "cpu", plan)
        Placement.make(ScoringOptions(device_map="auto", max_memory=SMALL_CPU), "cpu", plan)
        assert calls == [1, 1]


def test_an_offload_folder_inside_an_input_is_refused(tmp_path):
    models = decoders(tmp_path, "llm-embedder")
    before = snapshot(models[0])
    with pytest.raises(OutputError, match="inside the input"):
        cocktail.few_shot_losses(models, EXAMPLES, model_type="llm-embedder", device="cpu", device_map="auto",
                                 max_memory=SMALL_CPU, offload_folder=Path(models[0]) / "offload")
    assert snapshot(models[0]) == before


def test_bfloat16_losses_are_close_to_float32_ones(tmp_path):
    models = decoders(tmp_path, "llm-reranker")
    full = cocktail.few_shot_losses(models, EXAMPLES, model_type="llm-reranker", device="cpu")
    half = cocktail.few_shot_losses(models, EXAMPLES, model_type="llm-reranker", device="cpu", score_dtype="bfloat16")
    assert (full.score_dtype, half.score_dtype) == ("float32", "bfloat16")
    assert half.losses != full.losses  # it did run in bfloat16
    assert half.losses == pytest.approx(full.losses, abs=BF16_TOLERANCE)
    assert half.weights == pytest.approx(full.weights, abs=BF16_TOLERANCE)


def test_a_bfloat16_model_gives_float32_embeddings(tmp_path):
    folder = make_bert(tmp_path / "bert", seed=4)
    texts = ["the cat sat on the mat", "red car blue car", "the sun"]
    with Encoder.open(str(folder), device="cpu") as full, \
            Encoder.open(str(folder), device="cpu", scoring=ScoringOptions(score_dtype="bfloat16")) as half:
        assert next(half.model.parameters()).dtype == torch.bfloat16
        assert next(full.model.parameters()).dtype == torch.float32  # auto on CPU
        embedded = half.encode(texts)
        assert embedded.dtype == torch.float32
        assert torch.allclose(embedded.norm(dim=-1), torch.ones(len(texts)), atol=1e-6)  # normalised in float32
        assert (embedded * full.encode(texts)).sum(-1).min() > 0.99  # cosine to the float32 embeddings


@pytest.fixture
def data(tmp_path) -> list[str]:
    retrieval = tmp_path / "retrieval.jsonl"
    retrieval.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    sts = tmp_path / "sts.tsv"
    sts.write_text(STS)
    return [str(retrieval), str(sts)]


MODELS = {
    "encoder": lambda folder: make_bert(folder, seed=5),
    "reranker": lambda folder: make_bert(folder, seed=6, model_class="BertForSequenceClassification"),
    "m3": lambda folder: make_m3(folder, seed=1),
    "llm-embedder": lambda folder: make_decoder(folder, seed=7, model_class="Model"),
    "llm-reranker": lambda folder: make_decoder(folder, seed=8),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_scored_model_type_evaluates_the_same_spread_to_disk(tmp_path, data, kind):
    folder = str(MODELS[kind](tmp_path / kind))
    model_type = "encoder" if kind == "m3" else kind
    options = dict(model_type=model_type, device="cpu", batch_size=2)
    in_memory = evaluate_models([folder], data, **options)
    with pytest.warns(CocktailWarning, match="on disk"):
        spread = evaluate_models([folder], data, device_map="auto", max_memory="cpu=20KiB",
                                 offload_folder=str(tmp_path / "offload"), **options)
    assert [(r["data"], r["metric"], r.get("mode")) for r in spread] == \
        [(r["data"], r["metric"], r.get("mode")) for r in in_memory]
    assert [r["value"] for r in spread] == pytest.approx([r["value"] for r in in_memory], abs=TOLERANCE)
    assert not (tmp_path / "offload").exists()


def test_a_sweep_fills_its_merges_through_the_device_map(tmp_path, data, hash_cache):
    models = [str(make_bert(tmp_path / name, seed=seed)) for name, seed in (("a", 1), ("b", 2))]
    in_memory = sweep_weights(models, data, steps=3, device="cpu")
    with pytest.warns(CocktailWarning, match="on disk") as notices:
        spread = sweep_weights(models, data, steps=3, device="cpu", device_map="balanced", max_memory="cpu=20KiB")
    assert f"offload folder {hash_cache}{os.sep}cocktail-offload-" in str(notices[0].message)  # the default place
    assert [r["value"] for r in spread.rows] == pytest.approx([r["value"] for r in in_memory.rows], abs=TOLERANCE)
    assert not list(hash_cache.glob("cocktail-offload-*"))


def test_a_run_that_would_not_fit_is_refused_before_loading_with_the_options_that_fit(tmp_path, data):
    big = make_decoder(tmp_path / "big", seed=1, model_class="Model", hidden_size=128, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=4)
    run = ("eval", "--models", big, "--model-type", "llm-embedder", "--data", data[1], "--device", "cpu",
           "--batch-size", "1", "--max-length", "16", "--quiet")
    # ~1.7 MB of float32 weights: 1.2 MB holds them in bfloat16, not in float32
    refused = run_cli(*run, "--max-memory", "cpu=1200KiB")
    assert refused.returncode == 2, refused
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "needs about" in lines[0] and "more than the 1.2 MB allowed on cpu by --max-memory" in lines[0]
    assert "--score-dtype bfloat16" in lines[0] and "--device-map auto --max-memory cpu=" in lines[0]
    fits = run_cli(*run, "--max-memory", "cpu=1200KiB", "--score-dtype", "bfloat16", "--json")
    assert fits.returncode == 0, fits
    assert math.isfinite(json.loads(fits.stdout)[0]["value"])


def test_the_estimate_counts_the_forward_pass_of_the_few_shot_examples(tmp_path):
    models = decoders(tmp_path, "llm-reranker")
    result = run_cli("weights", "--models", *models, "--model-type", "llm-reranker", "--examples",
                     write_examples(tmp_path), "--device", "cpu", "--max-memory", "cpu=1MiB", "--quiet")
    assert result.returncode == 2, result
    assert "for a forward pass of" in result.stderr and "a lower --max-length" in result.stderr


def test_a_recipe_scores_its_examples_as_weights_from_says(tmp_path):
    models = decoders(tmp_path, "llm-embedder")
    examples = write_examples(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""model_type: llm-embedder
models: [{models[0]}, {models[1]}]
output: merged
weights_from:
  examples: {examples.name}
  device: cpu
  score_dtype: bfloat16
  device_map: sequential
  max_memory: cpu=40KiB
  offload_folder: scratch
""")
    result = run_cli("run", recipe, "--json")
    assert result.returncode == 0, result
    assert "on disk" in result.stderr
    written = json.loads(result.stdout)["weights_from"]
    assert (written["score_dtype"], written["device_map"]) == ("bfloat16", "sequential")
    assert not (tmp_path / "scratch").exists()  # relative to the recipe's folder, made and removed by cocktail
    bad = run_cli("run", recipe, "--set", "weights_from.score_dtype=float64", "--dry-run")
    assert bad.returncode == 2 and "weights_from.score_dtype" in bad.stderr, bad


def test_a_device_map_without_accelerate_says_how_to_get_it(tmp_path):
    models = decoders(tmp_path, "llm-embedder")
    code = ("import sys; sys.modules['accelerate'] = None; from cocktail.cli import main; "
            "sys.argv = ['cocktail'] + sys.argv[1:]; main()")
    result = subprocess.run([sys.executable, "-c", code, "weights", "--models", *models, "--model-type",
                             "llm-embedder", "--examples", str(write_examples(tmp_path)), "--device-map", "auto"],
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert "error: --device-map auto needs the accelerate package: pip install 'cocktail-merge[big]'" in result.stderr


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it, even where this test runs with SIGINT ignored
    (a background job), which the child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
