"""The run folder of `selftaught backtranslate`: where each stage writes, and when a stage counts as done.

Rules (each pinned by a test in tests/test_backtranslate_stages.py):
- a stage is finished when summary.json has its line AND its output is whole (the file, the model's
  completion marker, every shard of its manifest): a stage whose output was deleted runs again;
- summary.json records the settings each stage ran with, the files it read by content (not by name: see
  `content_fingerprint`); a finished stage rerun with other settings or files is skipped with a message
  naming only what differs and how to redo it (`--overwrite`);
- `--overwrite` redoes a stage and discards the output of every stage that depends on it (the stage
  graph below), so nothing downstream of new data is kept by mistake;
- a stage's seconds add up every process that worked on it: a resumed stage's throughput counts all its
  rows over all its processes' time;
- one process writes the run folder at a time (`writes_run_folder`): a second is refused at once, told
  which process holds it; `run` holds it once for every stage it chains (tests/test_folder_lock.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from transformers import TrainerCallback

from selftaught.data.folder_lock import writing_to
from selftaught.data.shards import committed_shards, missing_shards, read_manifest, shard_seconds
from selftaught.training.sft import COMPLETE_MARKER


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

    def trained(self, name: str, stage: str) -> Path:
        """The folder of a finished model (its completion marker is written last)."""
        return self.require(self.model(name) / COMPLETE_MARKER, stage).parent

    def name_of(self, model: Path) -> str:
        """How rows name a model of this run: its place in the run folder, e.g. "models/Myx", so the
        run folder can be moved or renamed and still resume into identical rows."""
        return Path(model).relative_to(self.root).as_posix()

    def identity(self, model: Path) -> str:
        """A trained model as stage manifests record it: its name and a digest of its completion record,
        so training the model again changes it (a rerun never mixes two models' output)."""
        record = hashlib.sha256((model / COMPLETE_MARKER).read_bytes()).hexdigest()[:16]
        return f"{self.name_of(model)}@{record}"

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `selftaught backtranslate {stage}` first")
        return path

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    # --- the stage graph ---------------------------------------------------------------------------

    def outputs(self, stage: str) -> list[Path]:
        """What `stage` writes (summary line aside)."""
        kind, _, rest = stage.partition("_")
        if stage == "seed":
            return [self.seed_pairs]
        if stage == "segment":
            return [self.segments]
        if stage == "augment":
            return [self.augment, self.augment.with_suffix(".jsonl")]
        if kind == "curate":
            return [self.curate(int(rest)), self.curate(int(rest)).with_suffix(".jsonl")]
        if kind == "select":
            return [self.selected(int(rest))]
        if kind == "train":
            return [self.model(rest), self.timing / f"{stage}.jsonl"]
        if stage == "evaluate":
            return [self.evaluation, self.eval_results]
        raise ValueError(f"unknown stage {stage!r}")

    def is_whole(self, stage: str) -> bool:
        """Whether `stage`'s output is all there (a deleted file or shard, or an unfinished model, is not)."""
        main = self.outputs(stage)[0]
        if stage.startswith("train_"):
            return (main / COMPLETE_MARKER).is_file()
        if stage == "augment" or stage.startswith("curate_"):
            return read_manifest(main) is not None and not missing_shards(main)
        return main.exists()


def writing_run_folder(run_dir: str | Path, command: str):
    """Hold the run folder's lock while the block runs (`folder_lock.writing_to`): a second process on the
    same `--run_dir` is refused at once, naming this one. `command`: the subcommand the lock records."""
    return writing_to(run_dir, f"selftaught backtranslate {command}", "another --run_dir")


def writes_run_folder(command: str) -> Callable:
    """Make a stage `(config, ...)` hold its run folder's lock while it runs (`writing_run_folder`)."""

    def decorate(stage: Callable) -> Callable:
        @wraps(stage)
        def locked(config, *args, **kwargs):
            with writing_run_folder(config.run_dir, command):
                return stage(config, *args, **kwargs)

        return locked

    return decorate


def inputs_of(stage: str, known: list[str] = ()) -> list[str]:
    """The stages whose output `stage` reads (the evaluation reads every model among `known`)."""
    kind, _, rest = stage.partition("_")
    if stage in ("seed", "segment"):
        return []
    if stage in ("train_M0", "train_Myx"):
        return ["seed"]
    if stage == "augment":
        return ["segment", "train_Myx"]
    if kind == "curate":  # Myx too: the backward score reads it
        return ["augment", f"train_M{int(rest) - 1}", "train_Myx"]
    if kind == "select":
        return [f"curate_{rest}"]
    if kind == "train":  # train_M{k}
        return ["seed", f"select_{rest[1:]}"]
    if stage == "evaluate":
        return ["seed", *(s for s in known if s.startswith("train_"))]
    raise ValueError(f"unknown stage {stage!r}")


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


def stage_command(stage: str) -> str:
    """The command that runs `stage`, as the user types it."""
    kind, _, rest = stage.partition("_")
    if stage in ("train_M0", "train_Myx"):
        return {"train_M0": "train-seed", "train_Myx": "train-backward"}[stage]
    if kind in ("curate", "select"):
        return f"{kind} --iteration {rest}"
    if kind == "train":
        return f"train --iteration {rest[1:]}"
    return stage


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
    known = list(summary) + [s for s in ("evaluate",) if run.eval_results.exists()]
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
    for name in list(summary) + ["evaluate"]:
        for path in run.outputs(name) if name != "evaluate" or run.eval_results.exists() else []:
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
