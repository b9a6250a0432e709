"""A model's next-token logits at the completion positions of [prompt | completion] batches.

Batches are laid out as a left-padded prompt block followed by a right-padded completion block,
so every completion starts at the same column. That lets us ask the model for the last C + 1
positions only (`logits_to_keep`) instead of the whole sequence: with a 150k vocabulary the
prompt's logits would otherwise dominate memory.
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
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], completion_width: int, vocab_size: int
) -> torch.Tensor:
    """Logits [B, C, vocab_size] predicting each of the C completion tokens."""
    outputs = model(**inputs, logits_to_keep=completion_width + 1, use_cache=False)
    return align_logits(outputs.logits[:, :-1], vocab_size)
