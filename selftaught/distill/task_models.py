"""A teacher worth distilling from, and a student worth teaching: both made for the shipped addition task.

The embedded SmolLM2-135M-Instruct answers none of the addition task's problems (`data/builtin/addition`,
written by `scripts/make_addition_task.py`), so closeness to it is not task skill. Fine-tuned once on the
task's worked answers (supervised fine-tuning, `training.sft.train_sft`), it gets most held-out sums right:
that is the task teacher. The task student is a layer cut of that teacher (its embeddings, final norm and
some decoder layers), briefly fine-tuned on the same answers, as the GKD paper's students start from a
checkpoint fine-tuned on the task: it writes the task's format but gets clearly fewer sums right, which
leaves distillation a gap to close (`bench/task_fidelity.py`).

Each is cached once, like the healed student (`distill.cached`: built in a child process under a lock,
published atomically, rebuilt when its settings change), with a card that gives its held-out accuracy:
greedy answers to the first test problems, scored by `selftaught eval math` (`evaluate.math_eval`).

    python -m selftaught.distill.task_models            # builds both (teacher first), prints their folders
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from selftaught.data.formats import to_examples
from selftaught.data.loading import load_rows
from selftaught.data.shards import read_parquet
from selftaught.distill.cached import CachedModel, end_with_parent
from selftaught.evaluate.config import MathEvalConfig
from selftaught.evaluate.intervals import mean_interval
from selftaught.evaluate.math_eval import run_math
from selftaught.models import load_model, load_tokenizer, restore_weights_mode
from selftaught.models.embedded import (
    TEACHER_HUB_ID,
    TEACHER_NAME,
    cache_dir,
    embedded_teacher,
    keep_decoder_layers,
)
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings, sft_example, train_sft

BUILTIN = Path(__file__).resolve().parent.parent / "data" / "builtin"
SHOWN_ANSWERS = 3  # held-out answers kept with each accuracy


@dataclass(frozen=True)
class TaskTeacher:
    """How the task teacher is made from the embedded model; its values are recorded on its card."""

    # The task (a folder under selftaught/data/builtin/ with train.jsonl and test.jsonl, MATH-500 rows).
    data: str = "addition"
    # Supervised fine-tuning on the train split's worked answers: optimizer steps, examples per step, and the
    # learning rate (AdamW, no weight decay or dropout), decaying linearly to `final_learning_rate`.
    # Measured on the former 2- to 4-digit task: 30 steps of 8 at 1e-4 (constant, 5.7 min) got 8 of 64
    # held-out sums right (last loss 0.075). On today's 3-digit task these settings took 406 s of training
    # (8.5 s a step, 2 contended cores; 7.5 min with the evaluation) and got 58 of 64 held out (0.906, 95%
    # interval [0.828, 0.969]); loss 0.116 at step 10, 0.033 at 20, 0.007 at 40. Not measured: whether fewer
    # steps or a constant rate would do as well (the lock of the shared machine allowed one build).
    steps: int = 48
    batch_size: int = 8
    learning_rate: float = 2e-4
    final_learning_rate: float = 2e-5
    # The card's accuracy: greedy answers to the first this many test problems, at most this many tokens
    # (the worked answers are at most 82 tokens long).
    eval_prompts: int = 64
    eval_max_new_tokens: int = 96
    seed: int = 0


@dataclass(frozen=True)
class TaskStudent:
    """How the task student is made from the task teacher; its values are recorded on its card."""

    teacher: TaskTeacher = field(default_factory=TaskTeacher)
    # Decoder layers of the 30-layer task teacher the student keeps (with its embeddings and final norm): the
    # embedded student's cut (layers 13-18 dropped). Measured cuts, fine-tuned at 1e-4 with steps of 8, scored
    # on the first 32 test problems: every other layer (15) still had loss 1.17 after 16 steps; layers 0-9
    # and 20-29 (20) 0 of 32 after 8 steps (loss 0.62); these 24: 0 of 32 after 4 steps, 3 of 32 after 8
    # (loss 0.086), the loss falling fast.
    layers: tuple[int, ...] = tuple(range(13)) + tuple(range(19, 30))
    # Brief supervised fine-tuning of the cut on the teacher's training data (as the teacher's, shorter):
    # 10 steps (228 s on contended cores, mean loss 0.376): 13 of 64 held out (0.203, [0.109, 0.313]), boxed
    # every time: the format, with clearly fewer sums right than the teacher's 58.
    steps: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-4
    seed: int = 0


TASK_TEACHER = TaskTeacher()
TASK_STUDENT = TaskStudent()


def task_data(teacher: TaskTeacher) -> Path:
    return BUILTIN / teacher.data


def teacher_folder(teacher: TaskTeacher = TASK_TEACHER) -> Path:
    return cache_dir() / f"{TEACHER_NAME}-{teacher.data}"


def student_folder(student: TaskStudent = TASK_STUDENT) -> Path:
    return cache_dir() / f"{teacher_folder(student.teacher).name}-{len(student.layers)}L"


def json_settings(settings: TaskTeacher | TaskStudent) -> dict:
    return json.loads(json.dumps(asdict(settings)))  # tuples as lists, as the record holds them


def read_student(fields: dict) -> TaskStudent:
    """A TaskStudent from its JSON settings (the child's --student)."""
    teacher = TaskTeacher(**fields.get("teacher", {}))
    return TaskStudent(
        **fields | {"teacher": teacher, "layers": tuple(fields.get("layers", TASK_STUDENT.layers))}
    )


def task_accuracy(model: Path, teacher: TaskTeacher, out: Path) -> dict:
    """Greedy accuracy on the first `eval_prompts` test problems, by `selftaught eval math` (its result and
    predictions are kept in `out`), with a 95% bootstrap interval over the problems, and each problem's
    outcome."""
    config = MathEvalConfig(
        model=str(model),
        data=str(task_data(teacher)),
        limit=teacher.eval_prompts,
        max_new_tokens=teacher.eval_max_new_tokens,
        batch_size=32,
        dtype="float32",
        output_dir=str(out),
    )
    metrics = run_math(config)["metrics"]
    greedy = sorted(
        (row for row in read_parquet(out / "math_predictions.parquet") if row["sample"] == -1),
        key=lambda row: row["index"],
    )
    outcomes = [int(bool(row["correct"])) for row in greedy]
    problems = load_rows(str(task_data(teacher)), "test")
    return {
        "accuracy": metrics["accuracy"],
        "interval": mean_interval(outcomes),
        "correct": sum(outcomes),
        "problems": len(outcomes),
        "boxed_share": metrics["boxed_share"],
        "outcomes": outcomes,  # 1 where the i-th test problem was answered right: for paired comparisons
        "answers": [  # what the model writes: its first few answers, to read beside the numbers
            {
                "problem": problems[row["index"]]["problem"],
                "answer": row["generated"],
                "correct": bool(row["correct"]),
            }
            for row in greedy[:SHOWN_ANSWERS]
        ],
    }


def fine_tune(
    base: Path,
    teacher: TaskTeacher,
    steps: int,
    batch_size: int,
    lr: float,
    final_lr: float,
    seed: int,
    out: Path,
):
    """Supervised fine-tuning of `base` on the task's training answers (learning rate `lr` decaying linearly
    to `final_lr`), saved (with its tokenizer) to `out`; returns the run's record (steps, seconds, loss)."""
    data = task_data(teacher)
    examples = [
        sft_example(e.prompt[-1]["content"], e.completion)
        for e in to_examples(load_rows(str(data), "train"), str(data))
    ]
    settings = SFTSettings(
        learning_rate=lr,
        final_learning_rate=final_lr,
        weight_decay=0.0,
        dropout=0.0,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        max_length=512,
        seed=seed,
        save_steps=10**9,  # a build is redone whole if killed: no checkpoints
    )
    train_sft(str(base), examples, out, settings, resume=False)
    record = json.loads((out / COMPLETE_MARKER).read_text())
    (out / COMPLETE_MARKER).unlink()  # train_sft's marker; the card and the cache's record replace it
    train = record["train"]
    return {
        "steps": steps,
        "seconds": round(train.get("train_runtime", 0.0), 1),
        "mean_loss": train.get("train_loss"),
    }


def cached(settings: TaskTeacher | TaskStudent, folder: Path, flag: str, duration: str) -> CachedModel:
    return CachedModel(
        folder,
        json_settings(settings),
        record="task.json",
        module="selftaught.distill.task_models",
        flag=flag,
        description=f"the task {flag.lstrip('-')}",
        duration=duration,
    )


def cached_teacher(teacher: TaskTeacher) -> CachedModel:
    duration = f"fine-tuned for {teacher.steps} steps; about 7.5 minutes on 2 cores"
    return cached(teacher, teacher_folder(teacher), "--teacher", duration)


def cached_student(student: TaskStudent) -> CachedModel:
    duration = f"cut from the task teacher, fine-tuned for {student.steps} steps; a few minutes"
    return cached(student, student_folder(student), "--student", duration)


def finish(built: Path, name: str, made: dict, record: dict, story: str, accuracy: dict[str, dict]) -> dict:
    """Write the card (README.md) of the model built in `built` and cached as `name`, made with the
    settings `made`: front matter (how it was made, the accuracies but not each outcome), its story and an
    accuracy table. Returns what its record keeps: the training run's numbers and the held-out accuracies."""
    teacher, role = made.get("teacher", made), "student" if "teacher" in made else "teacher"
    shown = {
        model: {k: v for k, v in a.items() if k not in ("outcomes", "answers")}
        for model, a in accuracy.items()
    }
    front = {
        "base_model": TEACHER_HUB_ID,
        "library_name": "transformers",
        "tags": ["selftaught", f"task-{role}"],
        "selftaught": {f"task_{role}": made | record, "held_out": shown},
    }
    rows = ["| model | accuracy | 95% interval | correct | boxed |", "|---|---|---|---|---|"]
    for model, a in shown.items():
        low, high = a["interval"]
        rows.append(
            f"| {model} | {a['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | {a['correct']}/{a['problems']} | "
            f"{a['boxed_share']:.3f} |"
        )
    story += (
        f" Held-out accuracy: greedy answers to the first {teacher['eval_prompts']} test problems, at most "
        f"{teacher['eval_max_new_tokens']} tokens, scored by math-verify (answers in `evaluation/`)."
    )
    text = f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {name}\n\n{story}\n\n" + "\n".join(rows)
    for model, a in accuracy.items():
        text += f"\n\nThe {model}'s first held-out answers:\n"
        for shown_answer in a.get("answers", []):  # a teacher cached before answers were kept has none
            verdict = "right" if shown_answer["correct"] else "wrong"
            text += f"\n- {shown_answer['problem']} ({verdict}) `{shown_answer['answer']}`"
    (built / "README.md").write_text(text + "\n")
    return record | {"held_out": accuracy}


def build_teacher(teacher: TaskTeacher = TASK_TEACHER) -> Path:
    """Fine-tune, evaluate and save the task teacher (in this process); returns its folder."""

    def make(built: Path) -> dict:
        hyper = (
            teacher.steps,
            teacher.batch_size,
            teacher.learning_rate,
            teacher.final_learning_rate,
            teacher.seed,
        )
        record = fine_tune(embedded_teacher(), teacher, *hyper, built)
        accuracy = {"teacher": task_accuracy(built, teacher, built / "evaluation")}
        story = (
            f"{TEACHER_NAME} fine-tuned on the `{teacher.data}` task's worked answers "
            f"(selftaught/data/builtin/{teacher.data}/train.jsonl): {teacher.steps} optimizer steps of "
            f"{teacher.batch_size} examples, learning rate {teacher.learning_rate:g} decaying linearly to "
            f"{teacher.final_learning_rate:g}, mean "
            f"training loss {record['mean_loss']:.4f}."
        )
        return finish(built, teacher_folder(teacher).name, json_settings(teacher), record, story, accuracy)

    return cached_teacher(teacher).build(make)


def build_student(student: TaskStudent = TASK_STUDENT) -> Path:
    """Cut the task teacher, fine-tune the cut briefly, evaluate and save it (in this process)."""

    def make(built: Path) -> dict:
        teacher_dir, teacher = task_teacher(student.teacher), student.teacher
        with tempfile.TemporaryDirectory(dir=built.parent) as cut:
            model = load_model(str(teacher_dir), dtype="float32")
            total = model.config.num_hidden_layers
            keep_decoder_layers(model, list(student.layers))
            model.save_pretrained(cut)
            restore_weights_mode(cut)
            load_tokenizer(str(teacher_dir)).save_pretrained(cut)
            hyper = (
                student.steps,
                student.batch_size,
                student.learning_rate,
                student.learning_rate,
                student.seed,
            )
            record = fine_tune(Path(cut), teacher, *hyper, built)
        accuracy = {"student": task_accuracy(built, teacher, built / "evaluation")}
        accuracy["teacher"] = json.loads((teacher_dir / "task.json").read_text())["held_out"]["teacher"]
        story = (
            f"A student cut from the task teacher {teacher_folder(teacher).name} ({TEACHER_NAME} fine-tuned "
            f"on the `{teacher.data}` task): its embeddings, final norm and decoder layers "
            f"{list(student.layers)} (of {total}), then fine-tuned on the task's worked answers for "
            f"{student.steps} optimizer steps of {student.batch_size} examples (learning rate "
            f"{student.learning_rate:g}, constant; mean training loss {record['mean_loss']:.4f}). Its "
            "teacher's accuracy is given beside its own."
        )
        return finish(built, student_folder(student).name, json_settings(student), record, story, accuracy)

    return cached_student(student).build(make)


def task_teacher(teacher: TaskTeacher = TASK_TEACHER) -> Path:
    """Folder of the task teacher, built on first use in a child process (`distill.cached`)."""
    return cached_teacher(teacher).ensure()


def task_student(student: TaskStudent = TASK_STUDENT) -> Path:
    """Folder of the task student (and of its teacher first), built on first use in a child process."""
    task_teacher(student.teacher)
    return cached_student(student).ensure()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Build the addition task's teacher and student (see the docstring)."
    )
    parser.add_argument(
        "--teacher", type=json.loads, help="build only the teacher, with these TaskTeacher fields (JSON)"
    )
    parser.add_argument(
        "--student", type=json.loads, help="build only the student, with these TaskStudent fields (JSON)"
    )
    parser.add_argument("--parent", type=int, help="pid of the run that waits for this build: end with it")
    args = parser.parse_args()
    if args.parent is not None:
        end_with_parent(args.parent)
    if args.teacher is not None:
        build_teacher(TaskTeacher(**args.teacher))
    elif args.student is not None:
        build_student(read_student(args.student))
    else:
        print(task_teacher(), task_student(), sep="\n")
