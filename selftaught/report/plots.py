"""Matplotlib figures for the report, each returned as PNG bytes.

The figures are built on `matplotlib.figure.Figure` directly (no pyplot): no global state, no GUI
backend, safe to call from a training process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from selftaught.evaluate.intervals import excludes_zero
from selftaught.report.page import format_number

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
WIDTH = 10.0  # inches; at DPI 100 the PNG is 1000 px wide, the page's content width
DPI = 100


@dataclass
class Series:
    """One line of a step plot."""

    label: str
    steps: Sequence[float]
    values: Sequence[float]
    marker: str = "o"


def new_figure(height: float, width: float = WIDTH) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=13, fontweight="bold", loc="left")
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def step_lines(series: list[Series], title: str, ylabel: str, xlabel: str = "optimizer step") -> bytes:
    """Values over training steps, one line (with markers) per series."""
    figure = new_figure(4.2)
    ax = figure.add_subplot()
    for i, s in enumerate(series):
        ax.plot(
            s.steps,
            s.values,
            marker=s.marker,
            markersize=4,
            linewidth=1.4,
            color=COLORS[i % 8],
            label=s.label,
        )
    style(ax, title, xlabel, ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(max(s.steps) for s in series) + 1)  # a one-step run still gets a readable axis
    ax.ticklabel_format(axis="y", useOffset=False)  # plain values, no "1e-8 + 3.18e-3" corner label
    figure.legend(fontsize=10, frameon=False, loc="outside lower center", ncols=min(len(series), 4))
    return to_png(figure)


def bar_label(value: float) -> str:
    """Short enough to sit on a narrow bar: 3 significant digits, whole numbers from 100 up."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def metric_bars(results: dict[str, dict[str, float]], title: str, hints: dict[str, str]) -> bytes:
    """Small multiples: one panel per metric (each on its own scale), one bar per model."""
    models = list(results)
    metrics = list(dict.fromkeys(m for values in results.values() for m in values))
    columns = min(3 if len(models) > 3 else 4, len(metrics))  # room for every bar's label
    rows = math.ceil(len(metrics) / columns)
    figure = new_figure(0.6 + 2.6 * rows)
    figure.suptitle(title, fontsize=13, fontweight="bold", x=0.01, ha="left")
    for i, metric in enumerate(metrics):
        ax = figure.add_subplot(rows, columns, i + 1)
        shown = [m for m in models if metric in results[m]]
        values = [results[m][metric] for m in shown]
        colors = [COLORS[models.index(m) % 8] for m in shown]
        bars = ax.bar(range(len(shown)), values, color=colors, width=0.7)
        ax.bar_label(bars, labels=[bar_label(v) for v in values], fontsize=9, padding=2)
        ax.set_xticks(range(len(shown)), [m.replace("_", " ") for m in shown], fontsize=9, rotation=20)
        ax.set_title(metric + (f"\n({hints[metric]})" if metric in hints else ""), fontsize=10)
        ax.margins(y=0.2)
        if min(values) >= 0:  # counts and rates start at 0; an all-zero panel still gets a 0-1 axis
            ax.set_ylim(0, max(values) * 1.2 or 1)
        ax.tick_params(axis="y", labelsize=9)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.spines[["top", "right"]].set_visible(False)
    return to_png(figure)


def funnel(stages: list[tuple[str, int]], title: str) -> bytes:
    """Row counts from the corpus to the selected pairs, top to bottom (log scale when they span 100x)."""
    figure = new_figure(0.9 + 0.55 * len(stages))
    ax = figure.add_subplot()
    labels, counts = zip(*stages, strict=True)
    positions = range(len(stages))[::-1]
    bars = ax.barh(list(positions), counts, color=COLORS[0], height=0.6)
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=10, padding=3)
    ax.set_yticks(list(positions), labels, fontsize=10)
    positive = [c for c in counts if c > 0]
    log = bool(positive) and max(positive) >= 100 * min(positive)
    if log:
        ax.set_xscale("log")
    style(ax, title, "rows (log scale)" if log else "rows", "")
    ax.margins(x=0.12)
    ax.grid(axis="y", visible=False)
    return to_png(figure)


def score_histograms(histograms: dict[str, tuple[dict[str, int], dict[str, int]]], title: str) -> bytes:
    """One panel per iteration: pairs per score bin (grey), the kept ones over them (green). Each value is
    ({bin: pairs}, {bin: kept}); bins are labelled by their lower edge (or the rubric's digit)."""
    figure = new_figure(3.6 * max(len(histograms), 1))
    axes = figure.subplots(max(len(histograms), 1), 1, squeeze=False)[:, 0]
    for ax, (label, (every, kept)) in zip(axes, histograms.items(), strict=False):
        bins = list(every)
        positions = range(len(bins))
        ax.bar(positions, [every[b] for b in bins], color="#bbbbbb", width=0.8, label="scored")
        bars = ax.bar(positions, [kept.get(b, 0) for b in bins], color=COLORS[2], width=0.8, label="kept")
        ax.bar_label(bars, labels=[f"{kept.get(b, 0)}/{every[b]}" for b in bins], fontsize=9, padding=2)
        ax.set_xticks(list(positions), bins, fontsize=9)
        ax.margins(y=0.2)
        style(ax, label, "score (bin from)", "pairs")
        ax.grid(axis="x", visible=False)
    figure.suptitle(title, fontsize=13, fontweight="bold", x=0.01, ha="left")
    axes[0].legend(fontsize=10, frameon=False)
    return to_png(figure)


def interval_plot(rows: list[tuple[str, float, list[float] | None]], title: str, xlabel: str) -> bytes:
    """A forest plot: one row per (label, difference, [low, high]), a dot and its interval, 0 marked: an
    interval across 0 means "cannot tell apart"."""
    figure = new_figure(0.4 * len(rows) + 1.6)
    ax = figure.add_subplot()
    for position, (_, value, interval) in enumerate(rows):
        apart = excludes_zero(interval)
        color = COLORS[0] if apart else "#888888"
        if interval is not None:
            ax.plot(interval, [position, position], color=color, linewidth=2)
        ax.plot([value], [position], "o", color=color)
    ax.axvline(0, color="#444444", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=9)
    ax.invert_yaxis()
    style(ax, title, xlabel, "")
    ax.grid(axis="y", visible=False)
    return to_png(figure)


def stage_throughput(stages: list[tuple[str, float | None, float | None]], title: str) -> bytes:
    """Wall time and rows per second of each stage, side by side (rows/s on a log scale)."""
    figure = new_figure(0.9 + 0.45 * len(stages))
    figure.suptitle(title, fontsize=13, fontweight="bold", x=0.01, ha="left")
    names = [s[0] for s in stages]
    positions = list(range(len(stages)))[::-1]
    for column, (index, label, log) in enumerate(((1, "seconds", False), (2, "rows per second", True))):
        ax = figure.add_subplot(1, 2, column + 1)
        values = [s[index] or 0.0 for s in stages]
        bars = ax.barh(positions, values, color=COLORS[column], height=0.6)
        ax.bar_label(bars, labels=[format_number(v) if v else "–" for v in values], fontsize=9, padding=3)
        ax.set_yticks(positions, names if column == 0 else [""] * len(names), fontsize=10)
        if log and any(values):
            ax.set_xscale("log")
        style(ax, "", label + (" (log scale)" if log and any(values) else ""), "")
        ax.margins(x=0.18)
        ax.grid(axis="y", visible=False)
    return to_png(figure)
