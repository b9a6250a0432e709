"""95% bootstrap intervals for evaluation numbers, and paired ones for the difference between two models.

Written here rather than taken from scipy (`scipy.stats.bootstrap`): the statistics we need (a ratio of
sums, a ROC AUC, a win rate with ties as half) take index lists, several models share one resample
(paired), and it is a dozen lines. Percentile intervals over `RESAMPLES` resamples of the evaluated items
(prompts or pairs), seeded, so a rerun reports the same interval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

RESAMPLES = 1000
SEED = 0


def bootstrap_interval(
    n: int,
    statistic: Callable[[list[int]], float | None],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
) -> list[float] | None:
    """[low, high]: the percentile interval of `statistic(indices)` over resamples of range(n) with
    replacement (None for no items, or when the statistic is undefined on every resample)."""
    if n == 0:
        return None
    rng = random.Random(seed)
    values = sorted(
        v for _ in range(resamples) if (v := statistic([rng.randrange(n) for _ in range(n)])) is not None
    )
    if not values:
        return None
    tail = (1 - level) / 2
    return [values[int(tail * len(values))], values[max(int((1 - tail) * len(values)) - 1, 0)]]


def mean_interval(values: Sequence[float], **kwargs) -> list[float] | None:
    """The interval of the mean of `values`."""
    return bootstrap_interval(len(values), lambda idx: sum(values[i] for i in idx) / len(idx), **kwargs)


def ratio_interval(
    numerators: Sequence[float], denominators: Sequence[float], **kwargs
) -> list[float] | None:
    """The interval of sum(numerators) / sum(denominators) over items (e.g. NLL per token over answers)."""
    return bootstrap_interval(len(numerators), lambda idx: ratio(numerators, denominators, idx), **kwargs)


def ratio(numerators: Sequence[float], denominators: Sequence[float], idx: Sequence[int]) -> float | None:
    total = sum(denominators[i] for i in idx)
    return sum(numerators[i] for i in idx) / total if total else None


def paired_difference_interval(
    first: Callable[[list[int]], float | None], second: Callable[[list[int]], float | None], n: int, **kwargs
) -> list[float] | None:
    """The interval of first - second, both computed on the same resample of the items (paired)."""

    def difference(idx: list[int]) -> float | None:
        a, b = first(idx), second(idx)
        return None if a is None or b is None else a - b

    return bootstrap_interval(n, difference, **kwargs)


def excludes_zero(interval: Sequence[float] | None) -> bool:
    """Whether a difference's interval lies wholly above or below 0: the two models differ."""
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def paired_comparison(
    model: str,
    against: str,
    metric: str,
    mine: Callable[[list[int]], float | None],
    theirs: Callable[[list[int]], float | None],
    n: int,
) -> dict:
    """One comparison as the reports and cards read it: both values on all `n` items, their difference
    (model - against) and its paired 95% interval."""
    everything = list(range(n))
    value, against_value = mine(everything), theirs(everything)
    return {
        "model": model,
        "against": against,
        "metric": metric,
        "value": value,
        "against_value": against_value,
        "difference": value - against_value,
        "ci95": paired_difference_interval(mine, theirs, n),
        "items": n,
    }
