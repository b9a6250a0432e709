"""The embedded default student: cut from the embedded teacher, healed by forward KL, cached atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import psutil
import pytest
import yaml

import selftaught.distill.student as student_module
from selftaught.data.formats import tokenize_prompt
from selftaught.distill.student import (
    TEACHER_ANSWERS,
    Healing,
    build_healed_student,
    healed_folder,
    healing_examples,
    healing_prompts,
)
from selftaught.generation.base import SamplingParams
from selftaught.generation.hf import generate_all
from selftaught.models import load_model, load_tokenizer
from selftaught.models.embedded import TEACHER_NAME, embedded_teacher
from selftaught.scoring.degeneration import is_degenerate

TINY = Healing(layers=(0, 29), steps=2, batch_size=2, eval_prompts=2, eval_max_new_tokens=4)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache holding only the dequantised teacher (linked from the shared cache: no rebuild)."""
    teacher = embedded_teacher()
    monkeypatch.setenv("SELFTAUGHT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / TEACHER_NAME).symlink_to(teacher)
    return tmp_path / "cache"


def test_healing_data_is_the_teachers_answers_to_the_shipped_prompts_never_the_held_out_split():
    rows = [json.loads(line) for line in TEACHER_ANSWERS.read_text().splitlines()]
    prompts = healing_prompts()
    assert [row["messages"][:-1] for row in rows] == [
        prompt for _, prompt in prompts
    ]  # none added, none lost
    examples = healing_examples()
    assert 0.9 * len(rows) < len(examples) < len(rows)  # the few answers that loop are left out
    assert not any(is_degenerate(e.completion) for e in examples)
    test_problems = (student_module.MATH_PROMPTS / "test.jsonl").read_text()
    math = [prompt for source, prompt in prompts if source == "math_train"]
    assert len(math) == 160 and not any(p[-1]["content"].split("\n")[0] in test_problems for p in math)


@pytest.mark.slow  # greedy answers of the real SmolLM2-135M-Instruct: 29 s on 2 busy cores
def test_the_shipped_answers_are_the_teachers_greedy_answers():
    """The file is what `--write-teacher-answers` makes: the teacher's greedy text, not someone else's."""
    teacher = embedded_teacher()
    tokenizer, model = load_tokenizer(str(teacher)), load_model(str(teacher)).eval()
    rows = [json.loads(line) for line in TEACHER_ANSWERS.read_text().splitlines()]
    rows = rows[:2] + [row for row in rows if row["source"] == "math_train"][:2]
    prompts = [tokenize_prompt(tokenizer, row["messages"][:-1]) for row in rows]
    answers = generate_all(model, tokenizer, prompts, SamplingParams(16, temperature=0.0), 4, "teacher")
    for row, ids in zip(rows, answers, strict=True):
        assert row["messages"][-1]["content"].startswith(tokenizer.decode(ids, skip_special_tokens=True))


@pytest.mark.slow  # dequantises the real teacher into an empty cache, cuts and heals: 56 s on 2 busy cores
def test_the_healed_student_is_built_once_with_a_card_that_says_how(cache):
    folder = build_healed_student(TINY)
    assert folder == healed_folder(TINY) == cache / f"{TEACHER_NAME}-2L-healed"
    model = load_model(str(folder))
    assert model.config.num_hidden_layers == 2
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    story = front["selftaught"]
    assert story["cut"]["kept_layers"] == [0, 29]
    assert story["healing"]["steps"] == 2 and story["healing"]["completion_tokens"] > 0
    assert "forward KL" in story["healing"]["method"]
    assert set(story["held_out"]) >= {"cut", "healed", "teacher"}
    assert {p.name for p in (folder / "evaluation").iterdir()} == {
        "cut.parquet",
        "healed.parquet",
        "teacher.parquet",
    }
    assert {"forward_kl", "reverse_kl", "top1_agreement", "degenerate_share"} <= set(
        story["held_out"]["healed"]
    )
    assert "## Held-out numbers" in card and str(cache) not in card
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [TEACHER_NAME, f"{TEACHER_NAME}-2L-0-29", folder.name]
    )
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(".")]  # no half build left
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert build_healed_student(TINY) == folder and (folder / "model.safetensors").stat().st_mtime_ns == built


@pytest.mark.slow  # the same build, up to the card: 21 s on 2 busy cores
def test_a_killed_build_leaves_no_half_model(cache, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after training, while the card's numbers are computed

    monkeypatch.setattr(student_module, "held_out_numbers", killed)  # the model is saved, not yet published
    with pytest.raises(KeyboardInterrupt):
        build_healed_student(TINY)
    assert not healed_folder(TINY).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(f".{healed_folder(TINY).name}")]


# A run that needs the embedded student: it builds a real one (one layer), healing for ever, in a child.
ENDLESS = Healing(layers=(0,), steps=10**6, batch_size=1, max_completion_tokens=8, eval_prompts=1)
NEEDS_THE_STUDENT = f"""
from selftaught.distill.student import Healing, healed_student
healed_student(Healing(**{asdict(ENDLESS)!r}))
"""


def wait_until(condition, what: str, *alive: subprocess.Popen, seconds: float = 300):
    """`condition()`'s first true value, polled while every process in `alive` runs."""
    deadline = time.time() + seconds
    while not (found := condition()):
        assert all(p.poll() is None for p in alive), f"a process ended while waiting for {what}"
        assert time.time() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.2)
    return found


@pytest.mark.slow
def test_a_killed_run_takes_its_build_down_and_a_rerun_waits_for_a_live_build(cache, tmp_path):
    """kill -9 of a run while its child builds the student: the child ends too. A second run, started while
    the build is alive, waits for it, naming it: it neither deletes its scratch nor builds beside it."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "second.log"
    scratch = lambda: [p for p in cache.glob(f".{healed_folder(ENDLESS).name}.*") if p.is_dir()]  # noqa: E731
    first = subprocess.Popen([sys.executable, "-c", NEEDS_THE_STUDENT], env=env, stdout=subprocess.DEVNULL)
    with log.open("w") as out:
        second = None
        try:
            building = wait_until(scratch, "scratch folder of the build", first)
            [build] = psutil.Process(first.pid).children()
            second = subprocess.Popen([sys.executable, "-c", NEEDS_THE_STUDENT], env=env, stdout=out)
            wait_until(lambda: f"Waiting for pid {first.pid} " in log.read_text(), "wait", second)
            assert scratch() == building and not psutil.Process(second.pid).children()

            first.kill()
            first.wait()
            assert not psutil.wait_procs([build], timeout=120)[1], "the build runs on without its run"
            wait_until(lambda: psutil.Process(second.pid).children(), "build of the second run", second)
            [second_build] = psutil.Process(second.pid).children()
            second.kill()
            second.wait()
            assert not psutil.wait_procs([second_build], timeout=120)[1]
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
    assert not scratch()  # each build, ended by its run's death, removed its own scratch folder
