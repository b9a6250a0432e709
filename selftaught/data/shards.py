"""Resumable, crash-safe stage output: input rows cut into fixed shards, each committed atomically as Parquet.

Why: peers ran one `generate` over the whole corpus and wrote the results once at the end, so one crash
lost everything. Here shard k always holds the outputs for input rows [k*S, (k+1)*S), so a rerun
recomputes exactly the shards that are missing, with the same batch composition (and, since `process`
gets the shard index, the same per-shard seed): the finished folder equals an uninterrupted run's.

Commit protocol, per shard: write a hidden temp file in the same folder, flush and fsync it, then
`os.replace` it to `shard-{k:05d}.parquet` (atomic) and fsync the folder. A reader sees a shard whole or
not at all; temp files left by a killed run are deleted on the next start. `manifest.json` (written the
same way) records what the stage was run with (input fingerprint, shard size, the caller's parameters
such as the model), so a rerun with different settings is refused instead of mixing two runs' outputs.
One writer per folder: the folder's lock (`folder_lock.writing_to`) refuses a second one at once.

Each shard also records, in its Parquet metadata, the seconds its process spent on it (since the process
started or committed its previous shard, so loading the model counts too): `shard_seconds` sums them,
and a stage resumed after a crash reports its throughput over every process's time, not the last one's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from selftaught.data.folder_lock import writing_to

MANIFEST = "manifest.json"
SECONDS_KEY = b"selftaught.seconds"
SHARD_GLOB = "shard-*.parquet"
TEMP_GLOB = ".*.tmp-*"
FORMAT_VERSION = 1


class StageMismatchError(RuntimeError):
    """The output folder holds a run made with other inputs or parameters."""


def shard_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"shard-{index:05d}.parquet"


def fingerprint_rows(rows: list[dict]) -> str:
    """A content hash of the input rows (order matters: shards are cut by position)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: on POSIX the directory entry is only safe once the folder is synced."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(final: Path, write: Callable[[object], None]) -> None:
    """Write through `write(file)` into a temp sibling, fsync, and atomically rename it to `final`."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _write_manifest(folder: Path, manifest: dict) -> None:
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    _commit(folder / MANIFEST, lambda f: f.write(data))


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _clear(folder: Path) -> None:
    """Delete what this module wrote (never anything else in the folder)."""
    for path in [*folder.glob(SHARD_GLOB), *folder.glob(TEMP_GLOB), folder / MANIFEST]:
        path.unlink(missing_ok=True)


def _differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    """'key: X there, Y now' for every setting that differs, nested dicts (the params) key by key."""
    lines = []
    for key in sorted(expected.keys() | found.keys()):
        there, now = found.get(key), expected.get(key)
        if isinstance(there, dict) and isinstance(now, dict):
            lines += _differences(there, now, f"{prefix}{key}.")
        elif there != now:
            lines.append(f"{prefix}{key}: {there!r} there, {now!r} now")
    return lines


def _check_manifest(folder: Path, expected: dict, overwrite: bool, redo: str) -> None:
    """Refuse to mix outputs of runs with different settings, unless told to start over."""
    found = read_manifest(folder)
    if overwrite:
        _clear(folder)
    elif found is None and any(folder.glob(SHARD_GLOB)):
        raise StageMismatchError(
            f"{folder} holds shards but no {MANIFEST}, so their settings are unknown. Use a new output "
            f"folder, or {redo} to discard them."
        )
    elif found is not None and found != expected:
        details = "; ".join(_differences(found, expected))
        raise StageMismatchError(
            f"{folder} holds output of a run with different settings ({details}). Use a new output folder, "
            f"or {redo} to discard the old output."
        )


def plan_manifest(rows: list[dict], shard_size: int, params: dict | None = None) -> dict:
    """What `run_sharded` records for these rows and params (and compares with a folder's manifest)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return {
        "format": FORMAT_VERSION,
        "input_fingerprint": fingerprint_rows(rows),
        "num_rows": len(rows),
        "shard_size": shard_size,
        "num_shards": -(-len(rows) // shard_size),
        # round-trip so that tuples vs lists (or a Path vs its string) do not count as a change
        "params": json.loads(json.dumps(params or {}, sort_keys=True, default=str)),
    }


def check_folder(
    rows: list[dict], folder: Path, shard_size: int, params: dict | None = None, redo: str = "--overwrite"
) -> None:
    """Raise StageMismatchError now if `run_sharded` would refuse `folder`: callers check before they load
    a model. `redo` names how the user discards the old output (an option their command has)."""
    if Path(folder).is_dir():
        _check_manifest(Path(folder), plan_manifest(rows, shard_size, params), False, redo)


# The shards still to do, as (shard index, its input rows) -> (shard index, its output rows), in any order.
ShardRunner = Callable[[list[tuple[int, list[dict]]]], Iterable[tuple[int, list[dict]]]]


def run_sharded(
    rows: list[dict],
    folder: Path,
    shard_size: int,
    process: Callable[[list[dict], int], list[dict]] | None,
    params: dict | None = None,
    desc: str = "stage",
    overwrite: bool = False,
    runner: ShardRunner | None = None,
    redo: str = "--overwrite",
) -> Path:
    """Run `process(shard_rows, shard_index)` over every shard not yet committed in `folder`.

    `params` (JSON-serialisable) should hold everything that changes the output, e.g. the model and
    the sampling settings: a rerun with other params is refused (the error advises `redo`). `runner`,
    when given, computes the missing shards instead of `process` (e.g. on Ray actors); each result is
    committed here as it arrives, so the folder, the manifest and resuming are the same either way.
    Returns the folder.
    """
    manifest = plan_manifest(rows, shard_size, params)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_shards = manifest["num_shards"]
    with writing_to(folder, desc):
        for stray in folder.glob(TEMP_GLOB):  # a killed run's half-written files; we hold the lock
            stray.unlink(missing_ok=True)
        _check_manifest(folder, manifest, overwrite, redo)
        _write_manifest(folder, manifest)
        todo = {
            k: rows[k * shard_size : (k + 1) * shard_size]
            for k in range(num_shards)
            if not shard_path(folder, k).is_file()
        }
        done_rows = len(rows) - sum(map(len, todo.values()))
        runner = runner or (lambda tasks: ((k, process(chunk, k)) for k, chunk in tasks))
        clock = time.perf_counter()
        with tqdm(total=len(rows), initial=done_rows, unit="row", desc=desc, dynamic_ncols=True) as bar:
            for count, (k, out) in enumerate(runner(list(todo.items())), start=1):
                if not isinstance(out, list) or not all(isinstance(r, dict) for r in out):
                    raise TypeError(f"process must return a list of dicts, got {type(out).__name__}")
                seconds, clock = time.perf_counter() - clock, time.perf_counter()
                table = pa.Table.from_pylist(out).replace_schema_metadata({SECONDS_KEY: f"{seconds:.3f}"})
                _commit(shard_path(folder, k), lambda f, t=table: pq.write_table(t, f))
                bar.update(len(todo[k]))
                bar.set_postfix(shards=f"{num_shards - len(todo) + count}/{num_shards}")
    return folder


def shard_seconds(folder: Path) -> float:
    """Seconds spent on the committed shards, over every process that committed one (see the docstring)."""
    total = 0.0
    for path in committed_shards(folder):
        metadata = pq.read_schema(path).metadata or {}
        total += float(metadata.get(SECONDS_KEY, 0))
    return total


def committed_shards(folder: Path) -> list[Path]:
    """The committed shard files, in shard order."""
    return sorted(Path(folder).glob(SHARD_GLOB))


def missing_shards(folder: Path) -> list[int]:
    """Shard indices the manifest expects but the folder lacks (empty when the stage is complete)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a sharded stage output")
    return [k for k in range(manifest["num_shards"]) if not shard_path(folder, k).is_file()]


def _tables(folder: Path) -> list[pa.Table]:
    # A shard whose process returned no rows is stored with no columns; it adds nothing.
    tables = [pq.read_table(path) for path in committed_shards(folder)]
    return [t for t in tables if t.num_rows]


def read_shards(folder: Path):
    """All committed shards, in order, as one in-memory `datasets.Dataset`.

    The shard files are plain Parquet, so `datasets.load_dataset("parquet", data_files=[...])` on
    `committed_shards(folder)` reads them too (memory-mapped, for outputs too big for RAM).
    """
    from datasets import Dataset  # imported here: it is slow to import and writers do not need it

    tables = _tables(folder)
    if not tables:
        return Dataset.from_dict({})
    return Dataset(pa.concat_tables(tables, promote_options="permissive"))


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows as one Parquet file, committed like a shard: a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _commit(path, lambda f: pq.write_table(pa.Table.from_pylist(rows), f))
    return path


def read_parquet(path: Path) -> list[dict]:
    """The rows of one Parquet file. pyarrow, not datasets: no cache copy, and an empty file is valid."""
    return pq.read_table(path).to_pylist()


def write_json(path: Path, payload: dict) -> Path:
    """JSON committed like a shard: a killed run leaves no half file to resume from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(payload, indent=2).encode()
    _commit(path, lambda f: f.write(data))
    return path


def export_jsonl(folder: Path, path: Path) -> Path:
    """Write every committed row as JSON lines (atomically, like a shard)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f) -> None:
        for table in _tables(folder):
            for row in table.to_pylist():
                f.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())

    _commit(path, write)
    return path
