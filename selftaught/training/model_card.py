"""Write a Hugging Face model card (README.md) for a model trained by selftaught.

Both recipes (on-policy distillation, instruction backtranslation) describe their run with the same
`CardContent`, so the card layout lives here once and the recipes only supply facts: what was trained,
how, on what, with which settings, and how it scored.

The YAML front matter is built with huggingface_hub's `ModelCardData`/`EvalResult` so the Hub parses it
(base model link, dataset links, eval-results widget). Two details of that API shape the code below:

- the YAML is written with `yaml.dump`, not `yaml.safe_dump`, so a numpy float or a tuple is written as a
  `!!python/...` object that `ModelCard.load` (which uses `yaml.safe_load`) then refuses to read. Every
  front-matter value is therefore converted to a plain str / float first.
- the model-index groups results by (task type, dataset, config, split, revision) and keeps only the
  first result's task name per group, so two tasks scored on the same dataset would be merged.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# Distributions whose versions matter for reproducing a run, in the order they are listed on the card.
FRAMEWORKS = (
    "selftaught",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "peft",
    "accelerate",
    "tokenizers",
    "math-verify",
)

# The task type the Hub understands for causal LMs; also the card's pipeline_tag.
TASK_TYPE = "text-generation"

# A Hub repo id: "name" or "owner/name" made of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class EvalRow:
    """One number from an evaluation: `model` says whose number it is (before / after / teacher...)."""

    task: str  # e.g. "held-out distillation" / "math"
    dataset: str  # dataset name/path
    metric: str  # e.g. "forward_kl", "accuracy"
    model: str  # which model this row is about: "student (before)", "student (after)", "teacher"
    value: float


@dataclass
class CardContent:
    """Everything a recipe knows about its run; `render_model_card` decides how it is laid out."""

    model_name: str  # e.g. "SmolLM2-135M-Instruct-10L-distilled"
    base_model: str  # what was fine-tuned (Hub id or local path)
    summary: str  # one paragraph: what the model is, how it was made
    method: str  # a markdown paragraph explaining the method
    citations: list[str]  # BibTeX entries (the method paper(s))
    hyperparameters: dict[str, object]  # every hyper-parameter, rendered as a table
    data: dict[str, object]  # data description: source, sizes, splits, columns... rendered as a table
    results: list[EvalRow]  # evaluation results
    tags: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids or local paths
    extra_sections: dict[str, str] = field(default_factory=dict)  # title -> markdown, appended in order
    license: str | None = None


def framework_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on; missing ones are skipped, not guessed."""
    versions = {}
    for name in FRAMEWORKS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def is_trained_model_row(row: EvalRow, model_name: str) -> bool:
    """Whether a result row describes the trained model (and so belongs in the front-matter model-index).

    The rule: `row.model` starts with "student (after)", or equals "trained", or equals the card's
    `model_name`. Baselines ("student (before)", "teacher", ...) are not this model's results, so putting
    them in the model-index would credit their scores to it; they appear only in the body table.
    """
    return row.model.startswith("student (after)") or row.model in ("trained", model_name)


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` can be a Hub repo id; local paths are kept out of the front matter (the Hub rejects
    them as `base_model` / `datasets` links) and are only mentioned in the body."""
    if name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    return bool(_HUB_ID.match(name))


# -----------------------------------------------------------------------------
# front matter


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "task"


def _eval_results(content: CardContent) -> list[EvalResult]:
    """The trained model's finite results as EvalResults, with plain Python types only."""
    rows = [r for r in content.results if is_trained_model_row(r, content.model_name)]
    rows = [r for r in rows if math.isfinite(float(r.value))]  # NaN/inf break JSON readers of the card
    # The Hub groups results by (task type, dataset) and keeps one task name per group. When one dataset
    # was scored under several tasks, give each task its own type so they stay separate entries.
    tasks_per_dataset: dict[str, set[str]] = {}
    for r in rows:
        tasks_per_dataset.setdefault(str(r.dataset), set()).add(str(r.task))
    results = []
    for r in rows:
        shared = len(tasks_per_dataset[str(r.dataset)]) > 1
        results.append(
            EvalResult(
                task_type=_slug(str(r.task)) if shared else TASK_TYPE,
                task_name=str(r.task),
                dataset_type=str(r.dataset),
                dataset_name=str(r.dataset),
                metric_type=str(r.metric),
                metric_name=str(r.metric),
                metric_value=float(r.value),
            )
        )
    return results


def _card_data(content: CardContent) -> ModelCardData:
    tags = ["selftaught", *(str(t) for t in content.tags)]
    hub_datasets = [str(d) for d in content.datasets if looks_like_hub_id(str(d))]
    eval_results = _eval_results(content)
    return ModelCardData(
        base_model=str(content.base_model) if looks_like_hub_id(str(content.base_model)) else None,
        library_name="transformers",
        license=str(content.license) if content.license else None,
        tags=tags,  # ModelCardData de-duplicates, keeping order
        datasets=hub_datasets or None,  # None rather than [] so no empty key is written
        pipeline_tag=TASK_TYPE,
        model_name=str(content.model_name),
        eval_results=eval_results or None,
    )


# -----------------------------------------------------------------------------
# body


def _flatten(mapping: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Nested dicts become dotted keys, so e.g. {"splits": {"train": 900}} is one row "splits.train"."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _cell(value: object) -> str:
    """A value as one markdown table cell: lists joined, pipes escaped, line breaks flattened."""
    if isinstance(value, Enum):
        value = value.value
    text = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple, set)) else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _key_value_table(mapping: dict[str, object], what: str) -> str:
    flat = _flatten(mapping)
    if not flat:
        return f"No {what} were recorded."
    return _table(["Name", "Value"], [[_cell(k), _cell(v)] for k, v in flat.items()])


def _format_value(value: float) -> str:
    return f"{float(value):.4g}"


def _evaluation_table(results: list[EvalRow]) -> str:
    """One row per (task, dataset, metric), one column per model, in order of first appearance."""
    if not results:
        return "No evaluation results were recorded."
    models = list(dict.fromkeys(r.model for r in results))
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in results:
        cells.setdefault((r.task, r.dataset, r.metric), {})[r.model] = _format_value(r.value)
    rows = [
        [_cell(task), _cell(dataset), _cell(metric), *(by_model.get(m, "–") for m in models)]
        for (task, dataset, metric), by_model in cells.items()
    ]
    return _table(["Task", "Dataset", "Metric", *(_cell(m) for m in models)], rows)


def signed_interval(ci95: list[float] | None) -> str:
    """A difference's interval as cards and the console print it: "[-0.036, -0.0194]", or "n/a"."""
    return "n/a" if ci95 is None else f"[{ci95[0]:+.3g}, {ci95[1]:+.3g}]"


def comparison_table(comparisons: list[dict], model: str, note: str) -> str:
    """`model` against other models: markdown rows of paired differences with their 95% intervals (entries
    as `evaluate.suite` and `evaluate.distance` write them), then how to read them and `note`."""
    rows = [c for c in comparisons if c["model"] == model]
    if not rows:
        return ""
    table = [
        "| metric | against | this model | the other | difference | 95% interval | items |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        table.append(
            f"| {c['metric']} | {c['against']} | {c['value']:.4g} | {c['against_value']:.4g} | "
            f"{c['difference']:+.3g} | {signed_interval(c['ci95'])} | {c['items']} |"
        )
    reading = (
        "Paired bootstrap over the same held-out items. An interval that contains 0 means this evaluation "
        "cannot tell the two models apart."
    )
    return "\n".join([*table, "", f"{reading} {note}"])


def _hub_link(name: str, kind: str) -> str:
    """A Hub id as a link (kind "" for models, "datasets/" for datasets); a local path as code."""
    return f"[{name}](https://huggingface.co/{kind}{name})" if looks_like_hub_id(name) else f"`{name}`"


def _body(content: CardContent) -> str:
    parts = [f"# {content.model_name}", content.summary.strip()]
    parts.append(f"Fine-tuned from {_hub_link(str(content.base_model), '')}.")
    parts += ["## Method", content.method.strip()]
    parts += ["## Training hyper-parameters", _key_value_table(content.hyperparameters, "hyper-parameters")]
    parts += ["## Data", _key_value_table(content.data, "data details")]
    if content.datasets:
        parts.append("Datasets: " + ", ".join(_hub_link(str(d), "datasets/") for d in content.datasets) + ".")
    parts += ["## Evaluation", _evaluation_table(content.results)]
    for title, text in content.extra_sections.items():
        parts += [f"## {title}", text.strip()]
    versions = framework_versions()
    parts += ["## Framework versions", "\n".join(f"- {name}: {v}" for name, v in versions.items())]
    if content.citations:
        parts.append("## Citation")
        parts += [f"```bibtex\n{entry.strip()}\n```" for entry in content.citations]
    return "\n\n".join(parts) + "\n"


# -----------------------------------------------------------------------------
# public entry points


def render_model_card(content: CardContent) -> str:
    """The full README.md text: YAML front matter, then the markdown body.

    The text is parsed back with `ModelCard` before it is returned, so a card the Hub could not read
    fails here, at training time, rather than after upload.
    """
    text = f"---\n{_card_data(content).to_yaml()}\n---\n\n{_body(content)}"
    ModelCard(text)  # raises if the front matter does not round-trip
    return text


def write_model_card(output_dir: str | Path, content: CardContent) -> Path:
    """Write OUTPUT_DIR/README.md (creating the directory) and return its path."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(content), encoding="utf-8")
    return path


def declared_base_model(model: str) -> str:
    """The Hub id a local model folder names as `base_model` in its own card, else `model` unchanged.

    A model derived on this machine (the embedded student, a previous run's output) lives in a local
    folder, which the Hub cannot link to; its card says which Hub model it came from.
    """
    card = Path(model) / "README.md"
    if card.is_file():
        base = ModelCard.load(card).data.to_dict().get("base_model")
        if isinstance(base, str) and base:
            return base
    return model
