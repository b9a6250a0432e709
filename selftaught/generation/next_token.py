"""Scoring passes over many prompts that share a long prefix: next-token candidates, completion log-probs.

Two questions are asked of many prompts built from one template:
- which of a handful of tokens ("1".."5", "A"/"B") comes next (`next_token_probs`: curation ratings,
  judge verdicts);
- how likely each token of a given completion is after its prompt (`completion_logprobs`: the
  likelihood scores of curation and evaluation, e.g. PMI, IFD, held-out NLL), and which tokens a teacher
  ranks highest there (`completion_top_logprobs`: distillation from a teacher's top-K).
The prompts begin with the same tokens (the system turn, the rubric), so we run that shared prefix once,
keep its KV cache, and run only each prompt's own suffix (and its completion) against it.
transformers' `generate` has no such reuse across a batch of different prompts, hence this module.

Batching: suffixes are left-padded and completions right-padded, so the padding sits between the shared
prefix and each suffix and after each completion; the attention mask hides it and position ids continue
from the prefix, so every prompt is computed exactly as it would be alone (up to float reduction order).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from selftaught.generation.base import PADDING_ID, TopLogprobs, left_pad, right_pad

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


class _SharedPrefix:
    """The KV cache of the tokens every prompt begins with (none when they share fewer than
    MIN_SHARED_PREFIX), and forward passes of [own prompt suffix | completion] batches against it."""

    def __init__(self, model: PreTrainedModel, prompts: list[list[int]], pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        shared = shared_prefix_length(prompts)
        self.length = shared if shared >= MIN_SHARED_PREFIX else 0
        self.cache = _prefix_cache(model, prompts[0][: self.length], self.device) if self.length else None

    def logits(self, prompts: list[list[int]], completions: list[list[int]] | None = None) -> torch.Tensor:
        """Logits predicting each completion token (flattened, row by row), or, without completions,
        the next token after each prompt ([rows, vocab])."""
        ids, mask = left_pad([p[self.length :] for p in prompts], self.pad_id)
        width = ids.shape[1]
        if completions is not None:
            completion_ids, completion_mask = right_pad(completions, self.pad_id)
            ids, mask = torch.cat([ids, completion_ids], 1), torch.cat([mask, completion_mask], 1)
            # position i predicts token i + 1: the last prompt token predicts the first completion token.
            # An index tensor (transformers 5.19 takes no boolean mask here); the padding inside the
            # completion block is dropped after the lm_head.
            keep = torch.arange(width - 1, width - 1 + completion_ids.shape[1])
        positions = self.length + (mask.cumsum(-1) - 1).clamp(min=0)  # number from the first real token
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)  # the forward pass appends to the cache it is given
            cache.batch_repeat_interleave(len(prompts))
            mask = torch.cat([torch.ones(len(prompts), self.length, dtype=mask.dtype), mask], dim=1)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            logits_to_keep=1 if completions is None else keep.to(self.device),
            use_cache=cache is not None,
        )
        return (
            out.logits[:, -1] if completions is None else out.logits[completion_mask.bool().to(self.device)]
        )


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
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad little
    probs = torch.zeros(len(prompts), len(candidate_ids), dtype=torch.float64)
    with _eval_mode(model):
        prefix = _SharedPrefix(model, prompts, pad_id)
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            chunk = order[start : start + batch_size]
            logits = prefix.logits([prompts[i] for i in chunk])
            probs[chunk] = logits[:, candidate_ids].double().softmax(-1).cpu()
    return probs


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    batch_size: int = 8,
    desc: str = "scoring",
) -> list[list[float]]:
    """log P(token | prompt, the completion's earlier tokens) for every token of each completion, in the
    given order. Logits are computed at the completion positions only (`logits_to_keep` as an index
    tensor), and normalised in float32 whatever the weights' dtype."""

    def score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor]:
        return (_token_logprobs(logits, targets),)

    scored = _score_completions(model, prompts, completions, pad_id, batch_size, desc, score)
    return [rows[0].tolist() if rows else [] for rows in scored]


@torch.no_grad()
def completion_top_logprobs(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    k: int,
    pad_id: int,
    batch_size: int = 8,
    desc: str = "scoring",
) -> list[TopLogprobs]:
    """Per completion, at every position that predicts one of its tokens: the K most likely next tokens and
    their log-probabilities over the whole output layer (float32 log_softmax of the raw logits, as vLLM
    computes prompt log-probs), and the completion token's own. K above the output layer's rows leaves
    the extra slots as `PADDING_ID`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    score = partial(_top_k, k=k)
    scored = _score_completions(model, prompts, completions, pad_id, batch_size, desc, score)
    empty = TopLogprobs(
        torch.full((0, k), PADDING_ID), torch.zeros(0, k, dtype=torch.float32), torch.zeros(0)
    )
    return [TopLogprobs(*rows) if rows else empty for rows in scored]


def _score_completions(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    batch_size: int,
    desc: str,
    score: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
) -> list[tuple[torch.Tensor, ...] | None]:
    """`score(logits, targets)` of the positions predicting each completion's tokens, one forward pass per
    batch of similar lengths, split back per completion in the given order (None for an empty one).
    `score` returns tensors whose first dimension is the rows of `logits`."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(not p for p in prompts):
        raise ValueError("every completion needs a prompt of at least one token to be scored after")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    results: list[tuple[torch.Tensor, ...] | None] = [None for _ in prompts]
    with _eval_mode(model):
        prefix = _SharedPrefix(model, prompts, pad_id)
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            chunk = [i for i in order[start : start + batch_size] if completions[i]]
            if not chunk:
                continue
            logits = prefix.logits([prompts[i] for i in chunk], [completions[i] for i in chunk])
            targets = torch.tensor([t for i in chunk for t in completions[i]], device=logits.device)
            lengths = [len(completions[i]) for i in chunk]
            per_completion = zip(*(part.cpu().split(lengths) for part in score(logits, targets)), strict=True)
            for i, rows in zip(chunk, per_completion, strict=True):
                results[i] = rows
    return results


LOGSUMEXP_ROWS = 1024  # rows normalised at a time: bounds the float32 copy of the logits


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[row, target] per row, in chunks of rows (no second [rows, vocab] tensor)."""
    parts = []
    for start in range(0, len(targets), LOGSUMEXP_ROWS):
        rows = logits[start : start + LOGSUMEXP_ROWS].float()
        target = targets[start : start + LOGSUMEXP_ROWS, None]
        parts.append(rows.gather(-1, target)[:, 0] - torch.logsumexp(rows, -1))
    return torch.cat(parts)


def _top_k(logits: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """(top ids, top log-probs, target log-probs) per row, normalised in float32 in chunks of rows."""
    ids, logprobs, token_logprobs = [], [], []
    for start in range(0, len(targets), LOGSUMEXP_ROWS):
        rows = logits[start : start + LOGSUMEXP_ROWS].float()
        rows = rows - torch.logsumexp(rows, -1, keepdim=True)
        top = rows.topk(min(k, rows.shape[-1]), dim=-1)
        missing = k - top.indices.shape[-1]  # K above the vocabulary: unused slots
        ids.append(F.pad(top.indices, (0, missing), value=PADDING_ID))
        logprobs.append(F.pad(top.values, (0, missing)))
        token_logprobs.append(rows.gather(-1, targets[start : start + LOGSUMEXP_ROWS, None])[:, 0])
    return torch.cat(ids), torch.cat(logprobs), torch.cat(token_logprobs)


@contextmanager
def _eval_mode(model: PreTrainedModel):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
