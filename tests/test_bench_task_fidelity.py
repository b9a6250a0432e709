"""bench/task_fidelity.py: its runs go through today's recipes (a bench that crashed on the recipe's return
value once went unnoticed until a 45-minute grid reached it), and seeds run side by side merge into one
result that keeps every invocation's provenance."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from selftaught.distill.task_models import TaskTeacher, task_accuracy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the bench imports its neighbour `common`, as it does when run
spec = importlib.util.spec_from_file_location("task_fidelity", ROOT / "bench" / "task_fidelity.py")
task_fidelity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(task_fidelity)

SETTINGS = {"steps": 10, "batch_size": 4}


def result_file(path: Path, command: str, runs: dict) -> Path:
    path.write_text(json.dumps({"provenance": {"command": command}, "settings": SETTINGS, "runs": runs}))
    return path


def run(outcomes: list[int]) -> dict:
    return {"accuracy": sum(outcomes) / len(outcomes), "outcomes": outcomes, "steps": 10}


def test_seeds_run_side_by_side_merge_into_one_result_naming_every_invocation(tmp_path):
    output = result_file(tmp_path / "out.json", "--seeds 0", {"sft": {"0": run([1, 0, 0, 0])}})
    seed1 = result_file(
        tmp_path / "one.json",
        "--seeds 1",
        {"sft": {"1": run([1, 1, 0, 0])}, "on_policy_beta0.9": {"1": run([1, 1, 1, 1])}},
    )
    merged = task_fidelity.read_result(output, SETTINGS)
    task_fidelity.merge_results(merged, seed1, SETTINGS)
    task_fidelity.merge_results(merged, seed1, SETTINGS)  # merged twice: the same runs, named once

    assert merged["runs"]["sft"] == {"0": run([1, 0, 0, 0]), "1": run([1, 1, 0, 0])}
    assert merged["provenance"] == {"command": "--seeds 0"}
    assert merged["earlier_runs"] == [{"command": "--seeds 1"}]
    # on-policy ran seed 1 only: compared with SFT on that seed alone, paired over the 4 problems
    rows = {
        (r["model"], r["against"]): r
        for r in task_fidelity.comparisons(merged["runs"], {"outcomes": [0] * 4})
    }
    assert rows["on_policy_beta0.9", "sft"]["seeds"] == 1
    assert rows["on_policy_beta0.9", "sft"]["difference"] == pytest.approx(0.5)
    assert rows["sft", "student"]["seeds"] == 2 and rows["sft", "student"]["difference"] == pytest.approx(
        0.375
    )


def test_a_merge_refuses_other_settings_and_a_run_that_disagrees(tmp_path):
    output = task_fidelity.read_result(
        result_file(tmp_path / "out.json", "a", {"sft": {"0": run([1, 0])}}), SETTINGS
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {"steps": 30}, "runs": {}}))
    with pytest.raises(SystemExit, match="other.json holds runs of other settings"):
        task_fidelity.merge_results(output, other, SETTINGS)
    disagreeing = result_file(tmp_path / "b.json", "b", {"sft": {"0": run([0, 1])}})
    with pytest.raises(SystemExit, match="sft seed 0 differs"):
        task_fidelity.merge_results(output, disagreeing, SETTINGS)
    with pytest.raises(SystemExit, match="missing.json: no such file"):
        task_fidelity.merge_results(output, tmp_path / "missing.json", SETTINGS)
    assert output["runs"] == {"sft": {"0": run([1, 0])}}  # nothing merged from a refused file


def test_the_bench_trains_and_scores_with_todays_recipes(tmp_path, tiny_student, tiny_teacher):
    args = argparse.Namespace(batch_size=2, learning_rate=1e-4, temperature=0.9, max_new_tokens=8)
    knobs = task_fidelity.METHODS["on_policy_beta0.9"][0]
    seconds = task_fidelity.distill_run(args, knobs, tiny_student, tiny_teacher, 1, 0, tmp_path / "distilled")
    assert seconds > 0 and (tmp_path / "distilled" / "model.safetensors").is_file()
    assert task_fidelity.train_sft_run(args, tiny_student, 1, 0, tmp_path / "sft") > 0

    row = task_accuracy(
        tmp_path / "distilled", TaskTeacher(eval_prompts=2, eval_max_new_tokens=8), tmp_path / "eval"
    )
    assert row["problems"] == 2 and len(row["outcomes"]) == 2 and 0 <= row["accuracy"] <= 1
