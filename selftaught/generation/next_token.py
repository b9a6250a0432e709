"""The next-token distribution over a few candidate tokens, for many prompts that share a long prefix.

Scoring (curation ratings, judge verdicts) asks one question of many prompts: which of a handful of
tokens ("1".."5", "A"/"B") comes next. The prompts are built from one template, so they begin with the
same tokens: the system turn and the rubric. We run that shared prefix once, keep its KV cache, and
run only each prompt's own suffix against it; on the curation rubric that is most of the prompt.
transformers' `generate` has no such reuse across a batch of different prompts, hence this module.

Batching: suffixes are left-padded, so the padding sits between the shared prefix and each suffix;
the attention mask hides it and position ids continue from the prefix, so every prompt is computed
exactly as it would be alone (up to float reduction order).
"""

from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from selftaught.generation.hf import left_pad

MIN_SHARED_PREFIX = 16  # below this, a second forward pass costs more than the reuse saves


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt begins with, leaving each prompt at least one token of its own."""
    if not prompts:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


def option_token_ids(tokenizer, prompt_text: str, options: str | tuple[str, ...]) -> list[int]:
    """Ids of each option as the tokenizer writes it right after `prompt_text`: one token each, distinct.

    A scoring prompt is only readable in one step if every option is exactly one more token; a
    tokenizer that merges the option with the text before it would be read at the wrong position.
    """
    base = tokenizer.encode(prompt_text, add_special_tokens=False)
    ids = []
    for option in options:
        full = tokenizer.encode(prompt_text + option, add_special_tokens=False)
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise ValueError(
                f"this tokenizer does not write {prompt_text[-16:]!r} + {option!r} as the prompt plus one "
                f"token ({full[len(base) - 2 :]} after {base[-2:]}); the answer cannot be read in one step"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"the options {list(options)} share token ids: {ids}")
    return ids


def _prefix_cache(model: PreTrainedModel, prefix: list[int], device: torch.device):
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    return out.past_key_values


@torch.no_grad()
def next_token_probs(
    model: PreTrainedModel,
    prompts: list[list[int]],
    candidate_ids: list[int],
    pad_id: int,
    batch_size: int = 8,
    desc: str = "scoring",
) -> torch.Tensor:
    """[N, k] softmax over the candidates' logits at each prompt's last position, in the given order."""
    device = next(model.parameters()).device
    shared = shared_prefix_length(prompts)
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad little
    probs = torch.zeros(len(prompts), len(candidate_ids), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        prefix_cache = _prefix_cache(model, prompts[0][:shared], device) if shared else None
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            chunk = order[start : start + batch_size]
            ids, mask = left_pad([prompts[i][shared:] for i in chunk], pad_id)
            positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)  # number from the first real token
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)  # the forward pass appends to the cache it is given
                cache.batch_repeat_interleave(len(chunk))
                mask = torch.cat([torch.ones(len(chunk), shared, dtype=mask.dtype), mask], dim=1)
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                past_key_values=cache,
                logits_to_keep=1,
                use_cache=cache is not None,
            )
            probs[chunk] = out.logits[:, -1, candidate_ids].double().softmax(-1).cpu()
    finally:
        model.train(was_training)
    return probs
