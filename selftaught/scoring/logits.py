"""A model's next-token logits at the completion positions of [prompt | completion] batches.

Batches are laid out as a left-padded prompt block followed by a right-padded completion block,
so every completion starts at the same column and the positions that predict completion tokens
are easy to name. Only those get logits: with a 150k vocabulary the prompt's and the padding's
logits would otherwise dominate memory.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from selftaught.models.vocab import align_logits


def join_prompt_completion(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Model inputs for the joined sequences, with position ids that skip the left padding."""
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": attention_mask,
        # generate() numbers positions from the first real token; scoring must do the same.
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
    }


def completion_logits(
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], completion_mask: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Logits [N, vocab_size] predicting the N real completion tokens, in `completion_mask` order.

    `logits_to_keep` (an index tensor, applied before the lm_head) limits the logits to the columns that
    predict completion tokens: no prompt positions, no [batch x length x vocabulary] tensor. The padding
    inside the completion block is dropped after the lm_head. (transformers 5.20 also takes a boolean
    mask there, which would skip that padding too; vLLM's CPU build holds transformers below 5.20.)
    """
    width, length = completion_mask.shape[1], inputs["input_ids"].shape[1]
    columns = torch.arange(length - width - 1, length - 1, device=inputs["input_ids"].device)
    outputs = model(**inputs, logits_to_keep=columns, use_cache=False)  # column i predicts token i + 1
    return align_logits(outputs.logits[completion_mask.bool()], vocab_size)
