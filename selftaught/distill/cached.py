"""Models built once into the cache: the embedded student (`distill.student`), and the addition task's teacher
and student (`distill.task_models`).

Each is built in a child process (`python -m <its module> --parent PID <flag> SETTINGS`), under a file
lock: the calling run's accelerate state (mixed precision, a distributed launch) stays its own, and of
several processes started at once (`accelerate launch`), one builds while the others wait for it, told
which process they wait for. The child holds the lock with its parent (it inherits the locked file) and
ends with it (`end_with_parent`): a killed run leaves no build running on alone, and a rerun never takes
the scratch folder of a live build for a dead one's. The child builds into a scratch folder beside the
cached one and publishes it with one atomic rename, with a record of the settings that built it: a changed
recipe is rebuilt, and a killed build never leaves half a model where a complete one is expected.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selftaught.data.folder_lock import holding
from selftaught.models.embedded import cache_dir, is_complete, publish

# Distributed-launch variables the child must not inherit: it trains alone, as one process.
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class CachedModel:
    """A model the cache holds once built: its folder, the settings that build it, and its builder."""

    folder: Path
    settings: dict  # as JSON holds them (lists, not tuples): the record's "settings" must equal them
    record: str  # the file in the folder that keeps {"settings": ..., and what the build measured}
    module: str  # `python -m module --parent PID <flag> SETTINGS` builds it
    flag: str
    description: str  # what is printed while it builds: "Building <description> once: <name> (<duration>)"
    duration: str = "a few minutes"

    def is_current(self) -> bool:
        """A complete model, built with these very settings."""
        record = self.folder / self.record
        return (
            is_complete(self.folder)
            and record.is_file()
            and json.loads(record.read_text()).get("settings") == self.settings
        )

    def build(self, make: Callable[[Path], dict]) -> Path:
        """Build it in this process (the child's part): `make(folder)` writes the model, its tokenizer and its
        card into a scratch folder and returns what the record keeps beside the settings; then it is
        published. Returns the cached folder."""
        if self.is_current():
            return self.folder
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{self.folder.name}.") as scratch:
            built = Path(scratch) / "model"
            record = {"settings": self.settings} | make(built)
            (built / self.record).write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(self.folder, ignore_errors=True)  # one built by another recipe
            publish(built, self.folder)
        return self.folder

    def ensure(self) -> Path:
        """The cached folder, built first in a child process when it is missing or out of date."""
        if self.is_current():
            return self.folder
        cache_dir().mkdir(parents=True, exist_ok=True)
        name = self.folder.name

        def wait(who: str) -> None:  # another process is building it: wait for it
            print(f"Waiting for {who}: it is building {self.description} {name}", flush=True)

        with holding(cache_dir() / f".{name}.lock", f"building {name}", wait) as lock:
            if not self.is_current():
                for stale in cache_dir().glob(f".{name}.*"):  # a dead build's: a live one holds the lock
                    if stale.is_dir():
                        shutil.rmtree(stale)
                print(f"Building {self.description} once: {name} ({self.duration})", flush=True)
                env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
                child = [sys.executable, "-m", self.module, "--parent", str(os.getpid())]
                child += [self.flag, json.dumps(self.settings)]
                subprocess.run(child, env=env, check=True, pass_fds=() if lock is None else (lock,))
        return self.folder


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent(parent: int) -> None:
    """End this build when `parent`, the run that started it, ends, however it ends (kill -9 too).

    On Linux the kernel sends SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG, called through ctypes:
    Python has no binding), and SIGTERM ends the build as Ctrl-C does, removing its scratch folder. Where
    there is no such call, an orphaned build runs on to its end, holding the lock it inherited, so that a
    rerun waits for it rather than starting a second one.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it ended before the kernel was told
        sys.exit(128 + signal.SIGTERM)
