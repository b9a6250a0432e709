"""`selftaught distill` end to end on tiny random models: outputs, card, metrics, resume, LoRA, DDP."""

from __future__ import annotations

import contextlib
import hashlib
import html
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_counter_model, build_parrot_model
from datasets import Dataset
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftaught.cli import main
from selftaught.distill.card import hyperparameters
from selftaught.distill.config import DistillConfig
from selftaught.distill.recipe import load_teacher
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.models import load_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HYPERPARAMETERS = ("lmbda", "beta", "temperature", "max_new_tokens", "seq_kd")
SEED = 0  # with lmbda=0.5, step 1 trains on the data and step 2 on the student's samples: both paths run


def on_policy_steps(seed: int, lmbda: float, steps: int) -> list[bool]:
    """The trainer's own rule for which optimizer steps (1-based, as logged) are on-policy."""
    stand_in = SimpleNamespace(args=SimpleNamespace(seed=seed, lmbda=lmbda))
    return [GKDistillTrainer.is_on_policy(stand_in, step - 1) for step in range(1, steps + 1)]


def distill_argv(student: Path, teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--student", str(student),
        "--teacher", str(teacher),
        "--data", str(data),
        "--output_dir", str(out),
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--max_new_tokens", "8",
        "--eval_max_new_tokens", "8",
        "--eval_size", "2",
        "--lmbda", "0.5",
        "--save_steps", "1",
        "--report_to", "none",
        "--use_cpu",
        "--seed", str(SEED),
        *extra,
    ]  # fmt: skip


def distill(*argv: str) -> None:
    main(["distill", *argv])


def training_logs(out: Path) -> list[dict]:
    """metrics.jsonl's per-step lines (the end-of-training summary line has no `loss`)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r]


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- one full run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_student, tiny_teacher) -> tuple[Path, str]:
    """One complete run shared by the output checks; returns (output folder, stdout)."""
    root = tmp_path_factory.mktemp("run")
    rows = [
        {
            "problem": f"What is {a} + {b}?",
            "solution": f"{a} + {b} = $\\boxed{{{a + b}}}$.",
            "answer": str(a + b),
        }
        for a in range(2, 6)
        for b in range(3, 7)
    ]
    data = root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]))
    out = root / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        distill(*distill_argv(tiny_student, tiny_teacher, data, out))
    return out, stdout.getvalue()


def test_saves_a_loadable_safetensors_model(finished_run, tiny_student):
    out, _ = finished_run
    assert (out / "model.safetensors").is_file()
    assert not (out / "pytorch_model.bin").exists()
    assert (out / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    student = AutoModelForCausalLM.from_pretrained(tiny_student)
    assert type(model) is type(student)
    assert weights_hash(model) != weights_hash(student)  # it trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_checkpoints_every_save_step(finished_run):
    out, _ = finished_run
    for step in (1, 2):
        assert (out / f"checkpoint-{step}" / "model.safetensors").is_file()
        assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()


def test_model_card(finished_run):
    out, _ = finished_run
    card = ModelCard.load(out / "README.md")
    front = card.data.to_dict()
    assert "selftaught" in front["tags"]
    assert {"distillation", "gkd"} <= set(front["tags"])
    assert front["model-index"], "the card has no model-index"
    results = front["model-index"][0]["results"]
    metrics = {m["type"] for r in results for m in r["metrics"]}
    assert "forward_kl" in metrics
    assert "2306.13649" in card.text
    for name in HYPERPARAMETERS:
        assert f"| {name} |" in card.text, name


def test_saved_weights_are_as_readable_as_the_files_beside_them(finished_run):
    """safetensors creates its file 0o600; a model for a serving user or a container must not be."""
    out, _ = finished_run
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777


def test_card_names_the_dtype_the_teacher_was_loaded_in(tmp_path, tiny_student, tiny_teacher):
    """An unset teacher_dtype is resolved as its help says; the card records the dtype used, not None."""
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    settings |= dict(student=str(tiny_student), teacher=str(tiny_teacher))
    for flags, expected in (
        ({}, "float32"),
        ({"bf16": True}, "bfloat16"),
        ({"teacher_dtype": "float16"}, "float16"),
    ):
        config = DistillConfig(**settings, **flags)
        assert hyperparameters(config)["teacher_dtype"] == expected
        assert load_teacher(config, None).dtype == getattr(torch, expected)


def test_card_gives_warmup_as_steps_or_a_ratio(tmp_path, tiny_student, tiny_teacher):
    """transformers types warmup_steps float: `--warmup_steps 1` (one step) must not read 1.0 on the card."""
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    settings |= dict(student=str(tiny_student), teacher=str(tiny_teacher))
    assert str(hyperparameters(DistillConfig(**settings, warmup_steps=1.0))["warmup_steps"]) == "1"
    assert hyperparameters(DistillConfig(**settings, warmup_steps=0.1))["warmup_steps"] == 0.1  # a ratio


def test_card_says_what_happened_and_names_no_path(finished_run, tiny_student, tiny_teacher):
    out, _ = finished_run
    text = (out / "README.md").read_text()
    # 2 steps of 2 prompts reached 4 of the 12 training prompts, and max_steps overrode the epochs
    assert "on 4 of the 12 training prompts of `data`" in text
    assert "| num_train_epochs |" not in text and "| max_steps | 2 |" in text
    assert "| use_peft | False |" in text and "| lora_r |" not in text  # no LoRA knobs for a full run
    assert f"| student | {tiny_student.name} |" in text and f"| teacher | {tiny_teacher.name} |" in text
    # the summary names each model on a line of its own (a label with commas never runs into the next)
    assert f"- Student (the starting weights): {tiny_student.name}\n- Teacher: {tiny_teacher.name}\n" in text
    assert str(out.parent) not in text and str(tiny_student.parent) not in text
    for name in ("degenerate_share", "distinct_2", "mean_tokens", "eos_share"):
        assert f"| {name} |" in text, name


def test_metrics_file_has_one_line_per_step(finished_run):
    out, _ = finished_run
    logs = training_logs(out)
    assert [r["step"] for r in logs] == [1, 2]
    for record in logs:
        for key in ("loss", "learning_rate", "on_policy", "tokens_per_second"):
            assert isinstance(record[key], (int, float)), key
        assert record["loss"] >= 0
        assert record["tokens_per_second"] > 0
    # one step per log, so on_policy says whether that step sampled from the student
    assert on_policy_steps(SEED, 0.5, 2) == [False, True]
    assert [r["on_policy"] for r in logs] == [0.0, 1.0]
    assert logs[0]["generation_seconds"] == 0 and logs[1]["generation_seconds"] > 0


def test_eval_results(finished_run):
    out, stdout = finished_run
    results = json.loads((out / "eval_results.json").read_text())
    assert {"teacher", "student_before", "student_after"} <= set(results)
    for key in ("student_before", "student_after"):
        for metric in ("forward_kl", "reverse_kl", "top1_agreement", "math_accuracy", "answer_agreement"):
            assert isinstance(results[key][metric], float), (key, metric)
        assert results[key]["forward_kl"] >= 0
        assert 0 <= results[key]["degenerate_share"] <= 1 and results[key]["mean_tokens"] > 0
    assert "math_accuracy" in results["teacher"] and "eos_share" in results["teacher"]
    assert results["train"]["train_loss"] >= 0
    assert "held-out evaluation" in stdout and str(out) in stdout
    # how the student moved, each distance with its paired interval, in the JSON, on the console and card
    changes = {c["metric"]: c for c in results["comparisons"]}
    assert set(changes) == {
        "forward_kl", "reverse_kl", "jsd", "top1_agreement", "nll", "degenerate_share", "math_accuracy",
    }  # fmt: skip
    # the task itself, beside closeness: the held-out rows have gold answers
    task = changes["math_accuracy"]
    assert task["difference"] == pytest.approx(
        results["student_after"]["math_accuracy"] - results["student_before"]["math_accuracy"]
    )
    loops = changes["degenerate_share"]
    assert loops["value"] == results["student_after"]["degenerate_share"]
    assert loops["against_value"] == results["student_before"]["degenerate_share"]
    moved = changes["forward_kl"]
    after, before = results["student_after"]["forward_kl"], results["student_before"]["forward_kl"]
    assert moved["difference"] == pytest.approx(after - before)
    assert moved["ci95"][0] <= moved["difference"] <= moved["ci95"][1]
    assert "student after - before" in stdout
    card = (out / "README.md").read_text()
    assert "## Closer to the teacher?" in card
    # a random tiny teacher answers no sum right: closeness to it is said not to be task skill
    assert results["teacher"]["math_accuracy"] == 0
    assert "## Closeness is not task skill here" in card and "The teacher answers 0%" in stdout


# --- resume -----------------------------------------------------------------------------------------


FINAL_FILES = ("model.safetensors", "config.json", "generation_config.json", "README.md", "eval_results.json")


def test_resume_after_a_crash_neither_loses_nor_repeats_steps(
    tmp_path, tiny_student, tiny_teacher, math_data
):
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, tiny_teacher, math_data, out)
    distill(*argv)
    first_step = (out / "metrics.jsonl").read_text().splitlines()[0]
    uninterrupted = load_file(out / "model.safetensors")

    # a crash after checkpoint-1: the second step, its checkpoint and the final model never happened
    shutil.rmtree(out / "checkpoint-2")
    for name in FINAL_FILES:
        (out / name).unlink()
    assert (out / "checkpoint-1").is_dir()

    distill(*argv, "--resume_from_checkpoint", "last")
    logs = training_logs(out)
    assert [r["step"] for r in logs] == [1, 2]
    assert (out / "metrics.jsonl").read_text().splitlines()[0] == first_step  # step 1 kept, not rerun
    assert (out / "checkpoint-2").is_dir()
    # bit-identical to the uninterrupted run, though step 2 samples (on-policy): data order, the
    # on-policy draw and the sampling RNG all come back from checkpoint-1
    resumed = load_file(out / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), "resume changed the result"
    AutoModelForCausalLM.from_pretrained(out)
    assert "student_after" in json.loads((out / "eval_results.json").read_text())


def test_a_fresh_run_replaces_a_finished_run_and_refuses_an_unfinished_one(
    tmp_path, tiny_student, tiny_teacher, math_data, capsys
):
    """Starting over in a folder with another run's checkpoints: a finished run's checkpoints went stale
    beside the new run's, and a later `--resume_from_checkpoint last` took the newest, the old run's;
    an unfinished run's steps were silently thrown away."""
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, tiny_teacher, math_data, out, "--eval_size", "0")
    distill(*argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    distill(*argv, "--max_steps", "1")  # a finished run is replaced, its checkpoints first
    assert "holds a finished run: replacing it" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert [r["step"] for r in training_logs(out)] == [1]

    (out / "eval_results.json").unlink()  # as a run killed before its end leaves it
    with pytest.raises(SystemExit) as exit_info:
        distill(*argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "checkpoint-1 of an unfinished run" in message and "--resume_from_checkpoint last" in message
    assert (out / "checkpoint-1").is_dir()  # nothing lost
    distill(*argv, "--resume_from_checkpoint", "last")  # the advised flag continues it
    assert [r["step"] for r in training_logs(out)] == [1, 2]


@pytest.mark.parametrize("existing", [False, True], ids=["no-output-dir", "empty-output-dir"])
def test_resume_last_without_checkpoints_starts_fresh(
    tmp_path, tiny_student, tiny_teacher, math_data, existing
):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    distill(
        *distill_argv(
            tiny_student, tiny_teacher, math_data, out, "--eval_size", "0", "--save_strategy", "no"
        ),
        "--resume_from_checkpoint",
        "last",
    )
    assert [r["step"] for r in training_logs(out)] == [1, 2]
    assert (out / "model.safetensors").is_file()


# --- LoRA -------------------------------------------------------------------------------------------


def test_evaluation_during_training_logs_a_held_out_loss(tmp_path, tiny_student, tiny_teacher, math_data):
    """eval_strategy=steps scores the held-out split's completions with the same JSD every eval_steps."""
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, tiny_teacher, math_data, out, "--save_strategy", "no")
    distill(*argv, "--eval_strategy", "steps", "--eval_steps", "1")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(0 < r["eval_loss"] < 0.7 for r in evals)  # a JSD at beta 0.5 lies in (0, ln 2)


def test_lora_run_saves_a_plain_merged_model(tmp_path, tiny_student, tiny_teacher, math_data):
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, tiny_teacher, math_data, out, "--save_strategy", "no")
    distill(*argv, "--use_peft", "--lora_r", "4", "--max_steps", "1", "--learning_rate", "1e-3")
    assert not (out / "adapter_config.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    saved = load_file(out / "model.safetensors")
    original = load_file(tiny_student / "model.safetensors")
    assert not any("lora" in key or "base_model" in key for key in saved)
    assert set(saved) == set(original)
    changed = [k for k in original if not torch.equal(saved[k], original[k])]
    assert changed and all("proj" in k for k in changed), changed  # only the adapted linear layers
    model = AutoModelForCausalLM.from_pretrained(out)
    assert weights_hash(model) != weights_hash(AutoModelForCausalLM.from_pretrained(tiny_student))
    assert [r["step"] for r in training_logs(out)] == [1]
    assert "| lora_r | 4 |" in (out / "README.md").read_text()  # the card says which adapters were trained


# --- two processes ----------------------------------------------------------------------------------


HASHING_LAUNCHER = '''
"""Run the real recipe, recording each process's weights before and after training."""
import hashlib
import os
import sys
from pathlib import Path

import selftaught.distill.recipe as recipe
from selftaught.cli import parse_config
from selftaught.distill.config import DistillConfig

HASH_DIR = Path(os.environ["SELFTAUGHT_TEST_HASH_DIR"])


def weights_hash(model):
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class HashingTrainer(recipe.GKDistillTrainer):
    def __init__(self, model, *args, **kwargs):
        self.initial_hash = weights_hash(model)
        super().__init__(model, *args, **kwargs)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        final_hash = weights_hash(self.accelerator.unwrap_model(self.model))
        line = f"{self.accelerator.num_processes} {self.initial_hash} {final_hash}"
        (HASH_DIR / f"rank{self.args.process_index}.txt").write_text(line)
        return output


recipe.GKDistillTrainer = HashingTrainer
recipe.run_distillation(parse_config(DistillConfig, sys.argv[1:], "selftaught distill"))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_same_weights(tmp_path, tiny_student, tiny_teacher, math_data):
    """DDP on CPU (gloo), on-policy sampling on each rank: every process must end with identical weights.

    `accelerate launch --cpu --num_processes 2` starts only one process without mpirun; `--multi_gpu`
    goes through torchrun, which on a machine without GPUs gives accelerate's MULTI_CPU (gloo) setup.
    """
    script = tmp_path / "run_hashed.py"
    script.write_text(textwrap.dedent(HASHING_LAUNCHER))
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, tiny_teacher, math_data, out, "--save_strategy", "no")
    argv[argv.index("--lmbda") + 1] = "1"
    argv[argv.index("--eval_size") + 1] = "0"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(script), *argv,
    ]  # fmt: skip
    env = os.environ | {
        "SELFTAUGHT_TEST_HASH_DIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    lines = [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    (world0, initial0, final0), (world1, initial1, final1) = lines
    assert world0 == world1 == "2"
    assert initial0 == initial1
    assert final0 == final1, "the processes ended with different weights"
    assert final0 != initial0, "training did not change the weights"
    assert weights_hash(AutoModelForCausalLM.from_pretrained(out)) == final0  # what was saved is that model

    logs = training_logs(out)
    assert [r["step"] for r in logs] == [1, 2]
    assert all(r["on_policy"] == 1.0 for r in logs)
    # both processes' samples count: 2 processes x 2 prompts, at most 8 tokens each
    assert all(4 <= r["completion_tokens"] <= 2 * 2 * 8 for r in logs)


# --- self-distillation with privileged context --------------------------------------------------------


def test_self_distillation_with_the_reference_solution(tmp_path, tiny_student, math_data, capsys):
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, Path("self"), math_data, out, "--save_strategy", "no")
    distill(*argv, "--teacher_context", "Here is a reference solution:\n{solution}")
    results = json.loads((out / "eval_results.json").read_text())
    assert {"teacher", "student_before", "student_after"} <= set(results)
    # the teacher (the frozen start, shown the solution) answered under its own prompt; the student without
    teacher_rows = Dataset.from_parquet(str(out / "evaluation" / "teacher.parquet")).to_list()
    student_rows = Dataset.from_parquet(str(out / "evaluation" / "student_before.parquet")).to_list()
    assert all("Here is a reference solution:" in r["prompt"] for r in teacher_rows)
    assert not any("reference solution" in r["prompt"] for r in student_rows)
    card = ModelCard.load(out / "README.md")
    assert {"self-distillation", "opsd"} <= set(card.data.to_dict()["tags"])
    assert "2601.18734" in card.text and "| teacher | self (a frozen copy" in card.text
    assert "| teacher_context |" in card.text


def test_the_self_teacher_is_a_frozen_copy_of_the_start(tmp_path, tiny_student, math_data):
    config = DistillConfig(
        output_dir=str(tmp_path), student=str(tiny_student), teacher="self", teacher_context="solution",
        data=str(math_data), use_cpu=True, report_to="none",
    )  # fmt: skip
    student = load_model(str(tiny_student))
    teacher = load_teacher(config, student)
    assert weights_hash(teacher) == weights_hash(student)
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher", "self"], "--teacher self without --teacher_context would teach nothing"),
        (["--seq_kd", "--lmbda", "1"], "--lmbda 1 leaves none"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(
    tmp_path, tiny_student, math_data, extra, message, capsys
):
    argv = distill_argv(tiny_student, tiny_student, math_data, tmp_path / "out")
    with pytest.raises(SystemExit) as stopped:
        distill(*argv, *extra)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_context_column_the_data_lacks_is_named_before_any_model_loads(
    tmp_path, tiny_student, math_data, capsys
):
    argv = distill_argv(tiny_student, Path("self"), math_data, tmp_path / "out")
    with pytest.raises(SystemExit) as stopped:
        main(["distill", *argv, "--teacher_context", "Hint: {hint}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "['hint']" in err and "problem" in err and "teacher_context" in err


# --- a collapse is never silent -----------------------------------------------------------------------


def test_a_run_that_collapses_ends_with_the_warning_and_the_card_carries_it(
    tmp_path, tokenizer_dir, math_data, capsys
):
    """Forward KL to a teacher that only ever says " the", at a high learning rate: the student, which
    before training never repeated a word, learns to say " the" over and over."""
    student = build_counter_model(tmp_path / "counter", tokenizer_dir)
    teacher = build_parrot_model(tmp_path / "parrot", tokenizer_dir, " the")
    out = tmp_path / "out"
    argv = distill_argv(student, teacher, math_data, out, "--save_strategy", "no", "--eval_size", "4")
    argv[argv.index("--max_steps") + 1] = "8"
    argv[argv.index("--eval_max_new_tokens") + 1] = "12"
    distill(*argv, "--lmbda", "0", "--beta", "0", "--learning_rate", "0.05")
    results = json.loads((out / "eval_results.json").read_text())
    assert results["student_before"]["degenerate_share"] == 0.0
    assert results["student_after"]["degenerate_share"] == 1.0
    warning = results["warning"]
    assert warning.startswith("Warning: 100% of the trained model's held-out answers are degenerate")
    assert "learning rate" in warning
    assert capsys.readouterr().out.rstrip().endswith(warning.split()[-1])  # the run's last words
    assert warning in (out / "README.md").read_text()
    assert warning in html.unescape((out / "report" / "index.html").read_text())
