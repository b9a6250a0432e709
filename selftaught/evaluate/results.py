"""What every evaluation writes: `<output_dir>/<task>.json`, per-row Parquet, a printed table, card rows.

The JSON is the single source for everything downstream: the printed table, the model card's
model-index (`eval_rows`) and a run's `eval_results.json` (`{model_label: {metric: number}}`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from selftaught.data.shards import write_json
from selftaught.models.naming import is_local, model_label
from selftaught.training.model_card import EvalRow


def write_result(
    output_dir: str | Path,
    task: str,
    metrics: dict,
    config,
    models: dict[str, str],
    dataset: str,
    name: str | None = None,
) -> dict:
    """`<output_dir>/<name or task>.json`: metrics, the settings that produced them, the models' names."""
    result = {
        "task": task,
        "dataset": dataset,
        "models": models,
        "metrics": metrics,
        # a key is never recorded; a setting naming a file or folder of this machine is named by what it is
        "settings": {k: named(v) for k, v in asdict(config).items() if k != "api_key"},
    }
    write_json(Path(output_dir) / f"{name or task}.json", result)
    return result


def named(value: object) -> object:
    """A setting as a result records it: a local path by `model_label`, anything else as it is."""
    return model_label(value) if isinstance(value, str) and is_local(value) else value


def read_result(path: Path) -> dict | None:
    """A result written earlier (a resumed run reuses it), or None."""
    return json.loads(path.read_text()) if path.is_file() else None


def _numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics flattened to `a.b` names, keeping numbers only (counts included, None dropped)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def flat_metrics(result: dict) -> dict[str, float]:
    """A result's metrics as {name: number}: what `eval_results.json` holds per model label."""
    return _numbers(result["metrics"])


def eval_rows(results: list[dict], model: str = "trained") -> list[EvalRow]:
    """Model-index rows for a card, one per numeric metric of each result (as `write_result` wrote it).

    `model` says whose numbers they are; the default, "trained", puts them in the card's model-index.
    """
    return [
        EvalRow(task=r["task"], dataset=r["dataset"], metric=name, model=model, value=value)
        for r in results
        for name, value in flat_metrics(r).items()
    ]


def print_result(result: dict) -> None:
    """The metrics as a rich table titled by task and models."""
    from rich.console import Console
    from rich.table import Table

    models = ", ".join(f"{role} {name}" for role, name in result["models"].items())
    table = Table(title=f"{result['task']} on {result['dataset']} ({models})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in flat_metrics(result).items():
        table.add_row(name, f"{value:.4g}")
    Console().print(table)
