"""Checkpoints a stopped run resumes from, and a Ctrl-C that says how, for every trainer (distill, SFT).

A transformers `Trainer` writes `checkpoint-N` file by file (weights, optimizer, RNG states, trainer
state), each process its own part, and nothing says when the folder is whole: a run killed while saving
leaves a folder that transformers' `get_last_checkpoint` picks and then fails on ("Can't find a valid
checkpoint"). So a checkpoint counts only once `COMPLETE_MARKER` is in it: `CompleteCheckpoints` writes
that file after every process has written its part (FSDP's sharded files included) and before older
checkpoints are rotated away, so that some complete checkpoint is on disk at every moment.
`last_complete_checkpoint` resumes from the newest one and names any newer folder it skips.

`stops_cleanly` turns Ctrl-C during training into `TrainingInterrupted`, which knows where the newest
complete checkpoint is; the command line prints it as one line with the command that resumes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import PartialState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

if TYPE_CHECKING:
    from transformers import Trainer

# Written last into checkpoint-N, once every process has saved its part of it.
COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every checkpoint-N folder in output_dir, complete or not, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()), key=step_of
    )


def step_of(checkpoint: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(checkpoint.name)[1])


def is_complete_checkpoint(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def newest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    return next((c for c in reversed(checkpoint_folders(output_dir)) if is_complete_checkpoint(c)), None)


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The checkpoint to resume from: the newest complete one. Each newer, incomplete folder (a run stopped
    while writing it) is skipped, and said so in one line; it is left on disk (the run rewrites it when it
    reaches that step again)."""
    newest = newest_complete_checkpoint(output_dir)
    skipped = [
        c.name for c in checkpoint_folders(output_dir) if newest is None or step_of(c) > step_of(newest)
    ]
    if skipped and PartialState().is_main_process:
        start = f"resuming from {newest.name}" if newest else "starting from step 0"
        print(f"[resume] skipped {', '.join(skipped)}: incomplete (the run stopped while saving it); {start}")
    return str(newest) if newest else None


class CompleteCheckpoints:
    """Mixin for a transformers `Trainer`: each checkpoint gets `COMPLETE_MARKER` once it is whole.

    transformers' `_save_checkpoint` rotates old checkpoints away (`save_total_limit`) as its last act;
    that rotation is held back until the new checkpoint is marked, else a kill in between would leave
    no complete checkpoint at all.
    """

    def checkpoint_folder(self, trial) -> Path:
        """The folder transformers saves this step's checkpoint into."""
        return Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial=trial)
        checkpoint = self.checkpoint_folder(trial)
        if self.args.should_save:  # a folder rewritten (a resume from an older checkpoint) is not whole yet
            (checkpoint / COMPLETE_MARKER).unlink(missing_ok=True)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # no rotation inside: it waits for the marker, below
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its shards and RNG state
        if not self.args.should_save:
            return
        mark_complete(checkpoint, self.state.global_step)
        rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)


def mark_complete(checkpoint: Path, step: int) -> None:
    """Write the marker whole or not at all (a temporary file renamed into place)."""
    partial = checkpoint / f".{COMPLETE_MARKER}.partial"
    partial.write_text(json.dumps({"global_step": step}) + "\n")
    os.replace(partial, checkpoint / COMPLETE_MARKER)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C while a trainer ran; `checkpoint` is the newest complete one (None: none written yet).
    `resume_flags` are what the same command needs added to continue from it (none when a rerun resumes
    by itself)."""

    def __init__(self, checkpoint: str | None, resume_flags: tuple[str, ...]) -> None:
        super().__init__(checkpoint)
        self.checkpoint, self.resume_flags = checkpoint, resume_flags


def stopped_message(stop: KeyboardInterrupt, command: list[str]) -> str:
    """One line for a Ctrl-C: where the run stopped and the exact command (`command`, with the flags that
    resume) that continues it."""
    if not isinstance(stop, TrainingInterrupted):
        return "stopped (Ctrl-C)"
    resume = shlex.join(with_flags(command, stop.resume_flags))
    if stop.checkpoint is None:
        return f"stopped (Ctrl-C) before the first complete checkpoint; to start again: {resume}"
    return f"stopped (Ctrl-C); last complete checkpoint: {stop.checkpoint}; to resume: {resume}"


def with_flags(command: list[str], flags: tuple[str, ...]) -> list[str]:
    """`command` with `flags` ("--name", "value") in place of any value the command gave that flag."""
    if not flags:
        return command
    name, kept, skip = flags[0], [], False
    for arg in command:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return [*kept, *flags]


def close_progress_bars(trainer: Trainer) -> None:
    """Close the trainer's progress bars, so that a line said when training stops is the last one printed."""
    for callback in trainer.callback_handler.callbacks:
        for bar in (getattr(callback, "training_bar", None), getattr(callback, "prediction_bar", None)):
            if bar is not None:
                bar.close()


@contextmanager
def stops_cleanly(trainer: Trainer, resume_flags: tuple[str, ...] = ()) -> Iterator[None]:
    """Ctrl-C inside becomes `TrainingInterrupted`, naming the newest complete checkpoint in the trainer's
    output_dir; its progress bars are closed first, so that nothing is printed after the line that says
    how to resume."""
    try:
        yield
    except KeyboardInterrupt:
        close_progress_bars(trainer)
        newest = newest_complete_checkpoint(trainer.args.output_dir)
        raise TrainingInterrupted(str(newest) if newest else None, resume_flags) from None
