"""Tolerant readers for a run folder's files: a run stopped midway must still give a report.

The project's data loaders raise on a bad row (right for training data); here a missing file, a half
written JSON file or a torn last JSONL line becomes "nothing to show" plus a note, never a crash.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, half written or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON object line of `path`; a torn line (the process was killed mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def is_number(value: object) -> bool:
    """A finite int or float; unlike `training.sft.is_number`, NaN and inf are out: they cannot be plotted."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Steps and values of `key` over the log lines that have both as numbers."""
    points = [(r["step"], r[key]) for r in rows if is_number(r.get("step")) and is_number(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def numeric_results(results: dict | None, skip: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """{model: {metric: number}} from an eval_results.json object, dropping non-model keys and non-numbers."""
    models: dict[str, dict[str, float]] = {}
    for model, metrics in (results or {}).items():
        if model in skip or not isinstance(metrics, dict):
            continue
        numbers = {name: float(v) for name, v in metrics.items() if is_number(v)}
        if numbers:
            models[model] = numbers
    return models


_TABLE_ROW = re.compile(r"^\|(.+)\|\s*$")


def card_tables(card: Path) -> dict[str, dict[str, str]]:
    """The two-column (Name | Value) tables of a model card, by section title.

    The card is the one place where both recipes write a run's settings for people to read.
    """
    try:
        text = card.read_text(encoding="utf-8")
    except OSError:
        return {}
    tables: dict[str, dict[str, str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        match = _TABLE_ROW.match(line)
        if not match or not section:
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", match.group(1))]
        if len(cells) == 2 and cells != ["Name", "Value"] and set(cells[0]) - set("-: "):
            tables.setdefault(section, {})[cells[0]] = cells[1]
    return tables
