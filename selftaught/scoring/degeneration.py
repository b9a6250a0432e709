"""Is a model still writing text? Degeneration measures for any set of generated answers.

A training metric can improve while the model's output collapses (on-policy distillation from a weak
student found "128 spaces" scores well under reverse KL). Every evaluation of generated answers reports
these numbers next to its own, so a collapse is never silent:

- degenerate_share: the share of answers that are degenerate, defined as
    (a) empty or whitespace only (after the tokenizer's special tokens are dropped), or
    (b) looping: at least `REPEAT_SHARE` (half) of the answer's word 4-grams repeat an earlier 4-gram of
        the same answer, where words are runs of letters/digits, single punctuation marks and line
        breaks (so a few words padded with dozens of newlines up to the token cap loop too). A short
        pattern ("the the the", "her her she she {}) {})") or a sentence said over and over makes
        nearly every later 4-gram a repeat; ordinary prose, code and worked solutions stay far below.
        This is seq-rep-4 of Welleck et al. (2019, "Neural Text Generation with Unlikelihood
        Training"), applied per answer with a threshold;
- distinct_2: distinct word bigrams / all word bigrams over all the answers together (Li et al. 2016);
  low when the model says the same thing to every prompt;
- mean_tokens: mean answer length in the model's tokens (EOS included when generated);
- eos_share: the share of answers that ended with an end-of-sequence token rather than at the cap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

WORDS = re.compile(r"\w+|[^\w\s]|\n")
REPEAT_N = 4
REPEAT_SHARE = 0.5
WARN_MARGIN = 0.10  # a trained model this much more degenerate than its start gets a warning


def words(text: str) -> list[str]:
    return WORDS.findall(text.lower())


def repeated_ngram_share(tokens: Sequence[str], n: int = REPEAT_N) -> float:
    """Share of the n-grams of `tokens` that already occurred earlier in it (0 when it has none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(text: str) -> bool:
    """Empty, whitespace only, or looping over at least half of its 4-grams (see the module docstring)."""
    if not text.strip():
        return True
    return repeated_ngram_share(words(text)) >= REPEAT_SHARE


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of all texts (0 when there are none)."""
    grams = [tuple(w[i : i + n]) for w in map(words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def ended_with_eos(completion_ids: Sequence[int], eos_ids: Sequence[int]) -> bool:
    return bool(completion_ids) and completion_ids[-1] in set(eos_ids)


def degeneration_metrics(
    texts: Sequence[str], token_counts: Sequence[int], eos_flags: Sequence[bool]
) -> dict[str, float]:
    """The four measures above for one model's answers (texts decoded without special tokens)."""
    n = len(texts)
    if not n:
        return {}
    return {
        "degenerate_share": sum(map(is_degenerate, texts)) / n,
        "distinct_2": distinct_n(texts, 2),
        "mean_tokens": sum(token_counts) / n,
        "eos_share": sum(map(bool, eos_flags)) / n,
    }


DISTILL_ADVICE = (
    "Its distances to the teacher may look better while it no longer writes text. Try a lower learning "
    "rate, more off-policy steps (a lower lmbda, or seq_kd), or a better starting student (fine-tuned on "
    "the task first)."
)


def collapse_warning(
    before: dict, after: dict, advice: str = DISTILL_ADVICE, margin: float = WARN_MARGIN
) -> str | None:
    """The sentence a run ends with (and its card carries) when training made the answers degenerate:
    the trained model's degenerate share exceeds the starting model's by more than `margin`."""
    start, end = before.get("degenerate_share"), after.get("degenerate_share")
    if start is None or end is None or end - start <= margin:
        return None
    return (
        f"Warning: {end:.0%} of the trained model's held-out answers are degenerate (empty, whitespace or "
        f"looping), against {start:.0%} before training. {advice}"
    )
