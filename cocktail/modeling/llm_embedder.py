"""Decoder embedders (bge-en-icl, bge-multilingual-gemma2): texts become embeddings as FlagEmbedding's
``FlagLLMModel`` makes them.

The model is the decoder's ``AutoModel`` (its causal-LM head, if saved, is not used); a text's
embedding is the last hidden state of its last token (right padding, so the last real token),
L2-normalised. A query with an instruction (task) is written ``<instruct>{task}\\n<query>{query}``,
the query prompt of both models in FlagEmbedding's model table; without one the query is encoded as
it is, and passages always are. Texts are tokenised as the model's tokenizer does by default (BOS,
and EOS where its config adds one), as FlagEmbedding does.

Built on :class:`~cocktail.modeling.encoder.Encoder` (the skeleton, batching by length, caching), so
``cocktail eval`` and the few-shot losses treat it like any embedder.
"""

from __future__ import annotations

from typing import Optional

from cocktail.modeling.encoder import Encoder
from cocktail.modeling.pooling import LAST_TOKEN

QUERY_FORMAT = "<instruct>{instruction}\n<query>{query}"


def llm_query_text(query: str, instruction: Optional[str]) -> str:
    """A query as a decoder embedder reads it: ``<instruct>{task}\\n<query>{query}``, or the query alone."""
    return QUERY_FORMAT.format(instruction=instruction, query=query) if instruction else query


class LLMEmbedder(Encoder):
    """An :class:`Encoder` for decoder embedders: last-token pooling (unless the folder's
    sentence-transformers files say otherwise) and the ``<instruct>...<query>...`` query prompt."""

    model_type = "llm-embedder"
    default_pooling = LAST_TOKEN

    def query_text(self, query: str, instruction: Optional[str]) -> str:
        return llm_query_text(query, instruction)
