"""The run folder of `selftaught backtranslate`: where each stage writes, when a stage counts as done, and
the bookkeeping every stage shares (`runs_stage`), so that each stage of recipe.py holds only its method.

Rules (each pinned by a test in tests/test_backtranslate_stages.py):
- a stage is finished when summary.json has its line AND its output is whole (the file, the model's
  completion marker, every shard of its manifest): a stage whose output was deleted runs again;
- summary.json records the settings each stage ran with, the files it read by content (not by name: see
  `content_fingerprint`); a finished stage rerun with other settings or files is skipped with a message
  naming only what differs and how to redo it (`--overwrite`);
- `--overwrite` redoes a stage and discards the output of every stage that depends on it (the stage
  table, stages.py), so nothing downstream of new data is kept by mistake;
- a stage's seconds add up every process that worked on it: a resumed stage's throughput counts all its
  rows over all its processes' time;
- one process writes the run folder at a time (`holds_run_folder`): a second is refused at once, told
  which process holds it; `run` holds it once for every stage it chains (tests/test_folder_lock.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.stages import EVALUATE, MODEL, Stage, current_name, parse
from selftaught.data.folder_lock import writing_to
from selftaught.data.shards import committed_shards, shard_seconds
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings


class RunFolder:
    """Where each stage's output lives inside the run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.seed_pairs = self.root / "seed" / "pairs.parquet"
        self.segments = self.root / "segments" / "segments.parquet"
        self.augment = self.root / "augment"
        self.summary = self.root / "summary.json"
        self.evaluation = self.root / "evaluation"
        self.eval_results = self.root / "eval_results.json"
        self.timing = self.root / "timing"  # seconds per process of the training stages (see StageClock)

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def curate(self, k: int) -> Path:
        return self.root / f"iteration{k}" / "curate"

    def selected(self, k: int) -> Path:
        return self.root / f"iteration{k}" / "selected.parquet"

    def name_of(self, model: Path) -> str:
        """How rows name a model of this run: its place in the run folder, e.g. "models/Myx", so the
        run folder can be moved or renamed and still resume into identical rows."""
        return Path(model).relative_to(self.root).as_posix()

    def identity(self, model: Path) -> str:
        """A trained model as stage manifests record it: its name and a digest of its completion record,
        so training the model again changes it (a rerun never mixes two models' output)."""
        record = hashlib.sha256((model / COMPLETE_MARKER).read_bytes()).hexdigest()[:16]
        return f"{self.name_of(model)}@{record}"

    def ledger(self, name: str) -> Path:
        """The seconds each process spent on stage `name`, where it keeps them (`StageClock`)."""
        return self.timing / f"{name}.jsonl"

    def read_summary(self) -> dict:
        """summary.json, each stage under its name today (`stages.current_name`)."""
        lines = json.loads(self.summary.read_text()) if self.summary.exists() else {}
        return {current_name(name): line for name, line in lines.items()}

    # --- the stage graph, from the stage table (stages.py) ------------------------------------------

    def input(self, name: str) -> Path:
        """Stage `name`'s main output, for a stage that reads it; if missing, an error names its command."""
        stage, k = parse(name)
        main = stage.writes(self, k)[0]
        needed = main / COMPLETE_MARKER if stage.output is MODEL else main
        if not needed.exists():
            raise FileNotFoundError(
                f"{needed} is missing: run `selftaught backtranslate {stage.command_line(k)}` first"
            )
        return main

    def outputs(self, name: str) -> list[Path]:
        """What stage `name` writes (summary line aside), and its timing ledger if it keeps one."""
        stage, k = parse(name)
        return [*stage.writes(self, k), self.ledger(name)]

    def is_whole(self, name: str) -> bool:
        """Whether `name`'s output is all there (a deleted file or shard, or an unfinished model, is not)."""
        stage, k = parse(name)
        return stage.output.whole(stage.writes(self, k)[0])


def writing_run_folder(run_dir: str | Path, command: str):
    """Hold the run folder's lock while the block runs (`folder_lock.writing_to`): a second process on the
    same `--run_dir` is refused at once, naming this one. `command`: the subcommand the lock records."""
    return writing_to(run_dir, f"selftaught backtranslate {command}", "another --run_dir")


def inputs_of(name: str, known: list[str] = ()) -> list[str]:
    """The stages whose output stage `name` reads (the evaluation reads every model among `known`)."""
    stage, k = parse(name)
    return stage.reads(k, list(known))


def dependents(stage: str, known: list[str]) -> list[str]:
    """Every stage in `known` that reads `stage`'s output, directly or through others."""
    found: list[str] = []
    frontier = [stage]
    while frontier:
        current = frontier.pop()
        for other in known:
            if other not in found and other != stage and current in inputs_of(other, known):
                found.append(other)
                frontier.append(other)
    return found


def upstream(stage: str, known: list[str]) -> list[str]:
    """Every stage whose output `stage` reads, directly or through others."""
    found: list[str] = []
    frontier = [stage]
    while frontier:
        for other in inputs_of(frontier.pop(), known):
            if other not in found:
                found.append(other)
                frontier.append(other)
    return found


def stage_command(name: str) -> str:
    """The command that runs stage `name`, as the user types it."""
    stage, k = parse(name)
    return stage.command_line(k)


# --- when a stage is done, and what it ran with ------------------------------------------------------


def finished(run: RunFolder, stage: str, settings: dict) -> bool:
    """True when `stage` is done and need not run again; says so when its settings differ from `settings`.

    Not done when summary.json lacks its line, or has it but the output is gone (then it runs again).
    """
    line = run.read_summary().get(stage)
    if line is None:
        return False
    if not run.is_whole(stage):
        print(
            f"[{stage}] summary.json records it as finished, but its output "
            f"({run.outputs(stage)[0].relative_to(run.root)}) is missing or incomplete: running it again"
        )
        return False
    before = line.get("settings")
    if before is None:  # recorded before stages recorded their settings: nothing to compare with
        return True
    if changes := changed_settings(before, settings):
        say_skipped(stage, changes, dependents(stage, list(run.read_summary())))
    return True


def say_skipped(stage: str, changes: str, after: list[str]) -> None:
    """The one message of a finished stage kept despite other settings: what differs, how to redo it."""
    also = f" and the stages that depend on it ({', '.join(after)})" if after else ""
    print(
        f"[{stage}] skipped: it finished earlier with other settings ({changes}) and keeps that output. "
        f"To redo it{also}, rerun `selftaught backtranslate {stage_command(stage)}` with --overwrite."
    )


def changed_settings(before: dict, now: dict) -> str:
    """Only the settings that differ, as `name: old then, new now; ...` ('' when none does)."""
    differ = [k for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k)]
    return "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in differ)


def overwrite(run: RunFolder, stage: str) -> None:
    """Discard `stage`'s output and that of every stage depending on it, with their summary lines."""
    summary = run.read_summary()
    known = list(summary) + ([EVALUATE.name()] if run.eval_results.exists() else [])
    for name in [stage, *dependents(stage, known)]:
        removed = [p for p in run.outputs(name) if p.exists()]
        for path in removed:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if name in summary or removed:
            print(f"[{stage}] --overwrite: discarded {name}")
        summary.pop(name, None)
    write_summary(run, summary)


def overwrite_all(run: RunFolder) -> None:
    """`run --overwrite`: every stage's output goes, the run starts over (the folder itself stays)."""
    summary = run.read_summary()
    for name in list(summary) + [EVALUATE.name()]:
        for path in run.outputs(name) if name != EVALUATE.name() or run.eval_results.exists() else []:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    run.summary.unlink(missing_ok=True)
    print("[run] --overwrite: discarded every stage's output")


def write_summary(run: RunFolder, summary: dict) -> None:
    run.summary.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.summary.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run.summary)


def record(
    run: RunFolder, stage: str, rows_in: int, rows_out: int, seconds: float, settings: dict, **extra
) -> None:
    """Add one stage's line to summary.json: rows in, rows out, throughput, its settings and its own
    counts. `seconds` covers every process that worked on the stage."""
    summary = run.read_summary()
    summary[stage] = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows_in / seconds, 3) if seconds > 0 else None,
        "settings": settings,
        **extra,
    }
    write_summary(run, summary)
    print(f"[{stage}] rows in {rows_in}, rows out {rows_out}, {seconds:.1f} s")


def sharded_seconds(folder: Path) -> float:
    """A sharded stage's seconds: what every process spent on the shards it committed."""
    return shard_seconds(folder) if committed_shards(folder) else 0.0


# --- the bookkeeping around every stage ---------------------------------------------------------------


@dataclass
class Done:
    """What a stage's method did, for the stage's line in summary.json."""

    rows_in: int
    rows_out: int
    counts: dict = field(default_factory=dict)  # the stage's own counts, recorded beside rows and seconds
    seconds: float | None = None  # every process's seconds where several worked on it; else timed here
    then: Callable[[], None] | None = None  # work that reads the stage's summary line (a model card)


StageMethod = Callable[..., Any]


def holds_run_folder(stage: Stage) -> Callable[[StageMethod], Callable]:
    """Make a method `(config, settings, run, k)` the stage `(config, settings[, k])`: it holds the run
    folder's lock while it runs and, under `--overwrite`, first discards its output and what depends on it
    (`overwrite`). Training stages written by an older version have their ledgers renamed first."""

    def decorate(method: StageMethod) -> Callable:
        @wraps(method)
        def run_stage(config: BacktranslateConfig, settings: SFTSettings, k: int = 0):
            with writing_run_folder(config.run_dir, stage.command):
                run = RunFolder(config.run_dir)
                rename_legacy_ledgers(run)
                if config.overwrite:
                    overwrite(run, stage.name(k))
                return method(config, settings, run, k)

        return run_stage

    return decorate


def runs_stage(stage: Stage, knobs: Callable[..., dict]) -> Callable[[StageMethod], Callable]:
    """Make a method `(config, settings, run, k, knobs) -> Done` the stage `(config, settings[, k])`, with
    every piece of bookkeeping (`holds_run_folder`'s, then): `knobs(config, settings, run, k)`, what the
    output depends on, is recorded; a stage finished with its output whole is skipped (`finished`: saying
    so when they differ); else the method runs and its line goes into summary.json (`record`). Either way
    the stage returns its output, read back. A method returning None records nothing: under `accelerate
    launch`, the processes other than the main one."""

    def decorate(method: StageMethod) -> Callable:
        @holds_run_folder(stage)
        @wraps(method)
        def run_stage(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int):
            name, recorded = stage.name(k), knobs(config, settings, run, k)
            if not finished(run, name, recorded):
                started = time.perf_counter()
                done = method(config, settings, run, k, recorded)
                if done is not None:
                    seconds = time.perf_counter() - started if done.seconds is None else done.seconds
                    record(run, name, done.rows_in, done.rows_out, seconds, recorded, **done.counts)
                    if done.then is not None:
                        done.then()
            return stage.output.read(stage.writes(run, k)[0])

        return run_stage

    return decorate


def rename_legacy_ledgers(run: RunFolder) -> None:
    """Timing ledgers under an older version's stage name (`train_M0.jsonl`) take today's, so that a
    training stage resumed by this version counts the seconds spent before."""
    for ledger in run.timing.glob("*.jsonl"):
        if (name := current_name(ledger.stem)) != ledger.stem:
            ledger.rename(run.ledger(name))


class StageClock(TrainerCallback):
    """Seconds a training stage spent, over every process that trained it: each process appends its
    seconds since its start (or its last entry) at every checkpoint and at the end, to a JSONL ledger;
    a process killed between two checkpoints loses only the work the next process redoes anyway."""

    def __init__(self, ledger: Path) -> None:
        self.ledger, self.since = ledger, time.perf_counter()

    def lap(self) -> None:
        now = time.perf_counter()
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        with self.ledger.open("a") as f:
            f.write(json.dumps({"pid": os.getpid(), "seconds": round(now - self.since, 3)}) + "\n")
        self.since = now

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.lap()

    def total(self) -> float:
        """Every entry of the ledger, once this process has written its last lap."""
        self.lap()
        lines = self.ledger.read_text().splitlines()
        return sum(json.loads(line)["seconds"] for line in lines if line.strip())
