"""One writer per folder: an advisory lock that names its holder, so a second writer is told who holds it.

Why: two runs writing one folder mix their outputs (one run's metrics.jsonl lines among the other's, a
record naming one run's settings beside the other's weights) or die on each other's half-written files.
Every stage that writes a run folder (`selftaught distill --output_dir`, each `backtranslate` stage on
its `--run_dir`, each sharded stage on its own folder) holds the folder's lock while it runs; a second
process is refused at once with `FolderInUseError`, which names the holder's pid, host and command.

How: `fcntl.flock` on `<folder>/.lock`. The lock belongs to the open file, so the OS drops it when the
holder ends, however it ends (kill -9 included): a later rerun is never refused by a dead process, and
there is no stale lock to clear by hand. The file records the holder (pid, host, command, since when)
while it holds the lock and is emptied when it lets go, so a finished run leaves an empty `.lock` (and no
host name) behind. One process may take the same lock again (`backtranslate run` holds the run folder
and runs every stage, each of which takes it too).

Under a distributed launch (`accelerate launch`: torchrun sets RANK for every process) the ranks of one
launch share the folder by design, so only the launch's main process (RANK 0) takes the lock: a second
launch on the same folder is refused on its main process, whose exit stops that whole launch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

try:  # POSIX only; elsewhere the single-writer rule is on the user
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".lock"


class FolderInUseError(RuntimeError):
    """Another process is writing to the folder; the message names it and says what to do."""


# Locks this process holds: lock file -> (its open file, how many holds are nested in it).
_held: dict[Path, tuple[IO[str], int]] = {}


def holder(lock_file: Path) -> str:
    """Who holds `lock_file`, as its record says: 'pid 123 on host (command, since 12:00:00)'."""
    try:
        record = json.loads(Path(lock_file).read_text())
        return f"pid {record['pid']} on {record['host']} ({record['command']}, since {record['since']})"
    except (OSError, ValueError, KeyError, TypeError):  # taken this very moment, record not yet written
        return "another process"


@contextmanager
def holding(lock_file: Path, command: str, busy: Callable[[str], None]) -> Iterator[int | None]:
    """Hold the exclusive lock on `lock_file` while the block runs; yields its file descriptor (a child
    process given it, e.g. through `subprocess`'s pass_fds, holds the lock too until it ends).

    When another process holds it, `busy(holder)` is called first: it raises to refuse, or returns to
    wait until the lock is free. `command` is what this process records as doing.
    """
    lock_file = Path(lock_file).resolve()
    if fcntl is None:  # pragma: no cover
        yield None
        return
    if lock_file in _held:  # this process holds it already
        handle, depth = _held[lock_file]
        _held[lock_file] = (handle, depth + 1)
        try:
            yield handle.fileno()
        finally:
            _held[lock_file] = (handle, depth)
        return
    handle = open(lock_file, "a+")  # noqa: SIM115 - closed below, which is what lets go of the lock
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy(holder(lock_file))
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since}
        handle.truncate(0)
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        _held[lock_file] = (handle, 1)
        try:
            yield handle.fileno()
        finally:
            del _held[lock_file]
            handle.truncate(0)
    finally:
        handle.close()


def is_launch_main() -> bool:
    """Whether this process is the main one of its launch (RANK 0, or not launched at all). Read from the
    environment: the lock is taken before anything sets up the process group."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def writing_to(folder: str | Path, command: str, elsewhere: str = "another folder") -> Iterator[None]:
    """Hold `folder`'s lock while the block runs (the folder is made if missing, and removed again if the
    block wrote nothing into it: a refused run leaves no trace); raise FolderInUseError at once if another
    process holds it. `elsewhere` is the user's other way out, e.g. 'another --run_dir'."""
    folder = Path(folder)
    if not is_launch_main():
        yield
        return
    made_here = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)

    def refuse(who: str) -> None:
        raise FolderInUseError(
            f"{folder} is in use: {who} is writing to it. Wait for it to end (or stop it), "
            f"or use {elsewhere}."
        )

    try:
        with holding(folder / LOCK_FILE, command, refuse):
            yield
    finally:
        if made_here and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            folder.rmdir()
