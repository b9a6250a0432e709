"""What every evaluation writes: `<output_dir>/<task>.json`, per-row Parquet, a printed table, card rows.

The JSON is the single source for everything downstream: the printed table, the model card's
model-index (`eval_rows`) and a run's `eval_results.json` (`{model_label: {metric: number}}`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from selftaught.data.shards import write_json
from selftaught.models.loading import inference_dtype
from selftaught.models.naming import is_local, model_label
from selftaught.training.model_card import EvalRow


def recorded_settings(config) -> dict:
    """The config as a result records it: a local path (model, data, output folder) by its name as
    `model_label` gives it, never a path of this machine; an API key never."""
    settings = {key: _recorded(value) for key, value in asdict(config).items() if key != "api_key"}
    if "dtype" in settings and settings["dtype"] is None:  # left to the device: record what it chose
        settings["dtype"] = inference_dtype()
    return settings


def _recorded(value: object) -> object:
    """A path (it has a separator or a ~) to something on this machine by its label; anything else as is."""
    if (
        isinstance(value, str)
        and ("/" in value or "\\" in value or value.startswith("~"))
        and is_local(value)
    ):
        return model_label(value)
    return value


def write_result(
    output_dir: str | Path,
    task: str,
    metrics: dict,
    config,
    models: dict[str, str],
    dataset: str,
    name: str | None = None,
    extra: dict | None = None,
) -> dict:
    """`<output_dir>/<name or task>.json`: metrics, the settings that produced them, the models' names,
    and any `extra` top-level entries a task records beside its metrics (math: the unverifiable rows)."""
    result = {
        "task": task,
        "dataset": _recorded(dataset),
        "models": models,
        "metrics": metrics,
        "settings": recorded_settings(config),
        **(extra or {}),
    }
    write_json(Path(output_dir) / f"{name or task}.json", result)
    return result


def read_result(path: Path) -> dict | None:
    """A result written earlier (a resumed run reuses it), or None."""
    return json.loads(path.read_text()) if path.is_file() else None


def _numbers(metrics: dict, prefix: str = "", suffix: str = "") -> dict[str, float]:
    """Nested metrics flattened to `a.b` names, keeping numbers only (counts included, None dropped).

    A key that is a phrase rather than a name (a selection rule such as "pmi >= 0.5") names its numbers
    after them, "kept (pmi >= 0.5)": dotted onto the phrase, its dots would read as part of a number."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key.isidentifier():
            flat |= _numbers(value, f"{prefix}{key}.", suffix)
        elif isinstance(value, dict):
            flat |= _numbers(value, prefix, f" ({key}){suffix}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}{suffix}"] = float(value)
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
    for name, why in result["metrics"].items():  # a metric that could not be computed says why
        if name.endswith("_undefined"):
            table.add_row(name.removesuffix("_undefined"), f"undefined: {why}")
    Console().print(table)
