"""One writer per run folder: a second process is refused at once (exit 2, one line naming the holder's pid,
no traceback), for every stage that writes one; a killed holder frees the folder; the ranks of one launch
and the stages `backtranslate run` chains do not refuse each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import lock_held_elsewhere, write_jsonl

from selftaught.cli import main
from selftaught.data.folder_lock import LOCK_FILE, FolderInUseError, holder, writing_to
from selftaught.training.sft import COMPLETE_MARKER


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    with lock_held_elsewhere(folder) as other:
        named = rf"pid {other.pid} on .*\(a test holding the lock, since"
        with pytest.raises(FolderInUseError, match=named), writing_to(folder, "a second writer"):
            pass
        other.kill()  # kill -9: the holder gets no chance to let go itself
        other.wait()
        with writing_to(folder, "the rerun"):  # not refused by the dead process
            assert holder(folder / LOCK_FILE).startswith(f"pid {os.getpid()} on ")
    assert (folder / LOCK_FILE).read_text() == ""  # let go: no record (nor host name) is left behind


def test_one_process_may_hold_its_own_lock_again_and_ranks_past_the_first_take_none(tmp_path, monkeypatch):
    """`backtranslate run` holds the run folder and each stage it runs takes it again; the ranks of one
    `accelerate launch` share the folder, so only RANK 0 takes the lock."""
    with writing_to(tmp_path, "run"):
        with writing_to(tmp_path, "a stage of the run"):
            pass
        assert "(run, since " in holder(tmp_path / LOCK_FILE)  # still the outer hold's record
        with lock_held_elsewhere(tmp_path / "other"):
            monkeypatch.setenv("RANK", "1")
            with writing_to(tmp_path / "other", "rank 1 of a launch"):
                pass


SEED_PAIRS = [
    {"instruction": f"Name a colour number {i}.", "response": f"Colour {i} is blue."} for i in range(8)
]


@pytest.mark.parametrize(
    "stage", [["seed"], ["train-seed"], ["augment"], ["curate", "--iteration", "1"], ["evaluate"], ["run"]]
)
def test_every_backtranslate_stage_is_refused_while_another_process_writes_the_run_folder(
    stage, tmp_path, tiny_student, capsys
):
    run = tmp_path / "bt"
    seed = write_jsonl(tmp_path / "pairs.jsonl", SEED_PAIRS)
    flags = ["--run_dir", str(run), "--base_model", str(tiny_student), "--seed_data", str(seed)]
    with lock_held_elsewhere(run) as other, pytest.raises(SystemExit) as refused:
        main(["backtranslate", *stage, *flags])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("selftaught backtranslate: error: ")
    assert f"pid {other.pid}" in error and "another --run_dir" in error
    assert not run.exists()  # nothing read, loaded or written; the holder, which made the folder, removed it


def test_distill_is_refused_while_another_process_writes_its_output_dir(
    tmp_path, tiny_student, tiny_teacher, math_data, capsys
):
    out = tmp_path / "out"
    argv = [
        "distill", "--student", str(tiny_student), "--teacher", str(tiny_teacher), "--data", str(math_data),
        "--output_dir", str(out), "--max_steps", "1", "--report_to", "none",
    ]  # fmt: skip
    with lock_held_elsewhere(out) as other, pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("selftaught distill: error: ")
    assert f"pid {other.pid}" in error and "another --output_dir" in error
    assert not out.exists()  # nothing written; the holder, which made the folder, removed it


@pytest.mark.slow
def test_two_train_seed_runs_on_one_folder_the_second_is_refused_and_a_killed_first_frees_it(
    tmp_path, tiny_student
):
    """The case of the issue: two `train-seed` with different learning rates on one run folder. The second
    is refused at once while the first trains; once the first is killed (kill -9), a rerun trains, and its
    record and metrics are its own."""
    seed = write_jsonl(tmp_path / "pairs.jsonl", SEED_PAIRS)
    run = tmp_path / "bt"
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_data", str(seed), "--base_model", "x"])

    def train_seed(learning_rate: str, steps: str) -> list[str]:
        return [
            "backtranslate", "train-seed", "--run_dir", str(run), "--base_model", str(tiny_student),
            "--max_steps", steps, "--save_steps", steps, "--per_device_train_batch_size", "2",
            "--max_length", "128", "--learning_rate", learning_rate, "--final_learning_rate", learning_rate,
        ]  # fmt: skip

    command = [sys.executable, "-m", "selftaught.cli"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*command, *train_seed("1e-3", "100000")], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while f"pid {first.pid} " not in holder(run / LOCK_FILE) and time.time() < deadline:
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.1)
        while not (run / "models" / "M0" / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.1)  # it trains
        second = subprocess.run(
            [*command, *train_seed("2e-3", "1")], env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert second.stderr.count("\n") == 1 and f"pid {first.pid} " in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()
    main(train_seed("2e-3", "1"))
    record = json.loads((run / "models" / "M0" / COMPLETE_MARKER).read_text())
    assert record["settings"]["learning_rate"] == 2e-3 and record["train"]["train_loss"] > 0
    logged = [json.loads(line) for line in (run / "models" / "M0" / "metrics.jsonl").read_text().splitlines()]
    assert all(line.get("learning_rate", 2e-3) == 2e-3 for line in logged)  # no line of the killed run
