"""How close a student is to its teacher on held-out prompts.

- forward / reverse KL per completion token, teacher-forced on the teacher's own greedy answers
  (what the student is being taught to say);
- top-1 agreement: how often the student's most likely next token is the teacher's;
- answer agreement: the share of prompts where the student's greedy answer matches the teacher's
  (the final \\boxed{} answer by math-verify for math rows, the whole text otherwise);
- for rows with a gold answer, greedy accuracy by \\boxed{} extraction and math-verify.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selftaught.evaluate.math import answers_match, last_boxed, math_accuracy, score_math
from selftaught.generation.hf import SamplingParams, generate_all, left_pad, right_pad
from selftaught.scoring.logits import completion_logits, join_prompt_completion
from selftaught.training.losses import generalized_jsd


@torch.no_grad()
def teacher_distance(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    vocab_size: int,
    pad_id: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean per-token forward KL, reverse KL, Jensen-Shannon divergence (beta 0.5, at most ln 2) and
    top-1 agreement over the given completions."""
    device = next(student.parameters()).device
    totals = {"forward_kl": 0.0, "reverse_kl": 0.0, "jsd": 0.0, "top1_agreement": 0.0}
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        prompt_ids, prompt_mask = left_pad(prompts[start : start + batch_size], pad_id)
        completion_ids, completion_mask = right_pad(completions[start : start + batch_size], pad_id)
        inputs = {
            k: v.to(device)
            for k, v in join_prompt_completion(
                prompt_ids, prompt_mask, completion_ids, completion_mask
            ).items()
        }
        mask = completion_mask.to(device)
        s = completion_logits(student, inputs, mask, vocab_size).float()
        t = completion_logits(teacher, inputs, mask, vocab_size).float()
        totals["forward_kl"] += generalized_jsd(s, t, beta=0.0).sum().item()
        totals["reverse_kl"] += generalized_jsd(s, t, beta=1.0).sum().item()
        totals["jsd"] += generalized_jsd(s, t, beta=0.5).sum().item()
        totals["top1_agreement"] += (s.argmax(-1) == t.argmax(-1)).sum().item()
        tokens += int(mask.sum())
    return {name: value / max(tokens, 1) for name, value in totals.items()} | {"tokens": tokens}


def answers_agree(reference: str, candidate: str) -> bool:
    """Same final answer: by math-verify when the reference has a \\boxed{}, else the same text."""
    reference_box, candidate_box = last_boxed(reference), last_boxed(candidate)
    if reference_box is not None:
        return candidate_box is not None and answers_match(reference_box, candidate_box)
    return reference.strip() == candidate.strip()


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str,
) -> list[list[int]]:
    return generate_all(
        model, tokenizer, prompts, SamplingParams(max_new_tokens, temperature=0.0), batch_size, desc
    )


def answer_metrics(texts: list[str], answers: list[str | None]) -> dict[str, float]:
    """Greedy accuracy on the rows that have a gold answer (none: empty dict)."""
    graded = [(t, a) for t, a in zip(texts, answers, strict=True) if a is not None]
    if not graded:
        return {}
    rows = score_math([t for t, _ in graded], [a for _, a in graded])
    return {"math_accuracy": math_accuracy(rows)}
