"""The words a recipe chooses from: model types and output dtypes.

A leaf (it imports nothing), so every room and the light CLI can name the same choices.
"""

#: What the models are: an embedding model, a one-logit cross-encoder, a causal LM (LM-Cocktail's three),
#: and the LLM-based BGE shapes: a decoder embedder (last-token pooling, bge-en-icl's instruction prompt)
#: and a decoder reranker (the logit of "Yes" after FlagEmbedding's reranker prompt).
MODEL_TYPES = ("encoder", "reranker", "decoder", "llm-embedder", "llm-reranker")

#: The dtypes an output can be written in (default: each tensor's dtype in the first model).
DTYPES = ("float32", "float16", "bfloat16")

#: The merge methods that fit each tensor to statistics of the models on examples (RegMean, Fisher):
#: their examples feed the statistics, and fixed weights (or equal ones) scale each model's share.
DATA_AWARE_METHODS = ("regmean", "fisher")
