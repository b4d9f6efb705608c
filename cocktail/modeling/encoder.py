"""Turn texts into normalised embeddings the way a model is meant to be used.

The pooling comes from the model's sentence-transformers files when it has them (``modules.json``,
``1_Pooling/config.json``, ``Dense`` modules, ``sentence_bert_config.json``); a bare transformers
folder is pooled like BGE: the ``[CLS]`` token. Embeddings are always L2-normalised, so a dot product
is the cosine similarity. Texts are batched by length (fewer pad tokens), the model runs in its score
dtype (float32 on CPU) on CUDA when there is one, pooling and scores are float32, and passage
embeddings are cached by text until the weights change.

The weights go in through the :class:`~cocktail.modeling.skeleton.Skeleton`, as for few-shot losses:
from one model (:meth:`Encoder.open`) or from an in-memory merge of a plan's models (``sweep``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from cocktail.errors import InputError
from cocktail.io.checkpoints import read_json
from cocktail.merging.methods import Method
from cocktail.merging.plan import Plan
from cocktail.modeling.loading import embedding_rows, load_tokenizer
from cocktail.modeling.pooling import Pooling, read_pooling
from cocktail.modeling.scorer import PlanScorer
from cocktail.modeling.skeleton import Skeleton, model_folder
from cocktail.modeling.text_cut import cut_all, token_lengths
from cocktail.recipe.scoring import ScoringOptions

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": torch.relu,
    "torch.nn.modules.activation.GELU": torch.nn.functional.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
}
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "xlm-roberta-xl": 2}


class Encoder(PlanScorer):
    """A model ready to embed texts: ``encode(texts)`` gives a ``(n, dim)`` float32 CPU tensor, rows of norm 1.

    ``Encoder(plan)`` builds the model of the plan's first checkpoint (its config, tokenizer, pooling and
    Dense modules); fill it with :meth:`fill_from_checkpoint` or :meth:`fill_from_merge` before encoding.
    Subclasses change the model type, the pooling a bare folder gets and how a query meets its instruction.
    """

    model_type = "encoder"  # the skeleton's model type
    default_pooling = Pooling()  # for a folder without sentence-transformers files: [CLS], as BGE
    modes = ("dense",)  # the retrieval modes it is scored in (bge-m3 has more: modeling/m3.py)

    def __init__(self, plan: Plan, device: Optional[str] = None, batch_size: int = 32, max_length: int = 512,
                 progress: bool = False, label: Optional[str] = None, trust_remote_code: bool = False,
                 scoring: Optional[ScoringOptions] = None):
        super().__init__(plan, device, batch_size, label, progress, scoring)
        first = plan.checkpoints[0]
        self.root = first.root
        self.transformer_dir = model_folder(plan)
        self.pooling = read_pooling(self.root, self.default_pooling)
        self.dense = self._read_dense()
        st_config = self.root / "sentence_bert_config.json"
        st = read_json(st_config, root=self.root) if st_config.is_file() else {}
        self.lowercase = bool(st.get("do_lower_case", False))
        self.tokenizer = load_tokenizer(self.transformer_dir, "to embed texts", trust_remote_code,
                                        embedding_rows(plan))
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # decoders: padding is masked out anyway
        self.tokenizer.padding_side = "right"  # pool() finds the last token of right-padded rows
        limits = [max_length, st.get("max_seq_length")]
        positions = first.config.get("max_position_embeddings")
        if positions:
            limits.append(positions - POSITION_OFFSET.get(first.config.get("model_type"), 0))
        if getattr(self.tokenizer, "model_max_length", None) and self.tokenizer.model_max_length < 10**6:
            limits.append(self.tokenizer.model_max_length)
        self.max_length = min(int(x) for x in limits if x)
        self.skeleton = Skeleton(plan, self.model_type, self.placement, modules=True,
                                 trust_remote_code=trust_remote_code, largest_batch=(batch_size, self.max_length))
        self.model = self.skeleton.model
        self._cache: dict[str, torch.Tensor] = {}

    def query_text(self, query: str, instruction: Optional[str]) -> str:
        """What is encoded for a query: the instruction, if any, put before it (BGE's retrieval instruction)."""
        return (instruction or "") + query

    def similarity(self, queries: torch.Tensor, docs: torch.Tensor, mode: str = "dense") -> torch.Tensor:
        """``(queries, docs)`` scores of encoded texts: cosine similarity."""
        return queries @ docs.T

    def pair_similarity(self, first: torch.Tensor, second: torch.Tensor, mode: str = "dense") -> torch.Tensor:
        """The score of each pair ``(first[i], second[i])``."""
        return (first * second).sum(-1)

    # -- weights -----------------------------------------------------------------------------------
    def fill_from_checkpoint(self, index: int) -> None:
        """Use the weights of model ``index`` of the plan (and forget cached embeddings)."""
        super().fill_from_checkpoint(index)
        self._cache.clear()

    def fill_from_merge(self, method: Method, weights: list[float], parameters: Optional[dict] = None) -> None:
        """Use the merge of the plan's models with ``weights`` (and forget cached embeddings)."""
        super().fill_from_merge(method, weights, parameters)
        self._cache.clear()

    # -- sentence-transformers Dense modules -------------------------------------------------------
    def _read_dense(self) -> list[dict]:
        """The Dense modules after pooling, in order: their folder and activation (weights: the skeleton's)."""
        dense = []
        modules_path = self.root / "modules.json"
        if not modules_path.is_file():
            return dense
        for module in read_json(modules_path, root=self.root):
            kind = str(module.get("type", ""))
            path = module.get("path", "")
            if kind.endswith("Dense"):
                config = read_json(self.root / path / "config.json", root=self.root)
                activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
                if activation not in ACTIVATIONS:
                    raise InputError(f"{self.root / path}: activation {activation} is not supported")
                shapes = {t.name: t.shape for t in self.plan.tensors_of(path)}
                if "linear.weight" not in shapes:
                    raise InputError(f"{self.root / path}: Dense module without linear.weight")
                dense.append({"path": path, "activation": ACTIVATIONS[activation],
                              "out_features": int(shapes["linear.weight"][0])})
            elif not kind.endswith(("Transformer", "Pooling", "Normalize")):
                raise InputError(f"{self.root}: sentence-transformers module {kind} is not supported")
        return dense

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
            return self.dense[-1]["out_features"]
        return int(self.model.config.hidden_size)

    def _encode_uncached(self, texts: list[str], desc: str) -> torch.Tensor:
        prepared = cut_all(texts, self.max_length)
        if self.lowercase:
            prepared = [t.lower() for t in prepared]
        lengths = token_lengths(self.tokenizer, prepared, self.max_length)
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        out = torch.empty(len(texts), self.dimension)
        bar = self.bar(len(texts), desc)
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = self.tokenizer([prepared[i] for i in chunk], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state.float()  # pooled in float32 whatever the dtype
                embedded = self.pooling(hidden, batch["attention_mask"])
                for dense in self.dense:
                    tensors = self.skeleton.modules[dense["path"]]
                    embedded = dense["activation"](torch.nn.functional.linear(embedded, tensors["linear.weight"],
                                                                              tensors.get("linear.bias")))
                embedded = torch.nn.functional.normalize(embedded.float(), dim=-1)
                out[chunk] = embedded.cpu()
                bar.update(len(chunk))
        finally:
            bar.close()
        return out
