"""The addition task's teacher and student: built once into the cache with a card giving held-out accuracy,
rebuilt only when their settings change, never left half built."""

import json

import pytest
import yaml

import selftaught.distill.task_models as task_models
from selftaught.distill.task_models import (
    TaskStudent,
    TaskTeacher,
    build_student,
    build_teacher,
    json_settings,
    student_folder,
    teacher_folder,
)
from selftaught.models import load_model

TINY = TaskTeacher(steps=1, batch_size=2, eval_prompts=2, eval_max_new_tokens=4)


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_teacher):
    """An empty cache, and a tiny real model standing in for the embedded SmolLM2-135M-Instruct."""
    monkeypatch.setenv("SELFTAUGHT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(task_models, "embedded_teacher", lambda: tiny_teacher)
    return tmp_path / "cache"


def built_at(folder) -> int:
    return (folder / "model.safetensors").stat().st_mtime_ns


@pytest.mark.slow  # fine-tunes and evaluates tiny models: about 20 s on 2 busy cores
def test_the_task_teacher_is_built_once_with_its_accuracy_and_rebuilt_when_its_recipe_changes(cache):
    folder = build_teacher(TINY)
    assert folder == teacher_folder(TINY) == cache / "SmolLM2-135M-Instruct-addition"
    record = json.loads((folder / "task.json").read_text())
    assert record["settings"] == json_settings(TINY) and record["steps"] == 1
    accuracy = record["held_out"]["teacher"]
    assert accuracy["problems"] == 2 and len(accuracy["outcomes"]) == 2 and 0 <= accuracy["accuracy"] <= 1
    test = [
        json.loads(line) for line in (task_models.task_data(TINY) / "test.jsonl").read_text().splitlines()
    ]
    answers = accuracy["answers"]  # what it writes, to be read beside the numbers
    assert [a["problem"] for a in answers] == [row["problem"] for row in test[:2]]
    assert [a["correct"] for a in answers] == [bool(o) for o in accuracy["outcomes"]]
    assert (
        f"{test[0]['problem']} ({'right' if answers[0]['correct'] else 'wrong'}) `"
        in (folder / "README.md").read_text()
    )
    front = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["selftaught"]["task_teacher"]["steps"] == 1
    assert front["selftaught"]["held_out"]["teacher"]["problems"] == 2
    assert (folder / "evaluation" / "math_predictions.parquet").is_file()
    assert str(cache) not in (folder / "README.md").read_text()
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()]  # no half build left

    first = built_at(folder)
    assert build_teacher(TINY) == folder and built_at(folder) == first  # cached: not built again
    longer = TaskTeacher(**json_settings(TINY) | {"steps": 2})
    assert build_teacher(longer) == folder and built_at(folder) != first  # another recipe: rebuilt
    assert json.loads((folder / "task.json").read_text())["settings"]["steps"] == 2


@pytest.mark.slow  # the teacher's build, then the student's: about 30 s on 2 busy cores
def test_the_task_student_is_a_cut_of_the_cached_teacher_with_both_accuracies_on_its_card(cache):
    student = TaskStudent(teacher=TINY, layers=(1,), steps=1, batch_size=2)
    teacher = build_teacher(TINY)
    folder = build_student(student)
    assert folder == student_folder(student) == cache / "SmolLM2-135M-Instruct-addition-1L"
    assert load_model(str(folder)).config.num_hidden_layers == 1
    held_out = json.loads((folder / "task.json").read_text())["held_out"]
    assert held_out["teacher"] == json.loads((teacher / "task.json").read_text())["held_out"]["teacher"]
    assert held_out["student"]["problems"] == 2
    card = (folder / "README.md").read_text()
    assert "| student |" in card and "| teacher |" in card and "decoder layers [1] (of 2)" in card
