"""`selftaught eval distance`: KL both ways and agreement with the teacher's greedy answers, via the CLI."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from selftaught.cli import main


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
    assert "math_accuracy" in metrics and "mean_answer_tokens" in metrics["teacher"]
    assert result["models"] == {"student": str(tiny_student), "teacher": str(tiny_teacher)}
    for name in ("student", "teacher"):
        rows = Dataset.from_parquet(str(tmp_path / "pair" / "distance" / f"{name}.parquet")).to_list()
        assert len(rows) == 4  # math_data's test split
        assert {"completion", "completion_ids", "gold_answer", "extracted", "correct"} <= set(rows[0])
