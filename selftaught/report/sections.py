"""Section builders both run kinds share: evaluations and answers side by side, and key/value tables."""

from __future__ import annotations

import re
from pathlib import Path

from selftaught.data.shards import read_parquet
from selftaught.evaluate.intervals import excludes_zero
from selftaught.report import plots
from selftaught.report.page import Plot, Section, Table, format_number
from selftaught.report.readers import is_number
from selftaught.scoring.degeneration import is_degenerate

SHOWN_ANSWERS = 4  # held-out prompts whose answers a report quotes
ANSWER_CHARS = 400  # each quoted answer cut to this many characters

# Which way is better, by a word in the metric's name: shown under each panel so nobody has to guess.
DIRECTIONS = {
    "kl": "lower is better",
    "jsd": "lower is better",
    "loss": "lower is better",
    "accuracy": "higher is better",
    "agreement": "higher is better",
    "win_rate": "higher is better",
    "pass@": "higher is better",
    "auc": "higher is better",
    "precision": "higher is better",
    "recall": "higher is better",
    "nll": "lower is better",
    "degenerate": "lower is better",
    "distinct": "higher is better",
    "unverifiable": "lower is better",
    "boxed": "higher is better",  # the prompts ask for a boxed final answer
}


def direction_hints(metrics) -> dict[str, str]:
    return {m: hint for m in metrics for word, hint in DIRECTIONS.items() if word in m.lower()}


def ordered(results: dict[str, dict[str, float]], first: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The models named in `first` in that order, then any others as the file lists them."""
    names = [m for m in first if m in results] + [m for m in results if m not in first]
    return {m: results[m] for m in names}


def evaluation_section(results: dict[str, dict[str, float]], title: str, intro: str, missing: str) -> Section:
    """Every metric of every model: one bar panel per metric and the exact numbers in a table."""
    section = Section(title, intro)
    if not results:
        section.notes.append(missing)
        return section
    metrics = list(dict.fromkeys(m for values in results.values() for m in values))
    hints = direction_hints(metrics)
    section.plots.append(Plot("evaluation", title, plots.metric_bars(results, title, hints)))
    rows = [
        [metric, *(format_number(r[metric]) if metric in r else "–" for r in results.values())]
        for metric in metrics
    ]
    section.tables.append(Table(["metric", *results], rows, "exact values"))
    return section


def comparison_section(comparisons: list[dict] | None, title: str, intro: str, missing: str) -> Section:
    """Paired differences (entries as `evaluate.suite` and `evaluate.distance` write them: model, against,
    metric, value, against_value, difference, ci95) as one forest plot per metric and a table."""
    section = Section(
        title,
        intro + " The bar is a 95% paired bootstrap interval; an interval across 0 (grey) means the "
        "evaluation cannot tell the two apart.",
    )
    if not comparisons:
        section.notes.append(missing)
        return section
    rows, table = [], []
    for c in comparisons:
        rows.append((f"{c['model']} - {c['against']}: {c['metric']}", c["difference"], c["ci95"]))
        low, high = c["ci95"] or (None, None)
        interval = "n/a" if low is None else f"[{format_number(low)}, {format_number(high)}]"
        numbers = [format_number(c[key]) for key in ("value", "against_value", "difference")]
        verdict = "differ" if excludes_zero(c["ci95"]) else "cannot tell apart"
        table.append([c["model"], c["against"], c["metric"], *numbers, interval, verdict])
    for metric in dict.fromkeys(c["metric"] for c in comparisons):
        picked = [r for r, c in zip(rows, comparisons, strict=True) if c["metric"] == metric]
        plot_title = f"Paired differences: {metric}"
        name = "compare_" + re.sub(r"\W+", "_", metric)
        section.plots.append(
            Plot(name, plot_title, plots.interval_plot(picked, plot_title, "difference (model - other)"))
        )
    header = ["model", "against", "metric", "model's", "other's", "difference", "95% interval", "verdict"]
    section.tables.append(Table(header, table, "paired bootstrap over the evaluated items"))
    return section


def cell(value: object) -> str:
    """A summary value as one table cell: numbers rounded, small dicts as key=value lists."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "–"
    return format_number(value) if is_number(value) else str(value)


def key_value_table(mapping: dict, caption: str) -> Table:
    return Table(["name", "value"], [[str(k), cell(v)] for k, v in mapping.items()], caption)


def shown(text: str) -> str:
    """An answer as a table cell: cut to ANSWER_CHARS, with what a reader could not see said in words (the
    page escapes every text)."""
    if not text.strip():
        return f"[empty or whitespace only: {len(text)} characters]"
    cut = (
        text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + f" [... {len(text) - ANSWER_CHARS} more]"
    )
    return ("[degenerate] " if is_degenerate(text) else "") + cut


def answers_section(files: dict[str, Path], answer_key: str) -> Section | None:
    """The first held-out prompts with each model's greedy answer side by side, so a reader sees what the
    numbers mean. `files`: column label -> that model's answers (Parquet rows with `prompt` and `answer_key`,
    in the same prompt order); models without a file are left out; None when none has one."""
    answers = {label: read_parquet(path) for label, path in files.items() if path.is_file()}
    if not answers:
        return None
    section = Section(
        "Held-out answers, side by side",
        f"The first {SHOWN_ANSWERS} held-out prompts and each model's greedy answer, cut to {ANSWER_CHARS} "
        "characters; [degenerate] marks an empty, whitespace-only or looping answer (selftaught.scoring."
        "degeneration). Every answer is in evaluation/*.parquet.",
    )
    count = min(SHOWN_ANSWERS, *(len(rows) for rows in answers.values()))
    first = next(iter(answers.values()))
    rows = [
        [shown(str(first[i].get("prompt") or "")), *(shown(str(r[i][answer_key])) for r in answers.values())]
        for i in range(count)
    ]
    section.tables.append(Table(["prompt", *answers], rows))
    return section
