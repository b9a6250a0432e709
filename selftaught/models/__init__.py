"""Model loading and the checks that keep a student and a teacher compatible."""

from selftaught.models.loading import (
    load_for_inference,
    load_model,
    load_tokenizer,
    restore_weights_mode,
)
from selftaught.models.vocab import TokenizerMismatchError, check_same_vocabulary, shared_vocab_size

__all__ = [
    "TokenizerMismatchError",
    "check_same_vocabulary",
    "load_for_inference",
    "load_model",
    "load_tokenizer",
    "restore_weights_mode",
    "shared_vocab_size",
]
