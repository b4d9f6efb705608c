"""Turn texts into normalised embeddings the way a model is meant to be used.

The pooling comes from the model's sentence-transformers files when it has them (``modules.json``,
``1_Pooling/config.json``, ``Dense`` modules, ``sentence_bert_config.json``); a bare transformers
folder is pooled like BGE: the ``[CLS]`` token. Embeddings are always L2-normalised, so a dot product
is the cosine similarity. Texts are batched by length (fewer pad tokens), the model runs in float32
on CUDA when there is one, and passage embeddings are cached by text until the weights change.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from cocktail.errors import InputError
from cocktail.io.checkpoints import TRANSFORMER, Checkpoint, read_json
from cocktail.merging.plan import canonical_names
from cocktail.modeling.loading import float32_kwargs, load_tokenizer, resolve_device
from cocktail.modeling.pooling import read_pooling

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": torch.relu,
    "torch.nn.modules.activation.GELU": torch.nn.functional.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
}
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "xlm-roberta-xl": 2}
PROGRESS_MIN_TEXTS = 512  # shorter encodes get no progress bar


class Encoder:
    """A model ready to embed texts: ``encode(texts)`` gives a ``(n, dim)`` float32 CPU tensor, rows of norm 1."""

    def __init__(self, source: str, device: Optional[str] = None, batch_size: int = 32, max_length: int = 512,
                 progress: bool = False, label: Optional[str] = None):
        from transformers import AutoModel

        self.source = str(source)
        self.label = label or self.source
        self.device = str(resolve_device(device))
        self.batch_size = batch_size
        self.progress = progress
        with Checkpoint.open(self.source) as ckpt:
            self.root = ckpt.root
            self.transformer_dir = ckpt.root / ckpt.components[TRANSFORMER].rel_dir
            self.components = {key: c.rel_dir for key, c in ckpt.components.items() if key != TRANSFORMER}
            config = ckpt.config
            dense_weights = {key: {name: ckpt.read(key, name) for name in ckpt.infos(key)} for key in self.components}
            saved_names = set(ckpt.infos(TRANSFORMER))
        self.pooling = read_pooling(self.root)
        self.dense = self._read_dense(dense_weights)
        st_config = self.root / "sentence_bert_config.json"
        st = read_json(st_config) if st_config.is_file() else {}
        self.lowercase = bool(st.get("do_lower_case", False))
        self.tokenizer = load_tokenizer(self.transformer_dir, "to embed texts")
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # decoders: padding is masked out anyway
        self.tokenizer.padding_side = "right"  # pool() finds the last token of right-padded rows
        try:
            self.model = AutoModel.from_pretrained(str(self.transformer_dir), **float32_kwargs())
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.source}: cannot be loaded as an encoder ({first})") from None
        self.model.to(self.device).eval()
        params = dict(self.model.named_parameters())
        self._saved = {n for n in self._own_names(saved_names).values() if n in params}
        limits = [max_length, st.get("max_seq_length")]
        positions = config.get("max_position_embeddings")
        if positions:
            limits.append(positions - POSITION_OFFSET.get(config.get("model_type"), 0))
        if getattr(self.tokenizer, "model_max_length", None) and self.tokenizer.model_max_length < 10**6:
            limits.append(self.tokenizer.model_max_length)
        self.max_length = min(int(x) for x in limits if x)
        self._cache: dict[str, torch.Tensor] = {}

    # -- sentence-transformers Dense modules -------------------------------------------------------
    def _read_dense(self, weights: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
        dense = []
        modules_path = self.root / "modules.json"
        if not modules_path.is_file():
            return dense
        for module in read_json(modules_path):
            kind = str(module.get("type", ""))
            path = module.get("path", "")
            if kind.endswith("Dense"):
                config = read_json(self.root / path / "config.json")
                activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
                if activation not in ACTIVATIONS:
                    raise InputError(f"{self.root / path}: activation {activation} is not supported")
                tensors = weights.get(path, {})
                if "linear.weight" not in tensors:
                    raise InputError(f"{self.root / path}: Dense module without linear.weight")
                dense.append({"path": path, "activation": ACTIVATIONS[activation], "tensors": tensors})
            elif not kind.endswith(("Transformer", "Pooling", "Normalize")):
                raise InputError(f"{self.root}: sentence-transformers module {kind} is not supported")
        return dense

    def _own_names(self, names) -> dict[str, str]:
        """``{saved name: name in self.model}`` for the saved names the model has (a ``BertFor...``
        checkpoint's ``bert.`` prefix is matched as the merge plan matches it)."""
        own = self.model.state_dict()
        mapping, _ = canonical_names(list(names), self.model.base_model_prefix or None)
        return {actual: canonical for canonical, actual in mapping.items() if canonical in own}

    def load_weights(self, transformer: dict[str, torch.Tensor],
                     modules: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> None:
        """Replace the weights (e.g. with an in-memory merge) and forget cached embeddings.

        ``transformer`` may use the names of a ``BertModel`` or of a ``BertFor...`` class (prefixed).
        """
        names = self._own_names(transformer)
        renamed = {own: transformer[name] for name, own in names.items()}
        missing = sorted(self._saved - set(renamed))
        if missing:
            raise InputError(f"weights for {self.label} lack {', '.join(missing[:4])}")
        self.model.load_state_dict(renamed, strict=False)
        for dense in self.dense:
            if modules and dense["path"] in modules:
                dense["tensors"] = modules[dense["path"]]
        self._cache.clear()

    # -- encoding ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, texts: Sequence[str], cache: bool = False, desc: str = "encoding") -> torch.Tensor:
        """Normalised embeddings of ``texts`` (``cache``: remember them by text, for corpora)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache)) if cache else list(texts)
        computed = self._encode_uncached(todo, desc) if todo else None
        if not cache:
            return computed if computed is not None else torch.empty(0, self.dimension)
        if computed is not None:
            for text, row in zip(todo, computed):
                self._cache[text] = row
        if not texts:
            return torch.empty(0, self.dimension)
        return torch.stack([self._cache[t] for t in texts])

    @property
    def dimension(self) -> int:
        if self.dense:
            return int(self.dense[-1]["tensors"]["linear.weight"].shape[0])
        return int(self.model.config.hidden_size)

    def _encode_uncached(self, texts: list[str], desc: str) -> torch.Tensor:
        prepared = [t.lower() for t in texts] if self.lowercase else texts
        tokens = self.tokenizer(prepared, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(tokens[i]), reverse=True)
        out = torch.empty(len(texts), self.dimension)
        bar = tqdm(total=len(texts), desc=f"{desc} {self.label}", unit="text", file=sys.stderr, leave=False,
                   disable=not self.progress or len(texts) < PROGRESS_MIN_TEXTS)
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = self.tokenizer([prepared[i] for i in chunk], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                embedded = self.pooling(hidden, batch["attention_mask"])
                for dense in self.dense:
                    weight = dense["tensors"]["linear.weight"].to(self.device, torch.float32)
                    bias = dense["tensors"].get("linear.bias")
                    bias = bias.to(self.device, torch.float32) if bias is not None else None
                    embedded = dense["activation"](torch.nn.functional.linear(embedded, weight, bias))
                embedded = torch.nn.functional.normalize(embedded.float(), dim=-1)
                out[chunk] = embedded.cpu()
                bar.update(len(chunk))
        finally:
            bar.close()
        return out
