"""Weights from a few examples: example files, losses per model type, softmax weighting and search."""
