"""Models in memory: pooling, the skeleton filled tensor by tensor, and the encoder used by eval."""
