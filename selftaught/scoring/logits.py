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

    transformers applies a boolean `logits_to_keep` before the lm_head, so logits are computed for
    those N positions only: no prompt, no padding, no [batch x length x vocabulary] tensor.
    """
    width = completion_mask.shape[1]
    keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    keep[:, -width - 1 : -1] = completion_mask.bool()  # position i predicts token i + 1
    outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
    return align_logits(outputs.logits, vocab_size)
