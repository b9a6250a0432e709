"""The stages of `selftaught backtranslate`, in one table: what each is called, the command that runs it,
the function of recipe.py behind that command, the stages whose output it reads and what it writes.

The run folder (runfolder.py: when a stage is finished, what `--overwrite` discards), the recipe and the CLI
all read this table; no other file names a stage. A stage's name is its command (`train-seed`); a stage
that runs once per iteration (`curate --iteration 2`) is named `<command>_<k>` (`curate_2`) in
summary.json, its timing ledger and its messages. Older versions named the training stages by the model
they train (`train_M0`, `train_Myx`, `train_M2`): `current_name` reads those records under today's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selftaught.data.shards import missing_shards, read_manifest, read_parquet, read_shards


def model_is_complete(model: Path) -> bool:
    from selftaught.training.sft import COMPLETE_MARKER  # lazily: the report reads this table without torch

    return (model / COMPLETE_MARKER).is_file()


def shards_are_complete(folder: Path) -> bool:
    return read_manifest(folder) is not None and not missing_shards(folder)


@dataclass(frozen=True)
class Output:
    """A kind of stage output: when it is whole (a half-written one is not), and how it is read back."""

    whole: Callable[[Path], bool]
    read: Callable[[Path], Any]


TABLE = Output(Path.exists, read_parquet)  # one Parquet file, written at once
SHARDS = Output(shards_are_complete, read_shards)  # a folder of shards and their manifest
MODEL = Output(model_is_complete, lambda model: model)  # a model folder, whole once its marker is written
FOLDER = Output(Path.exists, lambda folder: folder)  # the evaluation's pieces (it checks them itself)


@dataclass(frozen=True)
class Stage:
    """One row of the table. `function` is a name, and `writes` takes the run folder untyped, because
    recipe.py and runfolder.py import this table: it cannot import them back (tests/test_imports.py)."""

    command: str  # `selftaught backtranslate <command>`, and the stage's name
    function: str  # the function of recipe.py that runs it: (config, settings[, k])
    reads: Callable[[int, list[str]], list[str]]  # (k, stages known) -> the stages whose output it reads
    writes: Callable[[Any, int], list[Path]]  # (RunFolder, k) -> what it writes, its main output first
    output: Output  # the kind of its main output
    iterated: bool = False  # runs once per iteration k (`--iteration k`)

    def name(self, k: int = 0) -> str:
        """The stage's name in summary.json and its messages."""
        return f"{self.command}_{k}" if self.iterated else self.command

    def command_line(self, k: int = 0) -> str:
        """The command as the user types it after `selftaught backtranslate`."""
        return f"{self.command} --iteration {k}" if self.iterated else self.command


def trainer(k: int) -> str:
    """The name of the stage that trains M(k): M0 is trained on the seed pairs alone."""
    return TRAIN_SEED.name() if k == 0 else TRAIN.name(k)


# In the order `run` chains them (curate, select and train once per iteration).
SEED = Stage(
    command="seed",
    function="stage_seed",
    reads=lambda k, known: [],
    writes=lambda run, k: [run.seed_pairs],
    output=TABLE,
)
TRAIN_SEED = Stage(
    command="train-seed",
    function="stage_train_seed",
    reads=lambda k, known: [SEED.name()],
    writes=lambda run, k: [run.model("M0")],
    output=MODEL,
)
TRAIN_BACKWARD = Stage(
    command="train-backward",
    function="stage_train_backward",
    reads=lambda k, known: [SEED.name()],
    writes=lambda run, k: [run.model("Myx")],
    output=MODEL,
)
SEGMENT = Stage(
    command="segment",
    function="stage_segment",
    reads=lambda k, known: [],
    writes=lambda run, k: [run.segments],
    output=TABLE,
)
AUGMENT = Stage(
    command="augment",
    function="stage_augment",
    reads=lambda k, known: [SEGMENT.name(), TRAIN_BACKWARD.name()],
    writes=lambda run, k: [run.augment, run.augment.with_suffix(".jsonl")],
    output=SHARDS,
)
CURATE = Stage(
    command="curate",
    function="stage_curate",
    # Myx too: the backward score reads it
    reads=lambda k, known: [AUGMENT.name(), trainer(k - 1), TRAIN_BACKWARD.name()],
    writes=lambda run, k: [run.curate(k), run.curate(k).with_suffix(".jsonl")],
    output=SHARDS,
    iterated=True,
)
SELECT = Stage(
    command="select",
    function="stage_select",
    reads=lambda k, known: [CURATE.name(k)],
    writes=lambda run, k: [run.selected(k)],
    output=TABLE,
    iterated=True,
)
TRAIN = Stage(
    command="train",
    function="stage_train",
    reads=lambda k, known: [SEED.name(), SELECT.name(k)],
    writes=lambda run, k: [run.model(f"M{k}")],
    output=MODEL,
    iterated=True,
)
EVALUATE = Stage(
    command="evaluate",
    function="stage_evaluate",
    # every model the run has trained
    reads=lambda k, known: [SEED.name(), *(name for name in known if parse(name)[0].output is MODEL)],
    writes=lambda run, k: [run.evaluation, run.eval_results],
    output=FOLDER,
)

STAGES = {
    s.command: s
    for s in (SEED, TRAIN_SEED, TRAIN_BACKWARD, SEGMENT, AUGMENT, CURATE, SELECT, TRAIN, EVALUATE)
}

LEGACY_TRAINING = re.compile(r"train_M(yx|\d+)")  # how older versions named a training stage: by its model


def current_name(name: str) -> str:
    """A stage's name today, given the name a record of any version has: `train_M0` is `train-seed`."""
    if not (legacy := LEGACY_TRAINING.fullmatch(name)):
        return name
    model = legacy.group(1)
    return TRAIN_BACKWARD.name() if model == "yx" else trainer(int(model))


def parse(name: str) -> tuple[Stage, int]:
    """The stage a name names, and its iteration (0 for a stage run once)."""
    command, _, k = current_name(name).partition("_")
    stage = STAGES.get(command)
    if stage is None or stage.iterated != k.isdigit() or (k and not stage.iterated):
        raise ValueError(f"unknown stage {name!r}")
    return stage, int(k or 0)


def iterations(names: Iterable[str]) -> list[int]:
    """The iterations that stage names show (`curate_2`: 2), in order; other names are passed over."""
    found = set()
    for name in names:
        try:
            stage, k = parse(name)
        except ValueError:
            continue
        if stage.iterated:
            found.add(k)
    return sorted(found)
