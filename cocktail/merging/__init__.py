"""Merging: methods (pure per-tensor functions), schedules and per-tensor settings, weights, the
plan (every check) and the inspect report."""
