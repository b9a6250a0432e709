"""Answers as competition data writes them, rewritten into the LaTeX that math-verify reads.

math-verify reads LaTeX; gold answers are often written for people: "C(10, 5), or equivalently 252",
"2^floor(n/2)*floor(n/2)!", "5/14, or approximately 35.7%". Read as they are, the first becomes a set of
letter products, the second the number 2, the third rejects `\\frac{5}{14}`. This module only rewrites
text (no parsing, no verdicts): alternatives are split apart, function notation becomes LaTeX, a bare
`%` (a LaTeX comment) is escaped, trailing unit words are marked as text. `evaluate/math.py` parses
the result and decides what can be verified.
"""

from __future__ import annotations

import re

# A function call and the LaTeX it becomes; `{0}`, `{1}` are the (rewritten) arguments.
FUNCTIONS = {
    "C": (2, r"\binom{{{0}}}{{{1}}}"),
    "binom": (2, r"\binom{{{0}}}{{{1}}}"),
    "binomial": (2, r"\binom{{{0}}}{{{1}}}"),
    "floor": (1, r"\lfloor {0} \rfloor"),
    "ceil": (1, r"\lceil {0} \rceil"),
    "ceiling": (1, r"\lceil {0} \rceil"),
    "sqrt": (1, r"\sqrt{{{0}}}"),
    "factorial": (1, r"({0})!"),
    "abs": (1, r"\left|{0}\right|"),
    "log": (1, r"\log\left({0}\right)"),
    "ln": (1, r"\ln\left({0}\right)"),
    "exp": (1, r"e^{{{0}}}"),
    "sin": (1, r"\sin\left({0}\right)"),
    "cos": (1, r"\cos\left({0}\right)"),
    "tan": (1, r"\tan\left({0}\right)"),
}
_CALL = re.compile(r"(?<![\\A-Za-z])(" + "|".join(sorted(FUNCTIONS, key=len, reverse=True)) + r")\s*\(")
_CONSTANTS = [
    (re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])"), r"\\pi"),
    (re.compile(r"(?<![\\A-Za-z])(?:infinity|inf)(?![A-Za-z])", re.IGNORECASE), r"\\infty"),
]
_BARE_PERCENT = re.compile(r"(?<!\\)%")
# Plain words after the math ("3.50 dollars", "12 cm"): units, which math-verify drops inside \text{}.
_TRAILING_WORDS = re.compile(
    r"^(?P<math>.*(?:[^\sA-Za-z\\]|\\[A-Za-z]+))\s+(?P<words>(?:[A-Za-z]{2,}\s*)+)\.?$"
)

# Separators of alternatives, tried at the top level only (never inside braces or brackets, where
# "x=2 \text{ or } x=3" lists solutions). Each says what the piece after it is.
SEPARATORS = re.compile(
    r"(?P<equivalent>\s*,?\s*(?:or\s+)?(?:equivalently|i\.e\.)\s*,?\s*)"
    r"|(?P<approximate>\s*,?\s*(?:or\s+)?(?:approximately|approx\.|roughly|about)\s+|\s*(?:\\approx|≈)\s*)"
    r"|(?P<or>\s*,?\s+or\s+)",
    re.IGNORECASE,
)


def _depths(text: str) -> list[int]:
    """Nesting depth of {}, () and [] at each character (a backslash-escaped brace does not count)."""
    depth, depths, i = 0, [], 0
    while i < len(text):
        depths.append(depth)
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            depths.append(depth)
            i += 2
            continue
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        i += 1
    return depths


def split_alternatives(text: str) -> list[tuple[str, str]]:
    """(piece, how it relates to the first) for each top-level alternative: "first", "equivalent",
    "approximate" or "or". Empty pieces are dropped ("about 5" is one approximate piece)."""
    depths = _depths(text)
    pieces, kind, start = [], "first", 0
    for match in SEPARATORS.finditer(text):
        if depths[match.start()] != 0 or match.start() < start:
            continue
        pieces.append((text[start : match.start()].strip(), kind))
        kind, start = match.lastgroup, match.end()
    pieces.append((text[start:].strip(), kind))
    return [(piece, kind) for piece, kind in pieces if piece]


def _closing(text: str, open_at: int) -> int | None:
    """Index of the parenthesis closing the one at text[open_at]."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


def _arguments(inside: str) -> list[str]:
    """Top-level comma-separated arguments of a call."""
    depths, args, start = _depths(inside), [], 0
    for i, ch in enumerate(inside):
        if ch == "," and depths[i] == 0:
            args.append(inside[start:i])
            start = i + 1
    return [a.strip() for a in [*args, inside[start:]]]


def rewrite_functions(text: str) -> str:
    """`C(n, k)`, `binom`, `floor`, `ceil`, `sqrt`, `factorial`, `abs`, `log`... as LaTeX, inside out; a
    call that is an exponent or subscript (`2^floor(n/2)`) is braced. Calls with the wrong number of
    arguments are left alone."""
    out, i = [], 0
    while match := _CALL.search(text, i):
        close = _closing(text, match.end() - 1)
        arity, template = FUNCTIONS[match.group(1)]
        args = _arguments(text[match.end() : close]) if close is not None else []
        if close is None or len(args) != arity:
            out.append(text[i : match.end()])
            i = match.end()
            continue
        latex = template.format(*(rewrite_functions(a) for a in args))
        before = text[i : match.start()]
        if before.rstrip().endswith(("^", "_")):
            latex = "{" + latex + "}"
        out.append(before + latex)
        i = close + 1
    out.append(text[i:])
    return "".join(out)


def normalise_notation(text: str) -> str:
    """One answer (no alternatives) as LaTeX math-verify reads: functions, constants, %, unit words."""
    text = rewrite_functions(text.strip())
    for pattern, latex in _CONSTANTS:
        text = pattern.sub(latex, text)
    text = _BARE_PERCENT.sub(r"\\%", text)
    if "$" not in text and (match := _TRAILING_WORDS.match(text)):
        text = f"{match['math']} \\text{{ {match['words'].strip()}}}"
    return text


_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|operatorname)\s*\{([^{}]*)\}")
_TEXT_GROUP_EXPONENT = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm)\s*\{[^{}]*\}(?:\^\{?\w+\}?)?")
_DECORATION = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\\left|\\right|\\\$|\\%|\^\\circ|\^\{\\circ\}|[\s$]")


def plain_words(text: str) -> str | None:
    """A word answer ("Yes", "\\text{Evelyn}", "no solution") lowercased without markup, or None."""
    inner = _TEXT_GROUP.sub(r"\1", text).replace("$", "").strip().rstrip(".!").strip()
    words = re.sub(r"\s+", " ", inner).lower()
    if not re.fullmatch(r"[a-z][a-z' -]*", words):
        return None
    return words if words in ("yes", "no", "true", "false") or len(words.replace(" ", "")) >= 3 else None


def math_core(text: str) -> str:
    """The math of an answer without text groups (and their unit exponents), spacing and decoration."""
    return _DECORATION.sub("", _TEXT_GROUP_EXPONENT.sub("", text))


def words_in_math(text: str) -> list[str]:
    """Runs of 3+ plain letters outside text groups and commands: words math-verify reads as products."""
    bare = re.sub(r"\\[A-Za-z]+", " ", _TEXT_GROUP_EXPONENT.sub(" ", text))
    return re.findall(r"[A-Za-z]{3,}", bare)
