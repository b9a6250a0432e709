"""Stopping and resuming training, on tiny real models: a resumed distillation equals an uninterrupted one
(every sample, loss and tensor), after a crash and after a real SIGKILL through the CLI; a checkpoint cut
short while written is skipped, by distill and by SFT; Ctrl-C stops with one line saying how to resume."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, write_jsonl
from safetensors.torch import load_file
from transformers import Trainer

from selftaught.cli import main
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.training.checkpoints import (
    COMPLETE_MARKER,
    last_complete_checkpoint,
    with_flags,
)
from selftaught.training.sft import COMPLETE_MARKER as SFT_FINISHED
from selftaught.training.sft import SFTSettings, sft_example, train_sft

REPO = Path(__file__).resolve().parent.parent
FINAL_FILES = ("model.safetensors", "config.json", "generation_config.json", "README.md", "eval_results.json")
CLI_ENV = os.environ | {
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}


class SimulatedCrash(Exception):
    pass


@contextmanager
def crash_while_saving(step: int) -> Iterator[None]:
    """The run inside dies in the Trainer's save of checkpoint-`step`, its weights and optimizer written,
    its RNG and trainer state not (what a kill while saving leaves)."""
    save_rng_state = Trainer._save_rng_state

    def crash(self, output_dir):
        if self.state.global_step == step:
            raise SimulatedCrash(f"killed while checkpoint-{step} was written")
        save_rng_state(self, output_dir)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SimulatedCrash):
        patch.setattr(Trainer, "_save_rng_state", crash)
        yield


# --- which checkpoint `last` resumes from -----------------------------------------------------------


def checkpoint(folder: Path, step: int, complete: bool) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"cut short")
    if complete:
        (path / COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))
    return path


def test_last_is_the_newest_complete_checkpoint_and_names_what_it_skipped(tmp_path, capsys):
    checkpoint(tmp_path, 2, complete=True)
    checkpoint(tmp_path, 10, complete=True)
    checkpoint(tmp_path, 12, complete=False)  # a kill while it was written
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # by step, not by name
    said = capsys.readouterr().out.strip().splitlines()
    assert said == ["[resume] skipped checkpoint-12: incomplete (the run stopped while saving it); "
                    "resuming from checkpoint-10"]  # fmt: skip
    assert (tmp_path / "checkpoint-12").is_dir()  # nothing deleted


def test_last_starts_over_when_no_checkpoint_is_complete(tmp_path, capsys):
    checkpoint(tmp_path, 1, complete=False)
    assert last_complete_checkpoint(tmp_path) is None
    assert "skipped checkpoint-1: incomplete" in capsys.readouterr().out
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_the_resume_command_is_the_same_command_with_the_flag_set_once():
    flags = ("--resume_from_checkpoint", "last")
    assert with_flags(["selftaught", "distill", "--seed", "1"], flags) == [
        "selftaught", "distill", "--seed", "1", "--resume_from_checkpoint", "last"
    ]  # fmt: skip
    for given in (["--resume_from_checkpoint", "out/checkpoint-3"], ["--resume_from_checkpoint=true"]):
        assert with_flags(["selftaught", "distill", *given, "--seed", "1"], flags) == [
            "selftaught", "distill", "--seed", "1", "--resume_from_checkpoint", "last"
        ]  # fmt: skip
    assert with_flags(["selftaught", "backtranslate", "run"], ()) == ["selftaught", "backtranslate", "run"]


# --- distill: resumed equals uninterrupted ------------------------------------------------------------


@pytest.fixture(scope="module")
def models_and_data(tmp_path_factory, tokenizer_dir, tiny_teacher) -> tuple[Path, Path, Path]:
    """A student with attention dropout (training draws from the global RNG too, not only sampling), the
    tiny teacher, and 14 math prompts."""
    root = tmp_path_factory.mktemp("resume")
    student = build_tiny_model(root / "student", tokenizer_dir, layers=1, seed=1, attention_dropout=0.1)
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(2, 9) for b in (3, 4)]
    return student, tiny_teacher, write_jsonl(root / "data" / "train.jsonl", rows).parent


def distill_argv(models_and_data, out: Path, steps: int = 3) -> list[str]:
    """Every step on-policy (lmbda 1), two micro-batches a step, a checkpoint every step."""
    student, teacher, data = models_and_data
    return [
        "distill", "--student", str(student), "--teacher", str(teacher), "--data", str(data),
        "--output_dir", str(out), "--max_steps", str(steps), "--save_steps", "1",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_new_tokens", "8", "--eval_size", "0", "--lmbda", "1", "--learning_rate", "1e-3",
        "--report_to", "none", "--use_cpu", "--seed", "0",
    ]  # fmt: skip


def record_samples(monkeypatch) -> dict[int, list]:
    """A spy on the trainer's sampling (the real one runs): completions drawn, by optimizer step."""
    drawn: dict[int, list] = {}
    sample = GKDistillTrainer.sample

    def recorded(self, *args, **kwargs):
        completions = sample(self, *args, **kwargs)
        drawn.setdefault(self.state.global_step, []).append(completions)
        return completions

    monkeypatch.setattr(GKDistillTrainer, "sample", recorded)
    return drawn


def training_logs(out: Path) -> dict[int, dict]:
    """metrics.jsonl's per-step numbers that do not depend on timing, by step."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = {"tokens_per_second", "generation_seconds", "epoch"}
    return {r["step"]: {k: v for k, v in r.items() if k not in timed} for r in records if "loss" in r}


def differing_tensors(out: Path, reference: Path) -> list[str]:
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    return [name for name in ours if not torch.equal(ours[name], theirs[name])]


@pytest.fixture(scope="module")
def uninterrupted(models_and_data, tmp_path_factory) -> tuple[Path, dict[int, list]]:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    with pytest.MonkeyPatch.context() as patch:
        drawn = record_samples(patch)
        main(distill_argv(models_and_data, out))
    assert sorted(drawn) == [0, 1, 2]  # every step sampled
    return out, drawn


@pytest.mark.slow
def test_a_resumed_distillation_samples_and_trains_exactly_as_an_uninterrupted_one(
    models_and_data, uninterrupted, tmp_path, monkeypatch
):
    """Killed after checkpoint-1 and resumed: steps 2 and 3 draw the same completions, log the same losses
    and end in the same tensors. transformers restores the global RNG of a run resumed mid-epoch only after
    fetching its first step, which here samples: every tensor differed."""
    reference, reference_samples = uninterrupted
    out = tmp_path / "out"
    argv = distill_argv(models_and_data, out)
    main(argv)
    for later in ("checkpoint-2", "checkpoint-3"):  # what a kill after checkpoint-1 leaves
        shutil.rmtree(out / later)
    for name in FINAL_FILES:
        (out / name).unlink(missing_ok=True)

    drawn = record_samples(monkeypatch)
    main([*argv, "--resume_from_checkpoint", "last"])
    assert sorted(drawn) == [1, 2]  # resumed after step 1
    assert {step: drawn[step] for step in (1, 2)} == {step: reference_samples[step] for step in (1, 2)}
    assert training_logs(out) == training_logs(reference)
    assert differing_tensors(out, reference) == []


@pytest.mark.slow
def test_max_staleness_0_is_the_synchronous_run_bit_for_bit(
    models_and_data, uninterrupted, tmp_path, monkeypatch
):
    """--max_staleness 0 keeps the path without a sampler thread: each step samples from its own weights,
    the same completions, losses and tensors as the run that does not give the flag."""
    reference, reference_samples = uninterrupted
    out = tmp_path / "out"
    drawn = record_samples(monkeypatch)
    main([*distill_argv(models_and_data, out), "--max_staleness", "0"])
    assert drawn == reference_samples
    assert training_logs(out) == training_logs(reference)
    assert "staleness" not in training_logs(out)[1]
    assert differing_tensors(out, reference) == []


@pytest.mark.slow
def test_a_checkpoint_cut_short_while_written_is_skipped(models_and_data, uninterrupted, tmp_path, capsys):
    """A crash inside the Trainer's save of checkpoint-2 (weights and optimizer written, RNG and trainer
    state not): `last` took that folder and failed on it; it now resumes from checkpoint-1, says what it
    skipped, and ends where an uninterrupted run does."""
    out = tmp_path / "out"
    argv = distill_argv(models_and_data, out)
    with crash_while_saving(2):
        main(argv)
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    assert not (out / "checkpoint-2" / COMPLETE_MARKER).exists()
    capsys.readouterr()

    main([*argv, "--resume_from_checkpoint", "last"])
    said = capsys.readouterr().out
    assert (
        "[resume] skipped checkpoint-2: incomplete (the run stopped while saving it); resuming from "
        "checkpoint-1" in said
    )
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file()
    reference, _ = uninterrupted
    assert training_logs(out) == training_logs(reference)
    assert differing_tensors(out, reference) == []


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "selftaught.cli", *argv]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    """Until `path` exists; fails if the process ended first."""
    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.time() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_distillation_killed_with_sigkill_resumes_exactly_through_the_cli(models_and_data, tmp_path):
    """The CLI, SIGKILL once the first checkpoint is complete (wherever the run is then, even inside a later
    save), `--resume_from_checkpoint last`: the same losses and every tensor equal to an uninterrupted run's.
    Six steps of four prompts: more than the 14 prompts, so the resume also crosses an epoch."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        cli(*distill_argv(models_and_data, reference, 6)), env=CLI_ENV, check=True, capture_output=True
    )

    run = subprocess.Popen(
        cli(*distill_argv(models_and_data, killed, 6)),
        env=CLI_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(killed / "checkpoint-1" / COMPLETE_MARKER, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (killed / "model.safetensors").exists(), "the kill missed the run"

    resumed = subprocess.run(
        cli(*distill_argv(models_and_data, killed, 6), "--resume_from_checkpoint", "last"),
        env=CLI_ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert training_logs(killed) == training_logs(reference)
    assert differing_tensors(killed, reference) == []


# --- Ctrl-C --------------------------------------------------------------------------------------------


def interrupt_after_first_checkpoint(command: list[str], checkpoint_dir: Path) -> subprocess.CompletedProcess:
    """Run `command`, send SIGINT (Ctrl-C) once its first checkpoint is complete; its exit code and output."""
    run = subprocess.Popen(
        command,
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background (`nohup make test &`) runs with SIGINT ignored, which children
        # inherit, and Python then never raises KeyboardInterrupt: give the run Ctrl-C as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(checkpoint_dir / "checkpoint-1" / COMPLETE_MARKER, run)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    return subprocess.CompletedProcess(command, run.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("staleness", [0, 1], ids=["synchronous", "sampler thread"])
def test_ctrl_c_in_distill_says_where_to_resume_and_the_command_resumes(models_and_data, tmp_path, staleness):
    """With --max_staleness 1 the sampler thread stops too (the process exits), and the resumed run
    restarts sampling from the checkpoint's step."""
    out = tmp_path / "out"
    argv = [*distill_argv(models_and_data, out, 40), "--max_staleness", str(staleness)]
    stopped = interrupt_after_first_checkpoint(cli(*argv), out)
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("selftaught distill: stopped (Ctrl-C); last complete checkpoint: ")
    named = Path(line.split("last complete checkpoint: ")[1].split(";")[0])
    assert (named / COMPLETE_MARKER).is_file() and named.parent == out
    advised = shlex.split(line.split("; to resume: ")[1])
    assert advised == ["selftaught", *argv, "--resume_from_checkpoint", "last"]

    done = subprocess.run(cli(*advised[1:]), env=CLI_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(training_logs(out)) == list(range(1, 41))  # continued: no step lost or repeated


@pytest.mark.slow
def test_ctrl_c_in_a_backtranslation_training_stage_says_where_to_resume(tiny_student, tmp_path):
    pairs = [{"instruction": f"Name colour {i}.", "response": f"Colour {i} is blue."} for i in range(8)]
    run_dir = tmp_path / "run"
    flags = ["--run_dir", str(run_dir), "--base_model", str(tiny_student)]
    main(["backtranslate", "seed", *flags, "--seed_data", str(write_jsonl(tmp_path / "pairs.jsonl", pairs))])
    argv = ["backtranslate", "train-seed", *flags, "--max_steps", "200", "--save_steps", "1",
            "--per_device_train_batch_size", "2", "--max_length", "64"]  # fmt: skip
    stopped = interrupt_after_first_checkpoint(cli(*argv), run_dir / "models" / "M0")
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("selftaught backtranslate: stopped (Ctrl-C); last complete checkpoint: ")
    assert shlex.split(line.split("; to resume: ")[1]) == ["selftaught", *argv]  # a rerun resumes


# --- SFT: a checkpoint cut short is skipped ------------------------------------------------------------


@pytest.mark.slow
def test_sft_skips_a_checkpoint_cut_short_while_written(tiny_student, tmp_path, capsys):
    examples = [sft_example(f"Say {i}.", f"{i}.") for i in range(8)]
    settings = SFTSettings(max_steps=3, save_steps=1, per_device_train_batch_size=2, max_length=64)
    out = tmp_path / "M0"
    with crash_while_saving(2):
        train_sft(str(tiny_student), examples, out, settings)
    capsys.readouterr()

    train_sft(str(tiny_student), examples, out, settings)
    assert "skipped checkpoint-2: incomplete" in capsys.readouterr().out
    assert json.loads((out / SFT_FINISHED).read_text())["resumed_from"].endswith("checkpoint-1")
