"""What counts as a degenerate answer: the collapse modes seen in practice are flagged, real text is not."""

import pytest

from selftaught.scoring.degeneration import (
    collapse_warning,
    degeneration_metrics,
    distinct_n,
    ended_with_eos,
    is_degenerate,
    repeated_ngram_share,
)

PROSE = (
    "To find the area of a circle, square the radius and multiply by pi. With a radius of 3, the area "
    "is 9 pi, about 28.27 square units."
)
SOLUTION = (
    "We have $x^2 - 5x + 6 = 0$, so $(x-2)(x-3) = 0$ and $x = 2$ or $x = 3$. "
    "The sum of the roots is $\\boxed{5}$."
)
CODE = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5"
NESTED_CODE = (
    "if x:\n    for y in z:\n        if y:\n            print(y)\n        else:\n            break\n"
)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " " * 128,
        "\n\n\t  \n",
        "the " * 40,
        "her her her she she she {}) {}) " * 8,
        "I am sorry. " * 12,
        "The answer is 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5",
        "To make a $10 \\times 10 = 10$ cents." + "\n" * 80,  # a few words, then padding to the cap
    ],
)
def test_collapse_modes_are_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize(
    "text",
    [PROSE, SOLUTION, CODE, NESTED_CODE, "42", "Yes.", "Paris is the capital of France.", PROSE + "\n" * 20],
)
def test_real_answers_are_not(text):
    assert not is_degenerate(text)


def test_a_loop_after_a_real_start_is_degenerate_once_it_is_most_of_the_answer():
    assert not is_degenerate(PROSE + " and so on" * 2)
    assert is_degenerate(PROSE + " and so on" * 40)


def test_repeated_share_counts_later_repeats_only():
    assert repeated_ngram_share(list("abcdabcd"), n=4) == pytest.approx(1 - 4 / 5)
    assert repeated_ngram_share(list("abc"), n=4) == 0.0


def test_metrics_of_a_model_that_says_the_same_thing_everywhere():
    same = degeneration_metrics(["Hello there friend."] * 4, [5] * 4, [True] * 4)
    varied = degeneration_metrics(
        [PROSE, SOLUTION, CODE, "Paris."], [40, 40, 20, 3], [True, True, False, True]
    )
    assert same["distinct_2"] < varied["distinct_2"]
    assert same["degenerate_share"] == 0.0
    assert varied == pytest.approx(
        {"degenerate_share": 0.0, "distinct_2": distinct_n([PROSE, SOLUTION, CODE, "Paris."]),
         "mean_tokens": 25.75, "eos_share": 0.75}
    )  # fmt: skip


def test_eos_is_read_from_the_last_token():
    assert ended_with_eos([5, 6, 2], [2])
    assert not ended_with_eos([5, 6, 7], [2])
    assert not ended_with_eos([], [2])


def test_the_warning_fires_only_past_the_margin():
    assert collapse_warning({"degenerate_share": 0.0}, {"degenerate_share": 0.1}) is None
    message = collapse_warning({"degenerate_share": 0.0}, {"degenerate_share": 1.0})
    assert "100%" in message and "learning rate" in message and "lmbda" in message
