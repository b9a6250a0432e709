"""Math answer checking for MATH-500-style data: pull the last \\boxed{} answer, compare it with math-verify.

math-verify notes (checked against math-verify 0.9):
- `verify(gold, target)` is asymmetric: gold `x>3` accepts `(3,\\infty)`, not the reverse. Gold goes first.
- `parse` on bare text grabs the first number it recognises: `parse("2^(n-1)")` gives `2`, while
  `parse("$2^(n-1)$")` gives `2**(n - 1)`. So plain answers are wrapped in `$...$` before parsing.
- Both `parse(parsing_timeout=5)` and `verify(timeout_seconds=5)` default to a `signal.alarm` timeout,
  which raises ValueError off the main thread (the error is re-raised, not swallowed). Passing `None`
  disables the signal handler entirely. We keep the timeout on the main thread of any process (worker
  subprocesses included), where it guards against pathological sympy inputs, and pass `None` elsewhere.
- With the timeout off, math-verify logs a one-time warning per module; that is expected.
- It is lenient by design: `x=3` matches `3`, `50\\%` matches `50`, `\\text{(C)}` matches `C`.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

from math_verify import parse, verify

_BOX = re.compile(r"\\(?:boxed|fbox)")
_TIMEOUT_S = 5


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at text[start] == "{", or None if it never closes."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # skip escaped characters such as \{ and \}
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, \\fbox{...} or `\\boxed 5`; None if absent or unbalanced.

    Only the last box counts: models often box intermediate results before the final one.
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    rest = matches[-1].end()
    i = rest
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        return _braced(text, i)
    if i == rest or i == len(text):  # `\boxedx` or a box at the very end: nothing to read
        return None
    token = re.match(r"[^\s$]+", text[i:])
    if token is None:
        return None
    return token.group(0).rstrip(".,;") or None


def _wrap(expr: str) -> str:
    """Put plain text in math mode so math-verify reads it as one LaTeX expression."""
    expr = expr.strip()
    return expr if "$" in expr or "\\boxed" in expr else f"${expr}$"


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    """Parsed once per distinct string: gold answers repeat across samples of one prompt."""
    return tuple(parse(_wrap(text), parsing_timeout=_timeout()))


def answers_match(gold: str, predicted: str) -> bool:
    """Whether `predicted` (an extracted answer) is mathematically equal to `gold`. Never raises."""
    if not gold or not gold.strip() or not predicted or not predicted.strip():
        return False
    try:
        gold_parsed, pred_parsed = _parse(gold), _parse(predicted)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_timeout()))
    except Exception:  # math-verify and sympy can raise on odd input; a crash would lose a whole eval
        return False


def score_math(predictions: list[str], answers: list[str]) -> list[dict]:
    """Per row: the last boxed answer of the prediction and whether it matches the gold answer.

    A prediction without a box is wrong: the prompt asks for one, and guessing at unboxed text would
    reward rambling that happens to mention the right number.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    rows = []
    for prediction, answer in zip(predictions, answers, strict=True):
        extracted = last_boxed(prediction or "")
        correct = extracted is not None and answers_match(str(answer), extracted)
        rows.append({"extracted": extracted, "correct": correct})
    return rows


def math_accuracy(rows: list[dict]) -> float:
    """Fraction of rows marked correct; 0.0 for no rows."""
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as a product, as the Codex paper does, so large n does not overflow.
    """
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def breakdown(groups: list, correct: list[bool]) -> dict[str, dict[str, float]]:
    """Accuracy and problem count per group (a subject, a level), groups in sorted order."""
    by_group: dict[str, list[bool]] = {}
    for group, ok in zip(groups, correct, strict=True):
        by_group.setdefault(str(group), []).append(bool(ok))
    return {
        group: {"accuracy": sum(oks) / len(oks), "problems": len(oks)}
        for group, oks in sorted(by_group.items())
    }
