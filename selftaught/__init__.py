"""selftaught: train language models on their own generations."""

__version__ = "0.1.0"
