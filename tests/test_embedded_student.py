"""The embedded default student: cut from the embedded teacher, healed by forward KL, cached atomically."""

from __future__ import annotations

import json

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
from selftaught.generation.hf import SamplingParams, generate_all
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
