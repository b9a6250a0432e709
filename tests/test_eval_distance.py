"""`selftaught eval distance`: KL both ways and agreement with the teacher's greedy answers, via the CLI."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from selftaught.cli import main
from selftaught.data.formats import Example
from selftaught.data.shards import write_parquet
from selftaught.evaluate.distance import HeldOutEvaluation, HeldOutSettings, drift_warning
from selftaught.evaluate.math import score_math
from selftaught.models import load_model, load_tokenizer


def run(tmp_path, student, teacher, data, name: str) -> dict:
    out = tmp_path / name
    main(["eval", "distance", "--student", str(student), "--teacher", str(teacher), "--data", str(data),
          "--split", "test", "--output_dir", str(out), "--max_new_tokens", "6"])  # fmt: skip
    return json.loads((out / "distance.json").read_text())


def test_a_model_is_at_distance_zero_from_itself(tmp_path, tiny_student, math_data):
    metrics = run(tmp_path, tiny_student, tiny_student, math_data, "self")["metrics"]
    assert metrics["forward_kl"] == pytest.approx(0, abs=1e-5)
    assert metrics["reverse_kl"] == pytest.approx(0, abs=1e-5)
    assert metrics["top1_agreement"] == 1.0 and metrics["answer_agreement"] == 1.0
    assert metrics["tokens"] > 0


def test_distance_to_another_teacher_with_every_answer_saved(tmp_path, tiny_student, tiny_teacher, math_data):
    result = run(tmp_path, tiny_student, tiny_teacher, math_data, "pair")
    metrics = result["metrics"]
    assert metrics["forward_kl"] > 0 and metrics["reverse_kl"] > 0 and 0 <= metrics["top1_agreement"] <= 1
    assert "math_accuracy" in metrics and "boxed_share" in metrics["teacher"]
    for model in (metrics, metrics["teacher"]):
        assert {"degenerate_share", "distinct_2", "mean_tokens", "eos_share"} <= set(model)
    # models and runs by name, never by a path of this machine (the settings hold the paths given)
    assert result["models"] == {"student": tiny_student.name, "teacher": tiny_teacher.name}
    assert str(tmp_path) not in (tmp_path / "pair" / "distance.json").read_text()
    assert result["settings"]["output_dir"] == "pair" and result["dataset"] == "data"
    for name in ("student", "teacher"):
        rows = Dataset.from_parquet(str(tmp_path / "pair" / "distance" / f"{name}.parquet")).to_list()
        assert len(rows) == 4  # math_data's test split
        assert {"prompt", "completion", "completion_ids", "gold_answer", "extracted", "correct"} <= set(
            rows[0]
        )
        assert rows[0]["prompt"].startswith("What is 6 + 5?")


def test_a_student_that_answers_with_whitespace_is_flagged(
    tmp_path, whitespace_model, tiny_teacher, math_data
):
    result = run(tmp_path, whitespace_model, tiny_teacher, math_data, "collapsed")
    student = result["metrics"]
    assert student["degenerate_share"] == 1.0
    assert student["eos_share"] == 0.0 and student["mean_tokens"] == 6  # every answer ran to the cap
    assert student["distinct_2"] == 0.0  # no words at all
    rows = Dataset.from_parquet(str(tmp_path / "collapsed" / "distance" / "student.parquet")).to_list()
    assert all(r["completion"] and not r["completion"].strip() for r in rows)


@pytest.mark.slow  # the real SmolLM2-135M-Instruct answers: 34 s on 2 busy cores
def test_real_answers_are_not_flagged(tmp_path):
    """The embedded SmolLM2-135M-Instruct answering plain questions writes text, which is not degenerate."""
    from selftaught.models.embedded import embedded_teacher

    folder = embedded_teacher()
    tokenizer, teacher = load_tokenizer(str(folder)), load_model(str(folder)).eval()
    questions = ["What is the capital of France?", "Name three primary colours.", "What is 12 + 7?"]
    examples = [Example([{"role": "user", "content": q}]) for q in questions]
    settings = HeldOutSettings(
        max_new_tokens=40, batch_size=4, vocab_size=len(tokenizer), max_prompt_length=512
    )
    evaluation = HeldOutEvaluation(teacher, tokenizer, examples, tmp_path / "answers", settings)
    metrics = evaluation.teacher_metrics()
    assert metrics["degenerate_share"] == 0.0, [r["completion"] for r in evaluation.teacher_rows]
    assert metrics["distinct_2"] > 0.5


def test_a_student_that_moved_away_on_every_distance_is_warned_and_one_that_helped_is_not():
    before = {"forward_kl": 0.336, "reverse_kl": 0.503, "top1_agreement": 0.796}
    worse = {"forward_kl": 0.354, "reverse_kl": 0.512, "top1_agreement": 0.787}  # the demo's numbers once
    message = drift_warning(before, worse)
    assert "forward_kl 0.336 -> 0.354" in message and "learning rate" in message
    assert drift_warning(before, {**worse, "top1_agreement": 0.80}) is None  # one distance improved
    assert drift_warning(worse, before) is None
    assert drift_warning({}, worse) is None  # a run evaluated without distances


def held_out(tmp_path, student_dir, teacher_dir, math_data):
    """The tokenizer, the tiny student, the held-out examples of `math_data` and their evaluation against
    the tiny teacher (6 greedy tokens, answers saved under `tmp_path`)."""
    tokenizer = load_tokenizer(str(teacher_dir))
    student, teacher = load_model(str(student_dir)).eval(), load_model(str(teacher_dir)).eval()
    rows = [json.loads(line) for line in (math_data / "test.jsonl").read_text().splitlines()]
    examples = [Example([{"role": "user", "content": r["problem"]}]) for r in rows]
    settings = HeldOutSettings(
        max_new_tokens=6, batch_size=3, vocab_size=len(tokenizer), max_prompt_length=64
    )
    evaluation = HeldOutEvaluation(teacher, tokenizer, examples, tmp_path / "answers", settings)
    return tokenizer, student, examples, evaluation


def test_a_change_in_distance_carries_a_paired_interval(tmp_path, tiny_student, tiny_teacher, math_data):
    """The teacher measured as a student is at distance 0 from itself: against the tiny student it is closer
    on every prompt, so the interval lies below 0; a student against itself has the interval [0, 0]."""
    tokenizer, student, examples, evaluation = held_out(tmp_path, tiny_student, tiny_teacher, math_data)
    twin = load_model(str(tiny_teacher)).eval()  # the teacher's weights, measured as a student
    far, again, close = (
        evaluation.metrics(m, n) for m, n in ((student, "far"), (student, "again"), (twin, "close"))
    )
    assert close["forward_kl"] == pytest.approx(0, abs=1e-5) and far["forward_kl"] > 0

    changes = {c["metric"]: c for c in evaluation.changes("close", "far")}
    assert set(changes) == {"forward_kl", "reverse_kl", "jsd", "top1_agreement", "nll", "degenerate_share"}
    assert changes["degenerate_share"]["value"] == close["degenerate_share"]
    kl = changes["forward_kl"]
    assert kl["value"] == pytest.approx(close["forward_kl"]) and kl["against_value"] == pytest.approx(
        far["forward_kl"]
    )
    assert kl["difference"] < 0 and kl["ci95"][1] < 0 and kl["items"] == len(examples)
    assert changes["top1_agreement"]["ci95"][0] >= 0
    for same in evaluation.changes("again", "far"):
        assert same["difference"] == pytest.approx(0, abs=1e-6) and same["ci95"] == pytest.approx(
            [0, 0], abs=1e-6
        )


def test_a_change_in_the_degenerate_share_carries_a_paired_interval(
    tmp_path, tiny_student, tiny_teacher, math_data
):
    """Students whose answers are saved (read back, not generated): one that loops on every prompt where
    another loops on none has moved, with the interval [1, 1]; one more looping answer in 4 is a change the
    interval cannot tell from none (it reaches 0)."""
    tokenizer, student, examples, evaluation = held_out(tmp_path, tiny_student, tiny_teacher, math_data)
    fluent = "We add the two numbers and then write the sum as the answer."
    looping = "the sum " * 12
    for name, texts in {
        "fluent": [fluent] * len(examples),
        "looping": [looping] * len(examples),
        "one_loop": [looping] + [fluent] * (len(examples) - 1),
    }.items():
        saved = [
            {
                "prompt": e.prompt[-1]["content"],
                "completion": t,
                "completion_ids": tokenizer(t).input_ids,
                "gold_answer": None,
            }
            for e, t in zip(examples, texts, strict=True)
        ]
        write_parquet(evaluation.path(name), saved)
        assert evaluation.metrics(student, name)["degenerate_share"] == sum(
            t == looping for t in texts
        ) / len(texts)
    everything = {c["metric"]: c for c in evaluation.changes("looping", "fluent")}["degenerate_share"]
    assert everything["difference"] == 1 and everything["ci95"] == [1, 1]
    one = {c["metric"]: c for c in evaluation.changes("one_loop", "fluent")}["degenerate_share"]
    assert one["difference"] == pytest.approx(1 / len(examples)) and one["ci95"][0] == 0
    # no gold answers: no accuracy to compare
    assert "math_accuracy" not in {c["metric"] for c in evaluation.changes("looping", "fluent")}


def test_a_change_in_task_accuracy_carries_a_paired_interval(tmp_path, tiny_student, tiny_teacher, math_data):
    """With gold answers, the students' own verdicts are compared prompt by prompt: right on every prompt
    against wrong on every one is a change of 1 with the interval [1, 1]; right on half is +0.5."""
    tokenizer, student, examples, evaluation = held_out(tmp_path, tiny_student, tiny_teacher, math_data)
    gold = [json.loads(line)["answer"] for line in (math_data / "test.jsonl").read_text().splitlines()]
    answers = {
        "right": [f"The sum is $\\boxed{{{g}}}$." for g in gold],
        "wrong": ["The sum is $\\boxed{0}$."] * len(gold),
    }
    answers["half"] = [answers["right" if i % 2 else "wrong"][i] for i in range(len(gold))]
    for name, texts in answers.items():
        saved = [
            {"prompt": e.prompt[-1]["content"], "completion": t, "completion_ids": tokenizer(t).input_ids,
             "gold_answer": g} | score_math([t], [g])[0]
            for e, t, g in zip(examples, texts, gold, strict=True)
        ]  # fmt: skip
        write_parquet(evaluation.path(name), saved)
        evaluation.metrics(student, name)
    task = {c["metric"]: c for c in evaluation.changes("right", "wrong")}["math_accuracy"]
    assert (task["value"], task["against_value"], task["difference"], task["ci95"]) == (1, 0, 1, [1, 1])
    half = {c["metric"]: c for c in evaluation.changes("half", "wrong")}["math_accuracy"]
    assert half["difference"] == pytest.approx(0.5) and half["items"] == len(gold)
