"""Math answer checking: box extraction and math-verify equivalence, including its order and thread quirks."""

import threading

import pytest

from selftaught.evaluate.math import answers_match, last_boxed, math_accuracy, score_math


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"$\boxed{\sqrt{\frac{a}{b^{2}}}}$", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"first $\boxed{3}$, then $\boxed{4}$, finally $\boxed{5}$", "5"),
        (r"The answer is $\fbox{12}$", "12"),
        (r"The answer is $\boxed 7$.", "7"),
        (r"The answer is \boxed 7.5.", "7.5"),
        (r"$\boxed{\{1, 2\}}$", r"\{1, 2\}"),
        (r"$\boxed{\left\{ x+1 \right.}$", r"\left\{ x+1 \right."),  # escaped brace must not count
        (r"$\boxed {9}$", "9"),
        (r"$\boxed{}$", ""),
    ],
)
def test_last_boxed_extracts(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 5.",
        "",
        r"cut off mid-answer: $\boxed{\frac{1}{2}",
        r"an earlier $\boxed{3}$ does not rescue a broken last $\boxed{4",
        r"trailing \boxed",
    ],
)
def test_last_boxed_none(text):
    assert last_boxed(text) is None


@pytest.mark.parametrize(
    "gold, predicted",
    [
        ("2^(n-1)", "2^{n-1}"),  # bare, unwrapped math-verify reads the gold as just `2`
        ("5/14", r"\frac{5}{14}"),
        (r"\frac{5}{14}", "5/14"),
        ("0.5", r"\frac12"),
        ("7.5", r"\frac{15}{2}"),
        (r"\frac{3}{4}", "0.75"),
        ("12", "12.0"),
        ("1000", "1,000"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\text{(C)}", "C"),
        ("12", r"\boxed{12}"),
    ],
)
def test_answers_match_equivalent(gold, predicted):
    assert answers_match(gold, predicted)


@pytest.mark.parametrize(
    "gold, predicted",
    [
        ("12", "13"),
        ("2^(n-1)", "2^{n+1}"),
        ("2^(n-1)", "2"),  # what an unwrapped parse of the gold would wrongly accept
        ("5/14", r"\frac{14}{5}"),
        ("0.5", "0.6"),
        (r"\text{(C)}", "D"),
        ("12", ""),
        ("", "12"),
        ("12", "}{"),
    ],
)
def test_answers_match_rejects(gold, predicted):
    assert not answers_match(gold, predicted)


def test_answers_match_order_gold_first():
    # math-verify is asymmetric here: a gold inequality accepts the interval, not the other way round.
    assert answers_match("x>3", r"(3,\infty)")
    assert not answers_match(r"(3,\infty)", "x>3")


def test_answers_match_off_main_thread():
    """The signal-based timeout would raise in a thread; ours must still give real answers there."""
    results = {}

    def work():
        results["good"] = answers_match("5/14", r"\frac{5}{14}")
        results["bad"] = answers_match("5/14", r"\frac{5}{13}")

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert results == {"good": True, "bad": False}


def test_score_math_and_accuracy():
    predictions = [
        r"$3 + 4 = 7$. The answer is $\boxed{7}$.",
        r"Maybe $\boxed{2}$, no wait, $\boxed{\frac{1}{2}}$.",
        "The answer is 9.",
        r"The answer is $\boxed{10}$.",
    ]
    rows = score_math(predictions, ["7", "0.5", "9", "11"])
    assert rows == [
        {"extracted": "7", "correct": True},
        {"extracted": r"\frac{1}{2}", "correct": True},
        {"extracted": None, "correct": False},
        {"extracted": "10", "correct": False},
    ]
    assert math_accuracy(rows) == pytest.approx(0.5)
    assert math_accuracy([]) == 0.0


def test_score_math_length_mismatch():
    with pytest.raises(ValueError):
        score_math(["a"], ["1", "2"])
