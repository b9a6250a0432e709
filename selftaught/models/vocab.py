"""Make sure a student and a teacher speak the same vocabulary, and align their logits to it.

Two models can share a tokenizer yet have embedding matrices of different sizes: Qwen2-0.5B pads
its vocabulary to 151,936 rows, Qwen2-7B to 152,064, for the same 151,646 tokens. Comparing sizes
would reject that pair, and comparing nothing would accept two unrelated tokenizers and train on
a meaningless loss. So we compare the token -> id maps themselves, and score both models on the
tokenizer's own ids only.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TokenizerMismatchError(ValueError):
    """The student and teacher tokenizers map some token to different ids."""


def check_same_vocabulary(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, show: int = 5
) -> None:
    """Raise `TokenizerMismatchError` naming the first ids whose tokens differ."""
    student_by_id = {i: t for t, i in student.get_vocab().items()}
    teacher_by_id = {i: t for t, i in teacher.get_vocab().items()}
    if student_by_id == teacher_by_id:
        return
    differing = [
        i
        for i in sorted(student_by_id.keys() | teacher_by_id.keys())
        if student_by_id.get(i) != teacher_by_id.get(i)
    ]
    examples = ", ".join(
        f"id {i}: student {student_by_id.get(i)!r} vs teacher {teacher_by_id.get(i)!r}"
        for i in differing[:show]
    )
    raise TokenizerMismatchError(
        f"student and teacher tokenizers differ at {len(differing)} ids (first: {examples}). "
        "Token-level distillation needs one shared tokenizer: pick a teacher from the student's "
        "model family (for example Qwen2-0.5B-Instruct with Qwen2-7B-Instruct)."
    )


def shared_vocab_size(tokenizer: PreTrainedTokenizerBase, *models: PreTrainedModel) -> int:
    """Number of logit columns that mean the same token in every model: the tokenizer's size.

    The extra rows some models pad their embeddings with are never produced by the tokenizer; we
    drop them so the two distributions are over the same support.
    """
    size = len(tokenizer)
    for model in models:
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < size:
            raise ValueError(
                f"{model.name_or_path or type(model).__name__} has {rows} output rows but its "
                f"tokenizer has {size} tokens: the model cannot score every token."
            )
    return size


def align_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Keep the first `vocab_size` columns (the shared tokens)."""
    return logits[..., :vocab_size]
