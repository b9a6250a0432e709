"""`run_sharded`: atomic commits, resume after a crash (simulated and a real SIGKILL), refused mixing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import lock_held_elsewhere

from selftaught.data import shards
from selftaught.data.folder_lock import FolderInUseError
from selftaught.data.shards import (
    StageMismatchError,
    committed_shards,
    export_jsonl,
    missing_shards,
    read_shards,
    run_sharded,
    shard_path,
)

ROWS = [{"id": i, "text": f"row {i}"} for i in range(40)]
PARAMS = {"model": "tiny", "temperature": 0.7, "stop": ["\n\n"]}


def process(rows: list[dict], shard: int) -> list[dict]:
    """Deterministic per shard, seeded by the shard index as a sampling stage would be."""
    rng = random.Random(shard)
    return [{"id": r["id"], "out": r["text"].upper(), "draw": rng.random(), "shard": shard} for r in rows]


def uninterrupted(tmp_path: Path) -> list[dict]:
    return read_shards(run_sharded(ROWS, tmp_path / "reference", 4, process, PARAMS)).to_list()


def test_complete_run_reads_back_in_order(tmp_path):
    folder = run_sharded(ROWS, tmp_path / "out", 7, process, PARAMS)
    assert [p.name for p in committed_shards(folder)] == [f"shard-{k:05d}.parquet" for k in range(6)]
    assert missing_shards(folder) == []
    got = read_shards(folder).to_list()
    assert got == [row for k in range(6) for row in process(ROWS[k * 7 : (k + 1) * 7], k)]
    lines = export_jsonl(folder, tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == got


def test_shards_load_with_datasets(tmp_path):
    from datasets import load_dataset

    folder = run_sharded(ROWS, tmp_path / "out", 8, process, PARAMS)
    files = [str(p) for p in committed_shards(folder)]
    loaded = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.to_list() == read_shards(folder).to_list()


def test_resume_after_crash_recomputes_only_missing(tmp_path):
    calls: list[int] = []

    def crashing(rows, shard):
        calls.append(shard)
        if shard == 3:
            raise RuntimeError("out of memory")
        return process(rows, shard)

    folder = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of memory"):
        run_sharded(ROWS, folder, 4, crashing, PARAMS)
    assert missing_shards(folder) == list(range(3, 10))
    assert not list(folder.glob(shards.TEMP_GLOB))

    calls.clear()
    run_sharded(ROWS, folder, 4, lambda rows, k: calls.append(k) or process(rows, k), PARAMS)
    assert calls == list(range(3, 10))
    assert read_shards(folder).to_list() == uninterrupted(tmp_path)


def test_commit_is_atomic(tmp_path, monkeypatch):
    """A write that dies half-way leaves no shard behind, only nothing (or a temp file to clean)."""

    def half_write(table, f):
        f.write(b"PAR1 half a parquet file")
        raise OSError("disk full")

    folder = tmp_path / "out"
    monkeypatch.setattr(shards.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        run_sharded(ROWS, folder, 4, process, PARAMS)
    assert committed_shards(folder) == []
    monkeypatch.undo()

    # What a SIGKILL mid-write leaves: a temp file. The next start removes it and finishes.
    stray = folder / ".shard-00000.parquet.tmp-12345"
    stray.write_bytes(b"PAR1 half a parquet file")
    run_sharded(ROWS, folder, 4, process, PARAMS)
    assert not stray.exists() and not list(folder.glob(shards.TEMP_GLOB))
    assert read_shards(folder).to_list() == uninterrupted(tmp_path)


def test_every_visible_shard_is_complete_during_a_run(tmp_path):
    folder = tmp_path / "out"

    def checking(rows, shard):
        for path in committed_shards(folder):  # everything visible so far reads whole
            assert len(shards.pq.read_table(path)) == 4
        return process(rows, shard)

    run_sharded(ROWS, folder, 4, checking, PARAMS)


def test_different_parameters_are_refused(tmp_path):
    folder = run_sharded(ROWS[:8], tmp_path / "out", 4, process, PARAMS)
    with pytest.raises(StageMismatchError, match="model.*--overwrite"):
        run_sharded(ROWS[:8], folder, 4, process, {**PARAMS, "model": "other"})
    with pytest.raises(StageMismatchError, match="input_fingerprint"):
        run_sharded(ROWS[1:9], folder, 4, process, PARAMS)
    with pytest.raises(StageMismatchError, match="shard_size"):
        run_sharded(ROWS[:8], folder, 2, process, PARAMS)
    # tuples and lists are the same parameter once stored as JSON
    run_sharded(ROWS[:8], folder, 4, process, {**PARAMS, "stop": ("\n\n",)})
    run_sharded(ROWS[:8], folder, 2, process, PARAMS, overwrite=True)
    assert len(committed_shards(folder)) == 4


def test_unknown_shards_without_manifest_are_refused(tmp_path):
    folder = run_sharded(ROWS[:8], tmp_path / "out", 4, process, PARAMS)
    (folder / shards.MANIFEST).unlink()
    with pytest.raises(StageMismatchError, match="no manifest.json"):
        run_sharded(ROWS[:8], folder, 4, process, PARAMS)


def test_second_writer_is_refused_with_the_error_the_command_line_reports(tmp_path):
    folder = tmp_path / "out"
    with lock_held_elsewhere(folder) as other:
        with pytest.raises(FolderInUseError, match=f"pid {other.pid} on "):
            run_sharded(ROWS, folder, 4, process, PARAMS)
        assert not committed_shards(folder)
    run_sharded(ROWS, folder, 4, process, PARAMS)


def test_empty_outputs_and_filters(tmp_path):
    """A filtering stage may keep nothing from a shard; that shard still counts as done."""
    folder = run_sharded(ROWS, tmp_path / "out", 4, lambda rows, k: [r for r in rows if r["id"] % 9 == 0], {})
    assert missing_shards(folder) == []
    assert [r["id"] for r in read_shards(folder).to_list()] == [0, 9, 18, 27, 36]


SCRIPT = """
import json, random, sys, time
from selftaught.data.shards import run_sharded

def process(rows, shard):
    time.sleep(0.25)
    rng = random.Random(shard)
    return [{"id": r["id"], "out": r["text"].upper(), "draw": rng.random(), "shard": shard} for r in rows]

rows = [{"id": i, "text": f"row {i}"} for i in range(40)]
run_sharded(rows, sys.argv[1], 4, process, {"model": "tiny", "temperature": 0.7, "stop": ["\\n\\n"]})
"""


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, str(script), str(folder)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not shard_path(folder, 1).exists():
        assert child.poll() is None, "the stage finished or died before it could be killed"
        assert time.monotonic() < deadline, "no shard committed within 30 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    left = missing_shards(folder)
    assert 0 < len(left) < 10, "the kill should land mid-run"
    calls: list[int] = []
    run_sharded(ROWS, folder, 4, lambda rows, k: calls.append(k) or process(rows, k), PARAMS)
    assert calls == left  # nothing committed is recomputed
    assert not list(folder.glob(shards.TEMP_GLOB))
    assert read_shards(folder).to_list() == uninterrupted(tmp_path)  # nothing lost, nothing duplicated
