"""A short distill (and its resume) and a short curate, through the CLI, print no warning.

Every warning a run prints is one a user should act on; those that were expected and harmless (torch's
pin_memory notice on a machine without an accelerator, transformers' "missing keys ['lm_head.weight']"
on resuming a model with tied embeddings) are gone at their cause or filtered narrowly, so any warning
here, a Python warning or a transformers / accelerate / TRL / peft / datasets log record, fails.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import pytest
from conftest import write_jsonl

from selftaught.cli import main
from selftaught.models import load_model
from selftaught.training.callbacks import TiedWeightsResumeFilter, tied_parameter_names

pytestmark = pytest.mark.slow

LIBRARIES = ("transformers", "accelerate", "trl", "peft", "datasets")
PARAGRAPH = (
    "Bees dance to tell their sisters where flowers are: the angle of the dance is the angle to the "
    "sun, and its length the distance. A hive sends more foragers to richer patches of flowers. "
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"[{record.name}] {record.getMessage()}")


@contextmanager
def no_warnings(what: str):
    """Fails if the block emits any Python warning (any category, every time) or library log warning."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    shown = [f"[{w.category.__name__}] {w.filename}:{w.lineno}: {w.message}" for w in caught]
    assert shown + handler.messages == [], f"{what} printed warnings"


def test_a_short_distill_and_its_resume_print_no_warning(tmp_path, tiny_student, tiny_teacher):
    rows = [{"problem": f"What is {a} + 2?", "answer": str(a + 2)} for a in range(8)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[:6])
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[6:])
    argv = ["distill", "--student", str(tiny_student), "--teacher", str(tiny_teacher),
            "--data", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--lmbda", "1",
            "--per_device_train_batch_size", "2", "--max_new_tokens", "4", "--eval_max_new_tokens", "4",
            "--eval_size", "2", "--save_steps", "1", "--report_to", "none"]  # fmt: skip
    with no_warnings("distill"):  # no --use_cpu: a CPU-only machine as a user runs it
        main([*argv, "--max_steps", "1"])
    with no_warnings("distill --resume_from_checkpoint last"):
        main([*argv, "--max_steps", "2", "--resume_from_checkpoint", "last"])
    assert (tmp_path / "out" / "checkpoint-2").is_dir()  # it did resume and train on


def test_a_short_curate_prints_no_warning(tmp_path, tiny_student):
    for i in range(3):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        body = "\n\n".join(f"{PARAGRAPH} Observation {i}.{j}." for j in range(3))
        (tmp_path / "corpus" / f"bees{i}.md").write_text(f"# Hive {i}\n\n{body}\n")
    flags = ["--run_dir", str(tmp_path / "run"), "--base_model", str(tiny_student),
             "--corpus", str(tmp_path / "corpus"), "--seed_size", "4", "--min_chars", "200",
             "--max_chars", "500", "--max_segments", "4", "--max_instruction_tokens", "4",
             "--shard_size", "2", "--generation_batch_size", "4", "--max_steps", "1",
             "--per_device_train_batch_size", "2", "--max_length", "256"]  # fmt: skip
    for stage in ("seed", "train-seed", "train-backward", "segment", "augment"):
        main(["backtranslate", stage, *flags])
    with no_warnings("curate"):
        main(["backtranslate", "curate", *flags, "--iteration", "1"])
    assert list((tmp_path / "run" / "iteration1" / "curate").glob("shard-*.parquet"))


def test_the_resume_filter_drops_only_tied_weights(tiny_student):
    assert tied_parameter_names(load_model(str(tiny_student))) == {"lm_head.weight"}
    quiet = TiedWeightsResumeFilter()
    quiet.tied = {"lm_head.weight"}

    def record(keys: list[str]) -> logging.LogRecord:
        message = f"There were missing keys in the checkpoint model loaded: {keys}."
        return logging.LogRecord("transformers.trainer", logging.WARNING, __file__, 1, message, None, None)

    assert not quiet.filter(record(["lm_head.weight"]))
    assert quiet.filter(record(["lm_head.weight", "model.norm.weight"]))  # a real loss is still reported
    assert quiet.filter(record(["model.layers.0.mlp.up_proj.weight"]))
