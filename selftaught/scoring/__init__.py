"""Scoring engines: a model's logits or log-probabilities over given completions."""
