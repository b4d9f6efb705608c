"""The words a recipe chooses from: model types and output dtypes.

A leaf (it imports nothing), so every room and the light CLI can name the same choices.
"""

#: What the models are: an embedding model, a one-logit cross-encoder, a causal LM.
MODEL_TYPES = ("encoder", "reranker", "decoder")

#: The dtypes an output can be written in (default: each tensor's dtype in the first model).
DTYPES = ("float32", "float16", "bfloat16")
