"""Trainer callbacks shared by every recipe: a metrics.jsonl file and a progress bar that shows them."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

SHOWN = {"loss": "loss", "tokens_per_second": "tok/s", "on_policy": "on-policy", "eval_loss": "eval"}


class MetricsFileCallback(TrainerCallback):
    """Append every log (step, loss, learning rate, ...) to a JSONL file, one object per line.

    On resume, lines past the checkpoint's step are dropped first, so a rerun after a crash neither
    loses nor duplicates steps.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= state.global_step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class MetricsProgressCallback(ProgressCallback):
    """transformers' step bar, with the latest loss and tokens/s as its postfix instead of printed dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {label: logs[key] for key, label in SHOWN.items() if key in logs}
        if shown:
            self.training_bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}, refresh=True
            )


def replace_progress_bar(trainer) -> None:
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(MetricsProgressCallback())
