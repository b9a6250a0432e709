"""Negative log-likelihood per UTF-8 byte: a held-out likelihood that compares models across tokenizers.

A mean NLL per token depends on how finely a tokenizer cuts the text (Gemma 3's 262k-token vocabulary cuts
an answer into fewer tokens than SmolLM2's 49k), so it cannot compare a student with a teacher of another
family, nor say whether cross-tokenizer distillation moved the student toward its teacher. Per byte it can:
the numerator is the model's log-probability of the whole answer (its own tokens of it, after its own chat
template's prompt, then its end-of-turn token when the answer ended), the denominator the answer's UTF-8
bytes, the same for every model. Intervals are bootstrap intervals over the answers
(`evaluate.intervals`), paired when two models read the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from selftaught.evaluate.intervals import paired_comparison, ratio, ratio_interval
from selftaught.generation.base import GenerationEngine
from selftaught.models.cross_tokenizer import ByteVocabulary, chat_prompt_text


def answer_nll(
    engine: GenerationEngine,
    vocabulary: ByteVocabulary,
    prompts: Sequence[list[dict[str, str]]],
    answers: Sequence[str],
    ended: Sequence[bool],
) -> list[float]:
    """Per answer, -log P(answer | prompt) in nats under the engine's model, whose tokenizer `vocabulary`
    reads; an answer that `ended` also pays for the model's end-of-turn token after it."""
    prompt_ids, completion_ids = [], []
    for prompt, answer, stop in zip(prompts, answers, ended, strict=True):
        tokens = vocabulary.tokenize_after(chat_prompt_text(vocabulary.tokenizer, prompt), answer)
        prompt_ids.append(tokens.prompt_ids)
        completion_ids.append(tokens.text_ids + [vocabulary.end_of_turn] * stop)
    logprobs = engine.completion_logprobs(prompt_ids, completion_ids, "per-byte NLL")
    return [-sum(values) for values in logprobs]


def answer_bytes(answers: Sequence[str]) -> list[int]:
    return [len(answer.encode()) for answer in answers]


def per_byte_nll(nll: Sequence[float], answers: Sequence[str]) -> dict:
    """NLL per byte over all the answers (total NLL / total bytes), with its 95% interval."""
    size = answer_bytes(answers)
    return {
        "nll_per_byte": ratio(nll, size, range(len(nll))),
        "ci95": ratio_interval(nll, size),
        "answers": len(nll),
        "bytes": sum(size),
    }


def per_byte_nll_change(
    model: str, against: str, nll: Sequence[float], against_nll: Sequence[float], answers: Sequence[str]
) -> dict:
    """`model`'s NLL per byte against `against`'s on the same answers: both values, the difference and its
    paired 95% interval (negative: `model` finds the answers likelier)."""
    size = answer_bytes(answers)

    def of(values: Sequence[float]) -> Callable[[list[int]], float | None]:
        return lambda idx: ratio(values, size, idx)

    return paired_comparison(model, against, "nll_per_byte", of(nll), of(against_nll), len(answers))
