"""Generation with transformers: batched, left-padded, with the KV cache, sampling or greedy.

Two layers: `generate_completions` works on one padded batch of prompt ids (what a trainer holds);
`generate_all` takes any number of prompts, sorts them by length so that a batch pads little,
and returns completions in the caller's order.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel

from selftaught.generation.base import SamplingParams, left_pad, padded_rows


def mask_through_first_eos(completion_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 for every generated token up to and including the first EOS, 0 after it.

    Built from positions, never from `ids != pad`: when pad == eos that test would drop the EOS.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


def eos_ids_of(model: PreTrainedModel, tokenizer) -> list[int]:
    """Every token that ends a reply: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def generation_config(
    params: SamplingParams,
    eos_token_id: int | list[int],
    pad_token_id: int,
    suppress_tokens: list[int] | None = None,
) -> GenerationConfig:
    """transformers' GenerationConfig for `params`.

    top_k=0 and no repetition penalty: sample from the model's own distribution, as GKD assumes, not from
    whatever defaults a checkpoint's generation_config.json carries."""
    greedy = params.temperature == 0
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=params.min_new_tokens or None,
        do_sample=not greedy,
        temperature=None if greedy else params.temperature,
        top_p=None if greedy else params.top_p,
        top_k=None if greedy else 0,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        suppress_tokens=suppress_tokens or None,
        stop_strings=list(params.stop) or None,
        use_cache=True,
    )


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
    vocab_size: int | None = None,
    tokenizer=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion ids [B, C] and their mask for one left-padded batch, using the KV cache.

    The model is switched to eval mode for the call: gradient checkpointing only acts in training
    mode, so generation keeps its cache even when checkpointing is on (peers lost it: 3.5x slower).
    With `vocab_size`, ids past it (padded embedding rows, not tokens) are never sampled.
    Stop strings (`params.stop`) need the `tokenizer`: transformers matches them on token strings.
    """
    suppressed = padded_rows(model, vocab_size) if vocab_size is not None else []
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=generation_config(params, eos_ids, pad_id, suppressed),
            tokenizer=tokenizer,
        )
    finally:
        model.train(was_training)
    completion_ids = output[:, prompt_ids.shape[1] :]
    mask = mask_through_first_eos(completion_ids, eos_ids)
    return completion_ids.masked_fill(mask == 0, pad_id), mask


def generate_all(
    model: PreTrainedModel,
    tokenizer,
    prompts: list[list[int]],
    params: SamplingParams,
    batch_size: int = 8,
    desc: str | None = "generating",
    by_length: bool = True,
) -> list[list[int]]:
    """Completion ids (through EOS, or cut before a stop string) for every prompt, in the given order.

    `by_length` sorts the prompts into batches by length (least padding); False batches them in the given
    order (a trainer's optimizer step: its micro-batches' prompts, in order). `desc=None` shows no
    progress bar. Padded embedding rows (`padded_rows`) are never sampled.
    """
    if params.seed is not None:
        torch.manual_seed(params.seed)
    eos_ids = eos_ids_of(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if by_length else range(len(prompts))
    results: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
        chunk = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in chunk], tokenizer.pad_token_id)
        completions, completion_mask = generate_completions(
            model,
            ids.to(device),
            mask.to(device),
            params,
            eos_ids,
            tokenizer.pad_token_id,
            len(tokenizer),
            tokenizer,
        )
        for row, index in enumerate(chunk):
            kept = completions[row][completion_mask[row].bool()].tolist()
            results[index] = cut_at_stop(tokenizer, kept, params.stop)
    return results


def cut_at_stop(tokenizer, ids: list[int], stop: tuple[str, ...]) -> list[int]:
    """The completion up to (not including) its first stop string, re-encoded; unchanged without one.

    transformers stops after the token that completes a stop string, and that token may carry text
    past it; the text is cut where the string begins, as OpenAI-compatible servers return it.
    """
    if not stop:
        return ids
    text = tokenizer.decode(ids)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return ids if cut < 0 else tokenizer.encode(text[:cut], add_special_tokens=False)
