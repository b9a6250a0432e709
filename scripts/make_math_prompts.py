"""Write the shipped math prompt set (MATH-500 schema) for the default distillation demo.

The problems are deliberately easy (one or two steps, small whole numbers, simple fractions) so that a
135M-parameter chat model sometimes solves them: distillation then has a signal to improve on. Every
problem comes from a template with random parameters; a fixed seed makes the files reproducible.

    python scripts/make_math_prompts.py            # writes selftaught/data/builtin/math_prompts/
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from fractions import Fraction
from math import gcd
from pathlib import Path

SEED = 20240611
N_TRAIN, N_TEST = 160, 32
OUT = Path(__file__).resolve().parents[1] / "selftaught" / "data" / "builtin" / "math_prompts"

NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lucia", "Omar", "Priya", "Ben", "Chloe", "Diego", "Hana", "Sam"]
ITEMS = ["apples", "oranges", "stickers", "marbles", "pencils", "cookies", "stamps", "shells"]


def frac_tex(x: Fraction) -> str:
    """A Fraction as LaTeX: whole numbers bare, others as \\frac{p}{q} (lowest terms)."""
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def decimal_text(x: Fraction) -> str:
    """A terminating Fraction as a short decimal string: 15/2 -> "7.5", 12 -> "12"."""
    if x.denominator == 1:
        return str(x.numerator)
    text = f"{float(x):.4f}".rstrip("0").rstrip(".")
    assert Fraction(text) == x, f"{x} does not terminate within 4 places"
    return text


def row(problem: str, steps: str, answer: str, level: int) -> dict:
    """A finished row: the worked steps followed by the boxed answer."""
    solution = f"{steps} The answer is $\\boxed{{{answer}}}$."
    return {"problem": problem, "solution": solution, "answer": answer, "level": level}


# Each template draws parameters and returns (key, row). The key identifies the underlying problem, so the
# same numbers in different wording count as one problem and can never land in both train and test.
Template = Callable[[random.Random], tuple[tuple, dict]]


def t_add(r: random.Random) -> tuple[tuple, dict]:
    a, b = r.randint(12, 99), r.randint(12, 99)
    problem = r.choice([f"What is ${a} + {b}$?", f"Compute ${a} + {b}$.", f"Find the sum of {a} and {b}."])
    return (a, b), row(problem, f"Adding, ${a} + {b} = {a + b}$.", str(a + b), 1)


def t_sub(r: random.Random) -> tuple[tuple, dict]:
    a = r.randint(30, 99)
    b = r.randint(6, a - 5)
    problem = r.choice([f"What is ${a} - {b}$?", f"Compute ${a} - {b}$.", f"Subtract {b} from {a}."])
    return (a, b), row(problem, f"Subtracting, ${a} - {b} = {a - b}$.", str(a - b), 1)


def t_mul(r: random.Random) -> tuple[tuple, dict]:
    a, b = r.randint(3, 12), r.randint(3, 15)
    problem = r.choice(
        [f"What is ${a} \\times {b}$?", f"Compute ${a} \\cdot {b}$.", f"Find the product of {a} and {b}."]
    )
    return (a, b), row(problem, f"Multiplying, ${a} \\times {b} = {a * b}$.", str(a * b), 1)


def t_div(r: random.Random) -> tuple[tuple, dict]:
    b, q = r.randint(2, 12), r.randint(2, 15)
    a = b * q
    problem = r.choice([f"What is ${a} \\div {b}$?", f"Compute ${a} \\div {b}$.", f"Divide {a} by {b}."])
    return (a, b), row(problem, f"Since ${b} \\times {q} = {a}$, we get ${a} \\div {b} = {q}$.", str(q), 1)


def t_order_of_ops(r: random.Random) -> tuple[tuple, dict]:
    a, b, c = r.randint(2, 20), r.randint(2, 9), r.randint(2, 9)
    kind = r.choice(["add_mul", "paren", "mul_sub"])
    if kind == "add_mul":
        expr, answer = f"{a} + {b} \\times {c}", a + b * c
        steps = f"Multiplication comes first: ${b} \\times {c} = {b * c}$. Then ${a} + {b * c} = {answer}$."
    elif kind == "paren":
        expr, answer = f"({a} + {b}) \\times {c}", (a + b) * c
        steps = f"The parentheses come first: ${a} + {b} = {a + b}$. Then ${a + b} \\times {c} = {answer}$."
    else:
        a = r.randint(2, b * c - 1)
        expr, answer = f"{b} \\times {c} - {a}", b * c - a
        steps = f"Multiplication comes first: ${b} \\times {c} = {b * c}$. Then ${b * c} - {a} = {answer}$."
    problem = r.choice([f"Evaluate ${expr}$.", f"What is the value of ${expr}$?"])
    return (kind, a, b, c), row(problem, steps, str(answer), 2)


def t_power(r: random.Random) -> tuple[tuple, dict]:
    e = r.choice([2, 2, 2, 3])
    n = r.randint(2, 15) if e == 2 else r.randint(2, 5)
    problem = r.choice([f"What is ${n}^{e}$?", f"Compute ${n}^{e}$."])
    factors = " \\times ".join([str(n)] * e)
    return (n, e), row(problem, f"${n}^{e} = {factors} = {n**e}$.", str(n**e), 1)


def t_give_away(r: random.Random) -> tuple[tuple, dict]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(5, 30), r.randint(2, 15)
    c = r.randint(1, a + b - 1)
    problem = r.choice(
        [
            f"{name} has {a} {item}, buys {b} more, and then gives {c} away to a friend. "
            f"How many {item} does {name} have now?",
            f"There are {a} {item} in a box. Someone adds {b} more {item}, "
            f"and then {c} {item} are taken out. How many {item} are in the box now?",
        ]
    )
    steps = f"First ${a} + {b} = {a + b}$. Then ${a + b} - {c} = {a + b - c}$."
    return (a, b, c), row(problem, steps, str(a + b - c), 1)


def t_coins(r: random.Random) -> tuple[tuple, dict]:
    name = r.choice(NAMES)
    (c1, v1), (c2, v2) = r.sample([("quarters", 25), ("dimes", 10), ("nickels", 5), ("pennies", 1)], 2)
    n1, n2 = r.randint(2, 9), r.randint(2, 9)
    total = n1 * v1 + n2 * v2
    problem = f"{name} has {n1} {c1} and {n2} {c2}. How many cents does {name} have in total?"
    steps = (
        f"The {c1} are worth ${n1} \\times {v1} = {n1 * v1}$ cents and the {c2} are worth "
        f"${n2} \\times {v2} = {n2 * v2}$ cents. Together that is ${n1 * v1} + {n2 * v2} = {total}$ cents."
    )
    return (c1, n1, c2, n2), row(problem, steps, str(total), 2)


def t_travel(r: random.Random) -> tuple[tuple, dict]:
    speed, hours = r.choice([30, 40, 45, 50, 60, 70, 80, 90]), r.randint(2, 6)
    dist = speed * hours
    vehicle = r.choice(["A train", "A car", "A bus", "A truck"])
    kind = r.choice(["distance", "distance", "time", "speed"])
    if kind == "distance":
        problem = f"{vehicle} travels at {speed} miles per hour for {hours} hours. How many miles does it go?"
        steps = f"Distance is speed times time: ${speed} \\times {hours} = {dist}$."
        answer, level = dist, 1
    elif kind == "time":
        problem = f"{vehicle} travels {dist} miles at {speed} miles per hour. How many hours does it take?"
        steps = f"Time is distance divided by speed: ${dist} \\div {speed} = {hours}$."
        answer, level = hours, 2
    else:
        problem = f"{vehicle} goes {dist} miles in {hours} hours. How many miles per hour is that?"
        steps = f"Speed is distance divided by time: ${dist} \\div {hours} = {speed}$."
        answer, level = speed, 2
    return (kind, speed, hours), row(problem, steps, str(answer), level)


def t_linear(r: random.Random) -> tuple[tuple, dict]:
    a, x = r.randint(2, 9), r.randint(1, 12)
    if r.random() < 0.5:
        b = r.randint(1, 20)
        eq, c = f"{a}x + {b} = {a * x + b}", a * x + b
        steps = f"Subtract {b} from both sides: ${a}x = {c - b}$. Divide by {a}: $x = {x}$."
    else:
        b = r.randint(1, a * x - 1)
        eq, c = f"{a}x - {b} = {a * x - b}", a * x - b
        steps = f"Add {b} to both sides: ${a}x = {c + b}$. Divide by {a}: $x = {x}$."
    problem = r.choice(
        [f"Solve for $x$: ${eq}$.", f"If ${eq}$, what is the value of $x$?", f"Find $x$ if ${eq}$."]
    )
    return (eq,), row(problem, steps, str(x), 2)


def t_percent(r: random.Random) -> tuple[tuple, dict]:
    p = r.choice([10, 20, 25, 30, 40, 50, 60, 75])
    n = r.choice([20, 40, 60, 80, 100, 120, 150, 200, 240, 300, 400, 500])
    value = Fraction(p * n, 100)
    problem = r.choice([f"What is ${p}\\%$ of ${n}$?", f"Find {p} percent of {n}."])
    steps = f"${p}\\%$ of ${n}$ is ${n} \\times \\frac{{{p}}}{{100}} = {decimal_text(value)}$."
    return (p, n), row(problem, steps, decimal_text(value), 2)


def t_discount(r: random.Random) -> tuple[tuple, dict]:
    p = r.choice([10, 20, 25, 50])
    price = r.choice([20, 40, 60, 80, 100, 120, 200])
    off = price * p // 100
    item = r.choice(["jacket", "backpack", "lamp", "game", "pair of shoes"])
    problem = f"A {item} costs {price} dollars and is {p}% off today. What is the sale price, in dollars?"
    steps = (
        f"The discount is ${p}\\%$ of ${price}$, which is ${off}$. "
        f"The sale price is ${price} - {off} = {price - off}$."
    )
    return (p, price), row(problem, steps, str(price - off), 3)


def t_gcd(r: random.Random) -> tuple[tuple, dict]:
    g = r.randint(2, 9)
    m, n = r.sample(range(2, 10), 2)
    while gcd(m, n) != 1:  # coprime cofactors, so that g really is the gcd
        m, n = r.sample(range(2, 10), 2)
    a, b = sorted((g * m, g * n))
    problem = r.choice([f"What is the greatest common divisor of {a} and {b}?", f"Find $\\gcd({a}, {b})$."])
    steps = (
        f"We have ${a} = {g} \\times {a // g}$ and ${b} = {g} \\times {b // g}$, and {a // g} and {b // g} "
        f"share no factor larger than 1."
    )
    return (a, b), row(problem, steps, str(g), 2)


def t_lcm(r: random.Random) -> tuple[tuple, dict]:
    a, b = sorted(r.sample(range(2, 16), 2))
    lcm = a * b // gcd(a, b)
    problem = r.choice(
        [
            f"What is the least common multiple of {a} and {b}?",
            f"Find the smallest positive number that is a multiple of both {a} and {b}.",
        ]
    )
    if gcd(a, b) == 1:
        steps = (
            f"{a} and {b} share no factor larger than 1, so their least common multiple is their product: "
            f"${a} \\times {b} = {lcm}$."
        )
    else:
        steps = (
            f"$\\gcd({a}, {b}) = {gcd(a, b)}$, so the least common multiple is "
            f"$\\frac{{{a} \\times {b}}}{{{gcd(a, b)}}} = {lcm}$."
        )
    return (a, b), row(problem, steps, str(lcm), 2)


def t_remainder(r: random.Random) -> tuple[tuple, dict]:
    d, n = r.randint(3, 9), r.randint(20, 99)
    q, rem = divmod(n, d)
    problem = r.choice(
        [f"What is the remainder when {n} is divided by {d}?", f"Find the remainder of ${n} \\div {d}$."]
    )
    steps = f"${d} \\times {q} = {d * q}$ and ${n} - {d * q} = {rem}$."
    return (n, d), row(problem, steps, str(rem), 1)


def t_frac_add(r: random.Random) -> tuple[tuple, dict]:
    total = Fraction(1)
    while total.denominator == 1:  # keep the answer a genuine fraction
        b, d = r.sample([2, 3, 4, 5, 6, 8, 10], 2)
        a, c = r.randint(1, b - 1), r.randint(1, d - 1)
        if gcd(a, b) > 1 or gcd(c, d) > 1:  # show the addends in lowest terms
            continue
        total = Fraction(a, b) + Fraction(c, d)
    common = b * d // gcd(b, d)
    top = a * common // b + c * common // d
    problem = f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$. Give your answer as a common fraction."
    steps = (
        f"With the common denominator {common}, $\\frac{{{a * common // b}}}{{{common}}} + "
        f"\\frac{{{c * common // d}}}{{{common}}} = \\frac{{{top}}}{{{common}}}$."
    )
    if Fraction(top, common).denominator != common:
        steps += f" This simplifies to ${frac_tex(total)}$."
    return (a, b, c, d), row(problem, steps, frac_tex(total), 3)


def t_frac_of(r: random.Random) -> tuple[tuple, dict]:
    q = r.choice([2, 3, 4, 5, 6, 8, 10])
    p = r.choice([k for k in range(1, q) if gcd(k, q) == 1])
    n = q * r.randint(2, 12)
    problem = r.choice([f"What is $\\frac{{{p}}}{{{q}}}$ of {n}?", f"Find $\\frac{{{p}}}{{{q}}}$ of {n}."])
    steps = f"${n} \\div {q} = {n // q}$."
    if p > 1:
        steps = f"${n} \\div {q} = {n // q}$, and ${n // q} \\times {p} = {n // q * p}$."
    return (p, q, n), row(problem, steps, str(n // q * p), 1 if p == 1 else 2)


def t_simplify(r: random.Random) -> tuple[tuple, dict]:
    q = r.randint(2, 9)
    p = r.randint(1, q - 1)
    while gcd(p, q) != 1:
        p = r.randint(1, q - 1)
    g = r.randint(2, 8)
    answer = frac_tex(Fraction(p, q))
    problem = r.choice(
        [
            f"Simplify $\\frac{{{p * g}}}{{{q * g}}}$.",
            f"Write $\\frac{{{p * g}}}{{{q * g}}}$ in lowest terms.",
        ]
    )
    steps = (
        f"Both {p * g} and {q * g} are divisible by {g}, so "
        f"$\\frac{{{p * g}}}{{{q * g}}} = \\frac{{{p}}}{{{q}}}$."
    )
    return (p * g, q * g), row(problem, steps, answer, 2)


def t_rectangle(r: random.Random) -> tuple[tuple, dict]:
    length, width = r.randint(3, 15), r.randint(2, 10)
    kind = r.choice(["area", "perimeter"])
    if kind == "area":
        problem = f"A rectangle has length {length} and width {width}. What is its area?"
        answer = length * width
        steps = f"Area is length times width: ${length} \\times {width} = {answer}$."
    else:
        problem = f"A rectangle is {length} meters long and {width} meters wide. What is its perimeter?"
        answer = 2 * (length + width)
        steps = f"The perimeter is $2 \\times ({length} + {width}) = {answer}$."
    return (kind, length, width), row(problem, steps, str(answer), 1)


def t_mean(r: random.Random) -> tuple[tuple, dict]:
    m = r.randint(4, 30)
    d1, d2 = r.randint(1, m - 1), r.randint(1, m - 1)
    nums = sorted([m - d1, m + d2, m + d1 - d2])
    if nums[0] <= 0 or len(set(nums)) < 3:
        nums = [m - 2, m, m + 2]
    a, b, c = nums
    problem = r.choice([f"What is the mean of {a}, {b}, and {c}?", f"Find the average of {a}, {b}, and {c}."])
    steps = f"The sum is ${a} + {b} + {c} = {3 * m}$, and ${3 * m} \\div 3 = {m}$."
    return (a, b, c), row(problem, steps, str(m), 2)


def t_substitute(r: random.Random) -> tuple[tuple, dict]:
    k, a, b = r.randint(1, 9), r.randint(2, 9), r.randint(1, 15)
    if r.random() < 0.6:
        expr, answer = f"{a}x + {b}", a * k + b
        steps = f"Substituting, ${a} \\times {k} + {b} = {a * k} + {b} = {answer}$."
    else:
        expr, answer = f"x^2 + {b}", k * k + b
        steps = f"Substituting, ${k}^2 + {b} = {k * k} + {b} = {answer}$."
    problem = r.choice([f"If $x = {k}$, what is ${expr}$?", f"Evaluate ${expr}$ when $x = {k}$."])
    return (expr, k), row(problem, steps, str(answer), 1)


def t_share(r: random.Random) -> tuple[tuple, dict]:
    parts = r.choice([2, 4])
    n = r.randint(3, 40)
    if n % parts == 0:
        n += 1
    each = Fraction(n, parts)
    thing, unit = r.choice([("ribbon", "meters"), ("rope", "feet"), ("board", "meters"), ("pipe", "feet")])
    problem = f"A {thing} {n} {unit} long is cut into {parts} equal pieces. How many {unit} long is each one?"
    steps = f"Each piece is ${n} \\div {parts} = {decimal_text(each)}$ {unit} long."
    return (n, parts), row(problem, steps, decimal_text(each), 2)


def t_change(r: random.Random) -> tuple[tuple, dict]:
    name = r.choice(NAMES)
    cost, count = r.randint(2, 6), r.randint(2, 5)
    paid = r.choice([p for p in (10, 20, 50) if p > cost * count])
    item = r.choice(["notebooks", "sandwiches", "tickets", "plants"])
    problem = (
        f"{name} buys {count} {item} that cost {cost} dollars each and pays with a {paid}-dollar bill. "
        f"How many dollars of change does {name} get?"
    )
    steps = (
        f"The {item} cost ${count} \\times {cost} = {count * cost}$ dollars. "
        f"The change is ${paid} - {count * cost} = {paid - count * cost}$."
    )
    return (cost, count, paid), row(problem, steps, str(paid - count * cost), 3)


TEMPLATES: list[tuple[str, Template]] = [
    ("Arithmetic", t_add),
    ("Arithmetic", t_sub),
    ("Arithmetic", t_mul),
    ("Arithmetic", t_div),
    ("Arithmetic", t_order_of_ops),
    ("Arithmetic", t_power),
    ("Arithmetic", t_share),
    ("Prealgebra", t_give_away),
    ("Prealgebra", t_coins),
    ("Prealgebra", t_travel),
    ("Prealgebra", t_percent),
    ("Prealgebra", t_discount),
    ("Prealgebra", t_frac_add),
    ("Prealgebra", t_frac_of),
    ("Prealgebra", t_simplify),
    ("Prealgebra", t_rectangle),
    ("Prealgebra", t_mean),
    ("Prealgebra", t_change),
    ("Algebra", t_linear),
    ("Algebra", t_substitute),
    ("Number Theory", t_gcd),
    ("Number Theory", t_lcm),
    ("Number Theory", t_remainder),
]


def generate(seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST) -> tuple[list[dict], list[dict]]:
    """Draw templates round-robin until there are enough distinct problems, then split.

    Round-robin order means the first `n_test` problems cover every template, so the test split is
    balanced across templates; the rest is the training split.
    """
    r = random.Random(seed)
    seen_keys: set[tuple] = set()
    seen_text: set[str] = set()
    rows: list[dict] = []
    i = 0
    while len(rows) < n_train + n_test:
        subject, template = TEMPLATES[i % len(TEMPLATES)]
        for _ in range(100):  # retry until this template yields an unseen problem
            key, item = template(r)
            key = (template.__name__, *key)
            if key not in seen_keys and item["problem"] not in seen_text:
                break
        else:
            raise RuntimeError(f"{template.__name__} ran out of distinct problems")
        seen_keys.add(key)
        seen_text.add(item["problem"])
        rows.append({**item, "subject": subject})
        i += 1
    test, train = rows[:n_test], rows[n_test:]
    r.shuffle(test)
    r.shuffle(train)
    return train, test


def write(rows: list[dict], path: Path, split: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, item in enumerate(rows):
            record = {
                "problem": item["problem"],
                "solution": item["solution"],
                "answer": item["answer"],
                "subject": item["subject"],
                "level": item["level"],
                "unique_id": f"builtin/{split}/{i:04d}",
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    train, test = generate(args.seed)
    write(train, args.out / "train.jsonl", "train")
    write(test, args.out / "test.jsonl", "test")
    print(f"wrote {len(train)} train and {len(test)} test rows to {args.out}")


if __name__ == "__main__":
    main()
