"""Trainer callbacks shared by every recipe: a metrics.jsonl file and a progress bar that shows them,
and a console without warnings a user cannot act on."""

from __future__ import annotations

import ast
import json
import logging
import re
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


class TiedWeightsResumeFilter(logging.Filter):
    """Drops transformers' "There were missing keys in the checkpoint model loaded: [...]" when every
    missing key is a weight tied to another one (`lm_head.weight` of a model with tied embeddings).

    Such a weight is one tensor with the embeddings: a checkpoint stores it once, and loading the
    embeddings restores both. transformers 5 no longer lists tied weights in `_keys_to_ignore_on_save`,
    which is what its Trainer checks before warning, so every resume of a tied model warned of a loss
    that does not exist. Any other missing key is still reported.
    """

    MESSAGE = re.compile(r"There were missing keys in the checkpoint model loaded: (\[.*\])\.$", re.DOTALL)

    def __init__(self) -> None:
        super().__init__()
        self.tied: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.MESSAGE.match(record.getMessage())
        return not (match and set(ast.literal_eval(match[1])) <= self.tied)


_TIED_WEIGHTS_FILTER = TiedWeightsResumeFilter()


def tied_parameter_names(model) -> set[str]:
    """Names of parameters that are the same tensor as a parameter named before them."""
    first: dict[int, str] = {}
    return {
        name
        for name, parameter in model.named_parameters(remove_duplicate=False)
        if first.setdefault(id(parameter), name) != name
    }


def quiet_tied_weights_on_resume(trainer) -> None:
    """Resuming `trainer` from a checkpoint does not warn about its tied weights (see the filter)."""
    _TIED_WEIGHTS_FILTER.tied |= tied_parameter_names(trainer.model)
    logging.getLogger("transformers.trainer").addFilter(_TIED_WEIGHTS_FILTER)
