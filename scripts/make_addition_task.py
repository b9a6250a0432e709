"""Write the shipped addition task (MATH-500 rows): sums of two 3-digit numbers, worked column by column.

A task on which the embedded SmolLM2-135M-Instruct can be made competent, so that distillation from it
teaches a skill (`bench/task_fidelity.py`). Untrained, it answers none of these; fine-tuned on the answer
alone it learns the format and not the sums; fine-tuned on the sums written out column by column, carries
and all, a 135M model gets them right (METHODS.md). So every solution works the columns from the ones up,
always naming the carry it adds (0 too, so that every column reads alike), and ends with the sum boxed:

    ones: 4+6+0=10, write 0 carry 1. tens: 9+0+1=10, write 0 carry 1. hundreds: 3+6+1=10, write 0
    carry 1. thousands: write 1. So $394+606=\\boxed{1000}$.

Both numbers have 3 digits, so a column's two digits sit at the same place in each, and a carry, once
wrong, makes every later column wrong. Mixing 2- to 4-digit numbers was measured and dropped: 30 steps of
8 examples taught the embedded model the format but only 8 of 64 held-out sums, most errors a digit read
from the wrong place of the longer number (BENCHMARKS.md, task_fidelity). Answers are kept short (at most about 70
tokens): on-policy distillation samples them on 2 CPU cores. A fixed seed makes
the files reproducible; a sum and its swapped twin count as one problem, never in both splits.

    python scripts/make_addition_task.py            # writes selftaught/data/builtin/addition/
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261207
N_TRAIN, N_TEST = 1000, 200
DIGITS = 3
OUT = Path(__file__).resolve().parents[1] / "selftaught" / "data" / "builtin" / "addition"
COLUMNS = ("ones", "tens", "hundreds", "thousands", "ten thousands")
PHRASINGS = ("What is ${a} + {b}$?", "Compute ${a} + {b}$.", "Find the sum of {a} and {b}.")


def worked_sum(a: int, b: int) -> str:
    """The column-by-column solution of a + b, ending with the boxed sum."""
    top, bottom = str(a)[::-1], str(b)[::-1]  # ones first
    steps, carry = [], 0
    for column in range(max(len(top), len(bottom))):
        x = int(top[column]) if column < len(top) else 0
        y = int(bottom[column]) if column < len(bottom) else 0
        total = x + y + carry
        steps.append(f"{COLUMNS[column]}: {x}+{y}+{carry}={total}, write {total % 10} carry {total // 10}.")
        carry = total // 10
    if carry:
        steps.append(f"{COLUMNS[len(steps)]}: write {carry}.")
    return " ".join(steps) + f" So ${a}+{b}=\\boxed{{{a + b}}}$."


def number(r: random.Random) -> int:
    return r.randint(10 ** (DIGITS - 1), 10**DIGITS - 1)


def generate(seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST) -> tuple[list[dict], list[dict]]:
    """Distinct problems (a sum and its swapped twin are one), the first `n_test` of them the test split."""
    r = random.Random(seed)
    seen: set[frozenset[int]] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_test:
        a, b = number(r), number(r)
        if frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        rows.append(
            {
                "problem": r.choice(PHRASINGS).format(a=a, b=b),
                "solution": worked_sum(a, b),
                "answer": str(a + b),
                "digits": [len(str(a)), len(str(b))],
            }
        )
    return rows[n_test:], rows[:n_test]


def write(out: Path, splits: dict[str, list[dict]]) -> None:
    """Each split as `<split>.jsonl` in `out`, its rows numbered in `unique_id`."""
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        ids = [{"unique_id": f"addition/{split}/{i:04d}"} for i in range(len(rows))]
        lines = [json.dumps(row | id_, ensure_ascii=False) + "\n" for row, id_ in zip(rows, ids, strict=True)]
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
        print(f"wrote {len(rows)} {split} rows to {out / f'{split}.jsonl'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--seed", type=int, default=SEED, help="of the problems and their wording")
    args = parser.parse_args()
    train, test = generate(args.seed)
    write(args.out, {"train": train, "test": test})
