"""`selftaught distill --max_staleness K`: the sampler thread draws the next K steps while the trainer trains,
on tiny real models. Every prompt of every epoch is trained once, in the order of K = 0, with mixed on- and
off-policy steps; no sample is drawn that is not trained on; staleness never exceeds K whichever side is
slow; a crash on either side stops both, with its error, leaving no sampler thread behind.
(Exactness at K = 0 and Ctrl-C: tests/test_resume.py.)"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selftaught.cli import main
from selftaught.distill.async_sampling import THREAD_NAME
from selftaught.distill.trainer import GKDistillTrainer, prompts_of
from selftaught.generation.policy import HFPolicyEngine

STEPS_PER_EPOCH = 4  # 14 rows, micro-batches of 2, 2 per step: 7 micro-batches, the last step has one


def distill_argv(tiny_student, tiny_teacher, data: Path, out: Path, staleness: int, *extra: str) -> list[str]:
    """Two epochs, half the steps on-policy, off-policy steps on the teacher's samples (seq_kd)."""
    return [
        "distill", "--student", str(tiny_student), "--teacher", str(tiny_teacher), "--data", str(data),
        "--output_dir", str(out), "--num_train_epochs", "2", "--save_strategy", "no",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_new_tokens", "6", "--eval_size", "0", "--lmbda", "0.5", "--seq_kd", "--learning_rate", "1e-3",
        "--report_to", "none", "--use_cpu", "--seed", "0", "--max_staleness", str(staleness), *extra,
    ]  # fmt: skip


def sampler_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(THREAD_NAME)]


def in_sampler() -> bool:
    return threading.current_thread().name.startswith(THREAD_NAME)


def record_training(monkeypatch, trainer_delay: float = 0.0, sampler_delay: float = 0.0) -> dict:
    """Spies (the real code runs): the prompts each optimizer step trained on, and the sampler thread's
    draws; the delays slow one side down (seconds per training micro-batch / per draw)."""
    seen: dict = {"prompts": {}, "sampler_draws": 0}
    complete, training_step, generate = (
        GKDistillTrainer.complete,
        GKDistillTrainer.training_step,
        HFPolicyEngine.generate,
    )

    def completed(self, batches, source, evaluating=False, sampled=None):
        if not evaluating:
            rows = [tuple(prompt) for prompt in prompts_of(batches, "prompt")]
            seen["prompts"].setdefault(self.state.global_step, []).extend(rows)
        return complete(self, batches, source, evaluating, sampled)

    def slow_training_step(self, *args, **kwargs):
        time.sleep(trainer_delay)
        return training_step(self, *args, **kwargs)

    def drawn(self, *args, **kwargs):
        if in_sampler():
            seen["sampler_draws"] += 1
            time.sleep(sampler_delay)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GKDistillTrainer, "complete", completed)
    monkeypatch.setattr(GKDistillTrainer, "training_step", slow_training_step)
    monkeypatch.setattr(HFPolicyEngine, "generate", drawn)
    return seen


def step_logs(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records if "loss" in r}


def on_policy_steps(logs: dict[int, dict]) -> list[int]:
    return [step for step, record in logs.items() if record["on_policy"] == 1.0]


@pytest.fixture
def synchronous(tiny_student, tiny_teacher, math_data, tmp_path) -> dict:
    """The K = 0 run the others are compared with."""
    with pytest.MonkeyPatch.context() as patch:
        seen = record_training(patch)
        main(distill_argv(tiny_student, tiny_teacher, math_data, tmp_path / "k0", 0))
    assert seen["sampler_draws"] == 0 and "staleness" not in step_logs(tmp_path / "k0")[1]
    return seen


@pytest.mark.parametrize(
    ("staleness", "trainer_delay", "sampler_delay"),
    [(1, 0.0, 0.0), (2, 0.3, 0.0), (2, 0.0, 0.5)],
    ids=["k1", "k2-slow-trainer", "k2-slow-sampler"],
)
def test_every_prompt_is_trained_once_and_staleness_never_exceeds_k(
    tiny_student, tiny_teacher, math_data, tmp_path, monkeypatch, synchronous, staleness, trainer_delay,
    sampler_delay,
):  # fmt: skip
    out = tmp_path / "out"
    seen = record_training(monkeypatch, trainer_delay, sampler_delay)
    main(distill_argv(tiny_student, tiny_teacher, math_data, out, staleness))

    # the same prompts in the same steps as at K = 0: each of the 14 once per epoch, none twice, none lost
    assert seen["prompts"] == synchronous["prompts"]
    for epoch in range(2):
        steps = range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        assert len({row for step in steps for row in seen["prompts"][step]}) == 14
    logs = step_logs(out)
    assert sorted(logs) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    on_policy = on_policy_steps(logs)
    assert 0 < len(on_policy) < len(logs)  # both kinds of step ran
    assert seen["sampler_draws"] == len(on_policy)  # nothing drawn that was not trained on
    # logged after step s (= global_step s - 1 trained), staleness: steps since the epoch began, at most K
    for step, record in logs.items():
        into_epoch = (step - 1) % STEPS_PER_EPOCH
        assert record["staleness"] == (min(staleness, into_epoch) if step in on_policy else 0)
    assert not sampler_threads()


def test_a_rerun_with_the_same_k_trains_the_same_tensors(tiny_student, tiny_teacher, math_data, tmp_path):
    """The schedule, not timing, decides which weights sample which step (the student has no dropout)."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        main(distill_argv(tiny_student, tiny_teacher, math_data, out, 1, "--lmbda", "1", "--seq_kd", "false"))
    first, second = (load_file(out / "model.safetensors") for out in outs)
    assert [name for name in first if not torch.equal(first[name], second[name])] == []
    assert {s: r["loss"] for s, r in step_logs(outs[0]).items()} == {
        s: r["loss"] for s, r in step_logs(outs[1]).items()
    }


class SamplerCrash(Exception):
    pass


class TrainerCrash(Exception):
    pass


def test_a_crash_in_the_sampler_stops_the_trainer_with_its_error(
    tiny_student, tiny_teacher, math_data, tmp_path, monkeypatch
):
    generate, trained, draws = HFPolicyEngine.generate, [], []
    training_step = GKDistillTrainer.training_step

    def failing(self, *args, **kwargs):
        # the sampler's second draw (step 1's samples) fails, whenever the trainer gets to step 0: a condition
        # on the trainer's progress raced with it (under load the sampler drew step 1 before step 0 trained)
        if in_sampler():
            draws.append(1)
            if len(draws) == 2:
                raise SamplerCrash("out of memory in the sampler")
        return generate(self, *args, **kwargs)

    def counted(self, *args, **kwargs):
        trained.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(HFPolicyEngine, "generate", failing)
    monkeypatch.setattr(GKDistillTrainer, "training_step", counted)
    argv = distill_argv(tiny_student, tiny_teacher, math_data, tmp_path / "out", 1, "--lmbda", "1")
    with pytest.raises(SamplerCrash, match="out of memory in the sampler"):
        main([*argv, "--seq_kd", "false"])
    assert set(trained) == {0}  # step 1 needed the failed samples: it never trained
    assert not sampler_threads()


def test_a_crash_in_the_trainer_stops_the_sampler(
    tiny_student, tiny_teacher, math_data, tmp_path, monkeypatch
):
    training_step = GKDistillTrainer.training_step

    def failing(self, *args, **kwargs):
        if self.state.global_step == 1:
            raise TrainerCrash("the trainer failed")
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(GKDistillTrainer, "training_step", failing)
    argv = distill_argv(tiny_student, tiny_teacher, math_data, tmp_path / "out", 2, "--lmbda", "1")
    threads = torch.get_num_threads()
    with pytest.raises(TrainerCrash):
        main([*argv, "--seq_kd", "false"])
    assert not sampler_threads()  # ended, not left drawing steps nobody will train
    assert torch.get_num_threads() == threads  # the cores the sampler took are the trainer's again
