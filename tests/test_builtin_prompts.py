"""The shipped math prompt set: well-formed, self-consistent answers, no train/test leak, reproducible."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import selftaught
from selftaught.evaluate.math import answers_match, last_boxed

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(selftaught.__file__).resolve().parent / "data" / "builtin" / "math_prompts"
SUBJECTS = {"Arithmetic", "Prealgebra", "Algebra", "Number Theory"}


def load(split: str) -> list[dict]:
    with (DATA / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def normalise(problem: str) -> str:
    return " ".join(problem.lower().split())


@pytest.mark.parametrize("split, size", [("train", 160), ("test", 32)])
def test_rows_are_well_formed(split, size):
    rows = load(split)
    assert len(rows) == size
    for i, r in enumerate(rows):
        where = f"{split} row {i}"
        assert isinstance(r["problem"], str) and r["problem"].strip(), where
        assert isinstance(r["answer"], str) and r["answer"].strip(), where
        assert r["subject"] in SUBJECTS, where
        assert isinstance(r["level"], int) and 1 <= r["level"] <= 3, where
        assert r["solution"].endswith(f"The answer is $\\boxed{{{r['answer']}}}$."), where


@pytest.mark.parametrize("split", ["train", "test"])
def test_boxed_solution_matches_answer(split):
    wrong = [
        (i, r["answer"], last_boxed(r["solution"]))
        for i, r in enumerate(load(split))
        if not answers_match(r["answer"], last_boxed(r["solution"]) or "")
    ]
    assert wrong == []


def test_train_and_test_are_disjoint():
    train = [normalise(r["problem"]) for r in load("train")]
    test = [normalise(r["problem"]) for r in load("test")]
    assert len(set(train)) == len(train)
    assert len(set(test)) == len(test)
    assert set(train).isdisjoint(test)


def test_generator_reproduces_shipped_files(tmp_path):
    """The files are the script's output, byte for byte: edits go through the script, not by hand."""
    script = ROOT / "scripts" / "make_math_prompts.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DATA / f"{split}.jsonl").read_bytes(), split
