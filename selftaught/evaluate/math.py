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

Gold answers are read once each (`parse_gold`), as LaTeX only, after `math_notation` rewrites what data
writes for people; a gold whose reading is doubtful is `unverifiable` and scored apart, with its reason.
Every verdict comes with both parses, so it can be audited from the predictions file.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from math_verify import LatexExtractionConfig, parse, verify

from selftaught.evaluate.math_notation import (
    math_core,
    normalise_notation,
    plain_words,
    split_alternatives,
    words_in_math,
)

_BOX = re.compile(r"\\(?:boxed|fbox)")
_TIMEOUT_S = 5
LATEX_ONLY = [LatexExtractionConfig()]


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


def boxes_an_answer(extracted: str | None) -> bool:
    """Whether an extracted box holds an answer: `\\boxed{}` ends many a small model's text, empty, and
    counting it as boxed made a share of boxed answers rise while no answer was given."""
    return bool(extracted and extracted.strip())


def _wrap(expr: str) -> str:
    """Put plain text in math mode so math-verify reads it as one LaTeX expression."""
    expr = expr.strip()
    return expr if re.search(r"(?<!\\)\$", expr) or "\\boxed" in expr else f"${expr}$"


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _has_expression(parsed: list) -> bool:
    """math-verify found an expression (its parse lists the sympy object first, then the matched text)."""
    return bool(parsed) and not isinstance(parsed[0], str)


def _read(text: str, fallback: bool) -> tuple:
    """math-verify's parse of `text` as LaTeX; with `fallback`, its plain-expression reader when LaTeX
    finds nothing. Gold answers get no fallback: that reader takes the first number it meets
    ("2^floor(n/2)" reads as 2), which is what made gold answers wrong in silence."""
    try:
        latex = tuple(parse(_wrap(text), extraction_config=LATEX_ONLY, parsing_timeout=_timeout()))
        if _has_expression(latex) or not fallback:
            return latex
        return tuple(parse(_wrap(text), parsing_timeout=_timeout()))
    except Exception:  # a timeout or a sympy error on odd input reads as nothing, never a crash
        return ()


def _printed(parsed: tuple) -> str | None:
    return str(parsed[0]) if _has_expression(parsed) else None


def _verify(gold: tuple, predicted: tuple) -> bool:
    try:
        return bool(verify(list(gold), list(predicted), timeout_seconds=_timeout()))
    except Exception:  # math-verify and sympy can raise on odd input; a crash would lose a whole eval
        return False


@dataclass(frozen=True)
class GoldAnswer:
    """A gold answer parsed once: what math-verify reads of it, or why nothing trustworthy can be read.

    `kind` is "math" (verified by math-verify against any of `forms`), "text" (a word answer such as
    yes/no or a name, compared as lowercase words) or "unverifiable" (scored apart, never right or
    wrong; `reason` says why: a person should fix the data).
    """

    text: str
    kind: str
    forms: tuple[str, ...] = ()  # the LaTeX math-verify reads, one per accepted alternative
    parses: tuple[str, ...] = ()  # each form's parse as sympy prints it, for the audit
    reason: str | None = None
    parsed: tuple = field(default=(), repr=False, compare=False)  # math-verify's parse of each form

    @property
    def verifiable(self) -> bool:
        return self.kind != "unverifiable"


def _unverifiable(text: str, reason: str, forms=(), parses=()) -> GoldAnswer:
    return GoldAnswer(text, "unverifiable", tuple(forms), tuple(p or "" for p in parses), reason)


def _lost(form: str, parsed: tuple) -> str | None:
    """Why a form's parse misses part of the form, or None: no expression, words read as products of
    letters, letters the parse dropped, or a match that covers only a piece of the form."""
    if not _has_expression(parsed):
        return "math-verify reads no expression in it"
    if words := words_in_math(form):
        return f"words inside the expression ({', '.join(words[:3])}), which math-verify reads as letters"
    core = math_core(form)
    printed = str(parsed[0]).lower()
    letters = re.sub(r"\\[A-Za-z]+", "", core).lower()
    dropped = sorted({c for c in letters if c.isalpha() and c not in "ei" and c not in printed})
    if dropped:  # e and i are the constants, which print as E and I
        return f"math-verify's reading {parsed[0]} lost the letters {', '.join(dropped)}"
    matched = math_core(str(parsed[-1]))
    if matched and matched != core and matched in core:
        return f"math-verify read only {parsed[-1]!r} of it"
    return None


@lru_cache(maxsize=4096)
def parse_gold(text: str) -> GoldAnswer:
    """The gold answer as math-verify reads it, with alternatives ("or", "equivalently") split apart,
    function notation rewritten, and approximations dropped where an exact value is given (the exact
    value wins). A gold whose reading is doubtful is `unverifiable`, with the reason."""
    raw = text.strip()
    if not raw:
        return _unverifiable(text, "the gold answer is empty")
    if _BOX.search(raw) and (boxed := last_boxed(raw)) is not None:
        raw = boxed
    if (words := plain_words(raw)) is not None:
        return GoldAnswer(text, "text", (words,), (words,))
    pieces = split_alternatives(raw)
    chosen = [p for p in pieces if p[1] != "approximate"] or pieces
    forms = [normalise_notation(piece) for piece, _ in chosen]
    parsed = [_read(form, fallback=False) for form in forms]
    for form, one in zip(forms, parsed, strict=True):
        if (problem := _lost(form, one)) is not None:
            return _unverifiable(text, f"{form!r}: {problem}", forms, map(_printed, parsed))
    if any(not _verify(parsed[0], other) for other in parsed[1:]):
        if all(kind in ("first", "or") for _, kind in chosen):  # values joined by "or": a list of solutions
            forms = [", ".join(forms)]
            parsed = [_read(forms[0], fallback=False)]
        else:
            printed = " vs ".join(f"{f} = {_printed(p)}" for f, p in zip(forms, parsed, strict=True))
            return _unverifiable(text, f"its forms disagree ({printed})", forms, map(_printed, parsed))
    return GoldAnswer(text, "math", tuple(forms), tuple(map(_printed, parsed)), None, tuple(parsed))


@lru_cache(maxsize=4096)
def _prediction(extracted: str) -> tuple:
    """An extracted answer's parse: the same notation rewrites as gold answers, LaTeX first."""
    return _read(normalise_notation(extracted), fallback=True)


def check_answer(gold: GoldAnswer, extracted: str | None) -> dict:
    """The verdict on one extracted answer, with what it was read as: {extracted_parse, verdict, correct}.

    verdict: "correct", "wrong", or "unverifiable" (the gold cannot be read; `correct` is then None).
    """
    if not gold.verifiable:
        return {"extracted_parse": None, "verdict": "unverifiable", "correct": None}
    if extracted is None or not extracted.strip():
        return {"extracted_parse": None, "verdict": "wrong", "correct": False}
    if gold.kind == "text":
        words = plain_words(extracted)
        correct = words == gold.forms[0]
        return {"extracted_parse": words, "verdict": "correct" if correct else "wrong", "correct": correct}
    predicted = _prediction(extracted)
    correct = _has_expression(predicted) and any(_verify(one, predicted) for one in gold.parsed)
    return {
        "extracted_parse": _printed(predicted),
        "verdict": "correct" if correct else "wrong",
        "correct": correct,
    }


def answers_match(gold: str, predicted: str) -> bool:
    """Whether `predicted` (an extracted answer) is mathematically equal to `gold`. Never raises. A gold
    that cannot be verified matches only the same text."""
    if not gold or not gold.strip() or not predicted or not predicted.strip():
        return False
    reading = parse_gold(gold)
    if not reading.verifiable:
        return gold.strip() == predicted.strip()
    return bool(check_answer(reading, predicted)["correct"])


def score_math(predictions: list[str], answers: list[str | GoldAnswer | None]) -> list[dict]:
    """Per row: the last boxed answer of the prediction, its parse, the gold's parse and the verdict.

    A prediction without a box is wrong: the prompt asks for one, and guessing at unboxed text would
    reward rambling that happens to mention the right number. A row without a gold answer has no
    verdict (None); an unverifiable gold gives "unverifiable".
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    rows = []
    for prediction, answer in zip(predictions, answers, strict=True):
        extracted = last_boxed(prediction or "")
        gold = parse_gold(str(answer)) if isinstance(answer, str) else answer
        if gold is None:
            verdict = {"extracted_parse": None, "verdict": None, "correct": None}
        else:
            verdict = check_answer(gold, extracted)
        audit = {"gold_forms": list(gold.forms), "gold_parse": list(gold.parses)} if gold else {}
        rows.append({"extracted": extracted} | verdict | ({"gold_forms": None, "gold_parse": None} | audit))
    return rows


def math_accuracy(rows: list[dict]) -> float:
    """Fraction of the verifiable rows marked correct (rows whose `correct` is None are not scored);
    0.0 for none."""
    scored = [r for r in rows if r["correct"] is not None]
    return sum(bool(r["correct"]) for r in scored) / len(scored) if scored else 0.0


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
