"""`selftaught eval math`: the pass@k estimator, the breakdown by subject and level, a CLI run."""

from __future__ import annotations

import json
from math import comb

import pytest
from conftest import write_jsonl
from datasets import Dataset

from selftaught.cli import main
from selftaught.evaluate.math import breakdown, check_answer, parse_gold, pass_at_k
from selftaught.evaluate.math_eval import math_metrics


@pytest.mark.parametrize(
    "n, c, k, expected", [(5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 3, 0.0), (4, 4, 2, 1.0)]
)
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_combinatorial_definition():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_breakdown_groups_accuracy_and_counts():
    groups = ["Algebra", "Geometry", "Algebra", 3, 3]
    assert breakdown(groups, [True, False, False, True, True]) == {
        "3": {"accuracy": 1.0, "problems": 2},
        "Algebra": {"accuracy": 0.5, "problems": 2},
        "Geometry": {"accuracy": 0.0, "problems": 1},
    }


def test_math_metrics_from_known_verdicts():
    # the second answer boxes nothing: an empty box is not a boxed answer
    answers = [
        ("So $\\boxed{5}$.", "5", 9, True),
        ("It is $\\boxed{}$.", "", 5, True),
        (" " * 12, None, 12, False),
    ]
    greedy = [
        {"index": i, "correct": ok, "generated": text, "extracted": box, "tokens": n, "ended_with_eos": eos}
        for i, ((text, box, n, eos), ok) in enumerate(zip(answers, [True, False, False], strict=True))
    ]
    # 4 samples per problem: problem 0 right 4/4, problem 1 right 1/4, problem 2 never
    verdicts = {0: [1, 1, 1, 1], 1: [0, 1, 0, 0], 2: [0, 0, 0, 0]}
    sampled = [{"index": i, "correct": bool(v)} for i, vs in verdicts.items() for v in vs]
    rows = Dataset.from_list([{"subject": s, "level": lv} for s, lv in [("A", 1), ("B", 1), ("A", 2)]])
    metrics = math_metrics(greedy, sampled, rows, [1, 2], samples=4)
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["boxed_share"] == pytest.approx(1 / 3)
    assert metrics["degenerate_share"] == pytest.approx(1 / 3)  # the whitespace answer
    assert metrics["mean_tokens"] == pytest.approx(26 / 3) and metrics["eos_share"] == pytest.approx(2 / 3)
    assert metrics["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert metrics["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["by_subject"] == {
        "A": {"accuracy": 0.5, "problems": 2},
        "B": {"accuracy": 0.0, "problems": 1},
    }
    assert metrics["by_level"]["1"] == {"accuracy": 0.5, "problems": 2}


MATH500_ROWS = [
    {"problem": "What is $2+3$?", "solution": "$2+3=5$, so $\\boxed{5}$.", "answer": "5",
     "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Simplify $\\frac{10}{28}$.", "solution": "$\\boxed{\\frac{5}{14}}$",
     "answer": "\\frac{5}{14}",
     "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/2.json"},
    {"problem": "Find $x$ if $2x=8$.", "solution": "$x=\\boxed{4}$", "answer": "4",
     "subject": "Algebra", "level": 1, "unique_id": "test/algebra/3.json"},
]  # fmt: skip


UNVERIFIABLE_ROW = {"problem": "How long does the walk take?", "answer": "4 hours and 15 minutes",
                    "subject": "Prealgebra", "level": 3, "unique_id": "test/prealgebra/9.json"}  # fmt: skip


def test_eval_math_cli_writes_json_and_every_prediction(tmp_path, tiny_student, capsys):
    data = write_jsonl(tmp_path / "math500.jsonl", [*MATH500_ROWS, UNVERIFIABLE_ROW])
    out = tmp_path / "eval"
    main(["eval", "math", "--model", str(tiny_student), "--data", str(data), "--output_dir", str(out),
          "--max_new_tokens", "6", "--samples", "2", "--pass_k", "1,2"])  # fmt: skip
    console = capsys.readouterr().out
    assert "1 of 4 gold answers cannot be verified" in console and "test/prealgebra/9.json" in console
    assert console.index("cannot be verified") < console.index("math on")  # said before the results
    result = json.loads((out / "math.json").read_text())
    assert result["models"] == {"model": tiny_student.name} and result["settings"]["samples"] == 2
    assert str(tmp_path) not in (out / "math.json").read_text()  # names, never paths of this machine
    [flagged] = result["unverifiable"]
    assert flagged["id"] == "test/prealgebra/9.json" and flagged["gold"] == "4 hours and 15 minutes"
    assert "words inside the expression" in flagged["reason"]
    metrics = result["metrics"]
    assert (metrics["problems"], metrics["scored"], metrics["unverifiable"]) == (4, 3, 1)
    assert "pass@1" in metrics and "pass@2" in metrics
    assert set(metrics["by_subject"]) == {"Prealgebra", "Algebra"} and set(metrics["by_level"]) == {"1", "2"}
    predictions = Dataset.from_parquet(str(out / "math_predictions.parquet")).to_list()
    assert len(predictions) == 4 * (1 + 2)
    assert sorted({p["sample"] for p in predictions}) == [-1, 0, 1]
    audit = {"id", "gold", "gold_forms", "gold_parse", "extracted", "extracted_parse", "verdict", "correct"}
    assert audit | {"prompt", "generated", "subject", "level"} <= set(predictions[0])
    greedy = [p for p in predictions if p["sample"] == -1]
    assert [p["id"] for p in greedy] == [r["unique_id"] for r in [*MATH500_ROWS, UNVERIFIABLE_ROW]]
    assert [p["gold_parse"] for p in greedy[:3]] == [["5"], ["5/14"], ["4"]]
    assert metrics["accuracy"] == sum(bool(p["correct"]) for p in greedy[:3]) / 3
    assert {p["verdict"] for p in predictions if p["id"] == "test/prealgebra/9.json"} == {"unverifiable"}
    for p in predictions:  # every verdict follows from the file's own columns
        assert check_answer(parse_gold(p["gold"]), p["extracted"])["verdict"] == p["verdict"]


def test_math_metrics_leave_unverifiable_problems_out_of_every_score():
    text = {"generated": "So $\\boxed{5}$.", "extracted": "5", "tokens": 9, "ended_with_eos": True}
    greedy = [{"index": i, "correct": ok} | text for i, ok in [(0, True), (1, None), (2, False)]]
    sampled = [{"index": i, "correct": ok} for i, ok in [(0, True), (1, None), (2, True)]]
    rows = Dataset.from_list([{"subject": s} for s in ("A", "A", "B")])
    metrics = math_metrics(greedy, sampled, rows, [1], samples=1)
    assert metrics["accuracy"] == 0.5 and metrics["pass@1"] == 1.0
    assert (metrics["problems"], metrics["scored"], metrics["unverifiable"]) == (3, 2, 1)
    assert metrics["by_subject"] == {
        "A": {"accuracy": 1.0, "problems": 1},
        "B": {"accuracy": 0.0, "problems": 1},
    }


def test_rows_without_an_id_column_are_named_by_their_number(tmp_path, tiny_student):
    rows = [{k: v for k, v in r.items() if k != "unique_id"} for r in MATH500_ROWS]
    data = write_jsonl(tmp_path / "noid.jsonl", rows)
    main(["eval", "math", "--model", str(tiny_student), "--data", str(data), "--output_dir", str(tmp_path),
          "--max_new_tokens", "2"])  # fmt: skip
    predictions = Dataset.from_parquet(str(tmp_path / "math_predictions.parquet"))
    assert predictions["id"] == ["1", "2", "3"]


def test_eval_math_names_a_missing_answer_column(tmp_path, tiny_student, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1?"}])
    with pytest.raises(SystemExit):
        main(["eval", "math", "--model", str(tiny_student), "--data", str(data)])
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "answer" in err


def test_eval_math_flags_a_model_that_answers_with_whitespace(tmp_path, whitespace_model):
    data = write_jsonl(tmp_path / "math500.jsonl", MATH500_ROWS)
    out = tmp_path / "eval"
    main(["eval", "math", "--model", str(whitespace_model), "--data", str(data), "--output_dir", str(out),
          "--max_new_tokens", "5"])  # fmt: skip
    metrics = json.loads((out / "math.json").read_text())["metrics"]
    assert metrics["degenerate_share"] == 1.0 and metrics["boxed_share"] == 0.0
    assert metrics["eos_share"] == 0.0 and metrics["mean_tokens"] == 5
