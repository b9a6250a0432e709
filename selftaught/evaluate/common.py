"""Inputs every evaluation reads the same way: rows with required columns, a model (or engine) and its
tokenizer."""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from selftaught.data.loading import DataError, load_rows
from selftaught.evaluate.config import EngineEvalConfig, EvalConfig
from selftaught.generation.base import GenerationEngine
from selftaught.generation.engines import make_engine
from selftaught.models.check import check_model_argument
from selftaught.models.naming import model_label
from selftaught.scoring.degeneration import degeneration_metrics, ended_with_eos


def required(value: str | None, flag: str, task: str) -> str:
    """A flag every run of `task` needs."""
    if not value:
        raise DataError(f"selftaught eval {task} needs {flag}")
    return value


def required_model(config: EvalConfig, field: str, task: str) -> str:
    """The model a flag of `task` names, checked before anything loads (`models/check.py`). With
    engine=openai the path gives only the tokenizer, so a folder without weights is accepted."""
    value = required(getattr(config, field), f"--{field}", task)
    check_model_argument(value, f"--{field}", weights=getattr(config, "engine", "hf") != "openai")
    return value


def load_eval_rows(source: str, config: EvalConfig, columns: tuple[str, ...] = ()) -> Dataset:
    """The rows of `config.split` (the first `config.limit`), with every column in `columns` present."""
    rows = load_rows(source, config.split)
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise DataError(f"{source}: no column(s) {missing} (the columns are {rows.column_names}); add them")
    if len(rows) == 0:
        raise DataError(f"{source}: no rows in split {config.split!r}")
    return rows.select(range(min(len(rows), config.limit))) if config.limit else rows


def eval_engine(
    name: str, config: EngineEvalConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> GenerationEngine:
    """The engine `config.engine` names for model `name` (hf: loaded in `config.dtype`); it carries the
    tokenizer of `name` (`tokenizer`, when the caller loaded it), and results name it by `model_label`
    (never a path of this machine)."""
    return make_engine(
        config, name, config.batch_size, config.trust_remote_code, config.dtype, model_label(name), tokenizer
    )


def answer_degeneration(texts: list[str], completion_ids: list[list[int]], eos_ids: list[int]) -> dict:
    """Degenerate share, distinct-2, mean tokens and EOS share of one model's answers (texts decoded
    without special tokens; ids as generated, through the EOS when there is one)."""
    return degeneration_metrics(
        texts, [len(ids) for ids in completion_ids], [ended_with_eos(ids, eos_ids) for ids in completion_ids]
    )
