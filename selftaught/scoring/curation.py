"""Curation scores of (instruction, response) pairs in every mode, and the rules that select by them.

Modes (a curation may compute several; each adds its own fields to a row):

- rubric (alias: probs): score_probs, score_expectation, score_argmax: the paper's 5-point rubric,
  P("1".."5") read after our "Score: " (ratings.py);
- generate: the rubric's fields after the rater's own brief reasoning (the paper's way), plus reasoning,
  generated, regex_score;
- pmi: pmi, logprob_given_instruction, logprob_without_instruction, scored_tokens, echoed_share
  (likelihood.py);
- ifd: ifd, ppl_given_instruction, ppl_alone, scored_tokens (likelihood.py);
- backward: backward_logprob, instruction_tokens (likelihood.py, under the backward model).

Scores a rule can select by, each oriented so that higher means "keep first":
- `argmax`, `expectation`: the rubric's (rubric or generate mode);
- `pmi`: PMI itself;
- `pmi_no_echo`: PMI, except that a response echoing its instruction (`echoed_share` >= ECHO_LIMIT: most
  of its word trigrams are the instruction's) ranks below every other row, whatever its PMI;
- `ifd`: Superfiltering's order: a pair with IFD >= 1 (the instruction does not help) comes after every
  pair under 1, and among those the highest IFD comes first (the hardest to predict);
- `backward`: the backward log-prob;
- a combination `a+b` (e.g. `pmi+backward`): the mean of each score's percentile rank among the rows
  rated together (0 = lowest, 1 = highest; ties share their mean rank), so scores on different scales
  count equally.
A rule keeps the rows whose score is at least `min_score`, or the `top` fraction of rows by score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from selftaught.generation.base import GenerationEngine
from selftaught.scoring.likelihood import MAX_SCORED_TOKENS, echoed_share, likelihood_scores
from selftaught.scoring.ratings import ALIASES, rate_pairs

CURATION_MODES = ("rubric", "generate", "pmi", "ifd", "backward")
RUBRIC_MODES = ("rubric", "generate")
# select_by name -> (modes that compute it, the row field it reads)
SCORES = {
    "argmax": (RUBRIC_MODES, "score_argmax"),
    "expectation": (RUBRIC_MODES, "score_expectation"),
    "pmi": (("pmi",), "pmi"),
    "pmi_no_echo": (("pmi",), "pmi"),
    "ifd": (("ifd",), "ifd"),
    "backward": (("backward",), "backward_logprob"),
}
# The score each mode's pairs are ranked by (ROC AUC, `eval curation`): the rubric's graded expectation.
RANKED_BY = {
    "rubric": "expectation",
    "generate": "expectation",
    "pmi": "pmi",
    "ifd": "ifd",
    "backward": "backward",
}
# What `select_by auto` selects by: the first mode's score, the paper's argmax digit for the rubric, and
# PMI with its echo guard (raw PMI keeps a response that only repeats its instruction first).
SELECTED_BY = RANKED_BY | {"rubric": "argmax", "generate": "argmax", "pmi": "pmi_no_echo"}
# The threshold a score is kept at when a rule gives neither min_score nor top: the paper's 4 on the rubric,
# "the instruction makes the response likelier" for PMI (>= 0), and Superfiltering's IFD < 1 (in the
# oriented value, IFD < 1 is exactly a value above 0). The backward log-prob and combinations have no
# natural threshold: their rules must give one.
NATURAL_THRESHOLD = {"argmax": 4.0, "expectation": 4.0, "pmi": 0.0, "pmi_no_echo": 0.0, "ifd": 0.0}
# A response whose word trigrams are at least this share its instruction's repeats it more than it answers:
# real answers on the labelled dev set echo at most 0.26 of their trigrams, 13 of its 15 restatements 0.5 or
# more (bench/data/curation_dev.jsonl).
ECHO_LIMIT = 0.5


def parse_modes(text: str) -> list[str]:
    """'pmi, backward' -> ['pmi', 'backward'], aliases resolved; unknown or clashing modes are refused."""
    modes = [ALIASES.get(m.strip(), m.strip()) for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in CURATION_MODES]
    if unknown or not modes:
        raise ValueError(f"curation_mode {text!r}: use one or more of {CURATION_MODES} joined by commas")
    if set(RUBRIC_MODES) <= set(modes):
        raise ValueError("curation_mode: rubric and generate write the same fields; choose one")
    return list(dict.fromkeys(modes))


def score_pairs(
    engine: GenerationEngine,
    tokenizer,
    pairs: list[tuple[str, str]],
    mode: str,
    max_reasoning_tokens: int = 64,
    max_scored_tokens: int = MAX_SCORED_TOKENS,
    batch_size: int = 8,
) -> list[dict]:
    """One dict of `mode`'s fields per (instruction, response) pair, in order (see the module table)."""
    mode = ALIASES.get(mode, mode)
    if mode in RUBRIC_MODES:
        return rate_pairs(engine, tokenizer, pairs, batch_size, mode, max_reasoning_tokens)
    return likelihood_scores(engine, tokenizer, pairs, mode, max_scored_tokens)


def score_value(row: dict, score: str) -> float:
    """The value of one named score (not a combination), oriented so that higher means keep first; a row
    without the score (no tokens to score) gets -inf."""
    value = row.get(SCORES[score][1])
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -math.inf
    if score == "ifd":  # Superfiltering: every IFD >= 1 after every IFD < 1, which rank highest first
        return value if value < 1 else -value
    if score == "pmi_no_echo" and echo_of(row) >= ECHO_LIMIT:
        return -math.inf  # an echo: last, as a row with nothing to score
    return float(value)


def echo_of(row: dict) -> float:
    """The row's `echoed_share`, counted from its text when it was curated before the share was recorded."""
    if row.get("echoed_share") is not None:
        return row["echoed_share"]
    return echoed_share(row.get("instruction", ""), row.get("response", ""))


def average_ranks(values: list[float]) -> list[float]:
    """Each value's rank, 1 for the lowest; a tie group shares the mean of its ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):  # ranks start+1 .. end+1, shared
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def percentile_ranks(values: list[float]) -> list[float]:
    """Each value's rank among `values` scaled to [0, 1] (ties share their mean rank; one value: 0.5)."""
    if len(values) == 1:
        return [0.5]
    return [(rank - 1) / (len(values) - 1) for rank in average_ranks(values)]


@dataclass(frozen=True)
class SelectionRule:
    """Keep the rows whose `score` is at least `min_score`, or the `top` fraction of them by `score`.

    `score` is one of SCORES or a `+`-joined combination of them (their mean percentile rank)."""

    score: str
    min_score: float | None = None
    top: float | None = None

    @property
    def parts(self) -> list[str]:
        return self.score.split("+")

    def check(self, modes: list[str]) -> None:
        """Refuse a rule the curation modes cannot feed, or one with no threshold to apply."""
        for part in self.parts:
            if part not in SCORES:
                raise ValueError(f"select_by {self.score!r}: {part!r} is not one of {list(SCORES)} (or a+b)")
            if not set(SCORES[part][0]) & set(modes):
                raise ValueError(
                    f"select_by {part} needs curation_mode {' or '.join(SCORES[part][0])} (curated: "
                    f"{','.join(modes)}); add it to --curation_mode or select by another score"
                )
        if self.top is not None and not 0 < self.top <= 1:
            raise ValueError(f"select_top must lie in (0, 1], got {self.top}")
        if self.min_score is not None and self.top is not None:
            raise ValueError("give --min_score or --select_top, not both")
        if (
            self.score in ("argmax", "expectation")
            and self.min_score is not None
            and not 1 <= self.min_score <= 5
        ):
            raise ValueError(f"min_score on the rubric must lie in [1, 5], got {self.min_score}")
        if self.min_score is None and self.top is None and self.score not in NATURAL_THRESHOLD:
            raise ValueError(
                f"select_by {self.score} has no natural threshold: give --min_score or --select_top, e.g. 0.5"
            )

    def values(self, rows: list[dict]) -> list[float]:
        """Each row's score under this rule (a combination: the mean percentile rank of its parts)."""
        if len(self.parts) == 1:
            return [score_value(r, self.score) for r in rows]
        ranks = [percentile_ranks([score_value(r, p) for r in rows]) for p in self.parts]
        return [sum(column) / len(column) for column in zip(*ranks, strict=True)]

    @property
    def threshold(self) -> float:
        return NATURAL_THRESHOLD[self.score] if self.min_score is None else self.min_score

    def keep(self, rows: list[dict]) -> list[bool]:
        """Which rows the rule keeps. `top`: the best ceil(top * n) rows (ties at the cut all kept); a row
        with no score (nothing to score) is never kept."""
        values = self.values(rows)
        if self.top is None:
            return [v >= self.threshold and v > -math.inf for v in values]
        if not rows:
            return []
        cut = sorted(values, reverse=True)[max(math.ceil(self.top * len(rows)), 1) - 1]
        return [v >= cut and v > -math.inf for v in values]

    def describe(self) -> str:
        """The rule in words, as the summary, the card and the report state it."""
        if self.top is not None:
            return f"top {self.top:.0%} by {self.score}"
        if self.score == "ifd":
            low = "" if self.min_score is None else f"{self.min_score:g} <= "
            return f"{low}ifd < 1 (Superfiltering)"
        return f"{self.score} >= {self.threshold:g}"
