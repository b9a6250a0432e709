"""The report of a `selftaught backtranslate` run: funnel, curation scores, evaluations, throughput, SFT."""

from __future__ import annotations

from pathlib import Path

from selftaught.backtranslate.stages import AUGMENT, CURATE, SEGMENT, SELECT, current_name, iterations
from selftaught.report import plots
from selftaught.report.page import Plot, Section, Table
from selftaught.report.readers import card_tables, curve, is_number, numeric_results, read_json, read_jsonl
from selftaught.report.sections import (
    answers_section,
    cell,
    comparison_section,
    evaluation_section,
    key_value_table,
    ordered,
)

MODELS = ("base", "M0", "M1", "M2")
COUNTS = ("rows_in", "rows_out", "seconds", "rows_per_second", "score_histogram", "kept_histogram")  # plotted


def rows_out(summary: dict, stage: str) -> int | None:
    value = summary.get(stage, {}).get("rows_out")
    return int(value) if is_number(value) else None


def funnel_section(summary: dict) -> Section:
    section = Section(
        "Data funnel",
        "From the unlabelled corpus to the pairs each iteration keeps for training. "
        f"Finished stages: {', '.join(summary) or 'none'}.",
    )
    segment = summary.get(SEGMENT.name(), {})
    stages = [
        ("corpus documents", segment.get("rows_in")),
        ("segments", rows_out(summary, SEGMENT.name())),
        ("instruction-segment pairs", rows_out(summary, AUGMENT.name())),
    ]
    stages += [(f"selected, iteration {k}", rows_out(summary, SELECT.name(k))) for k in iterations(summary)]
    known = [(label, int(n)) for label, n in stages if is_number(n)]
    if known:
        title = "Data funnel: corpus to selected pairs"
        section.plots.append(Plot("funnel", title, plots.funnel(known, title)))
    else:
        section.notes.append("No corpus stage has finished yet (summary.json has no segment line).")
    return section


def scores_section(summary: dict) -> Section:
    section = Section("Curation scores", "How the current model scored every (instruction, segment) pair.")
    histograms = {}
    for k in iterations(summary):
        line = summary.get(SELECT.name(k)) or {}
        every, kept = line.get("score_histogram"), line.get("kept_histogram")
        if isinstance(every, dict) and isinstance(kept, dict):
            modes = summary.get(CURATE.name(k), {}).get("settings", {}).get("curation_mode", "?")
            label = f"iteration {k}: {line.get('score', 'score')}, scored by M{k - 1} ({modes})"
            histograms[label] = (every, kept)
        if "rule" in line:
            section.intro += (
                f" Iteration {k} kept {line['rule']}: {line.get('rows_out')} of {line.get('rows_in')}."
            )
    if histograms:
        title = "Curation scores per iteration (green: kept)"
        section.plots.append(Plot("scores", title, plots.score_histograms(histograms, title)))
    else:
        section.notes.append("No selection has finished yet.")
    return section


COMPARISON_INTRO = (
    "Each model minus the model before it and minus the base, on the same held-out items. Held-out NLL "
    "(heldout_nll: the seed's domain, held-out oasst answers; new_domain_nll: the corpus's domain, corpus "
    "documents held out of augmentation, each asked about by a user's question): lower is better; "
    "relevance (PMI under the base) and win rate: higher is better; degenerate share: lower is better."
)


def throughput_section(summary: dict) -> Section:
    section = Section("Throughput per stage", "Wall time and rows processed per second (rows in / seconds).")
    stages = [
        (
            stage,
            line["seconds"],
            line.get("rows_per_second") if is_number(line.get("rows_per_second")) else None,
        )
        for stage, line in summary.items()
        if isinstance(line, dict) and is_number(line.get("seconds"))
    ]
    if stages:
        title = "Time and throughput per stage"
        section.plots.append(Plot("stages", title, plots.stage_throughput(stages, title)))
    else:
        section.notes.append("No stage has finished yet (summary.json is missing or empty).")
    return section


def sft_section(run: Path) -> Section:
    section = Section(
        "Supervised fine-tuning", "Training loss of each model (cross-entropy on response tokens)."
    )
    folders = sorted(p for p in (run / "models").glob("*") if p.is_dir())
    series = [plots.Series(f.name, *curve(read_jsonl(f / "metrics.jsonl"), "loss")) for f in folders]
    series = [s for s in series if s.steps]
    if series:
        title = "SFT training loss per model"
        section.plots.append(
            Plot("sft_loss", title, plots.step_lines(series, title, "loss (nats per token)"))
        )
    else:
        section.notes.append("No model has logged a training loss yet (models/*/metrics.jsonl).")
    return section


def settings_section(run: Path) -> Section:
    """The settings on the newest model's card: they are the run's, the same for every model."""
    section = Section("Run settings", "As recorded in the model card (README.md) of the newest model.")
    cards = sorted(
        (run / "models").glob("M*/README.md"), key=lambda p: (p.parent.name != "Myx", p.parent.name)
    )
    settings = card_tables(cards[-1]).get("Training hyper-parameters") if cards else None
    if settings:
        section.tables.append(
            key_value_table(settings, f"{cards[-1].parent.name}: training hyper-parameters")
        )
    else:
        section.notes.append("No model card yet: written when the first model finishes training.")
    return section


def details_section(summary: dict) -> Section:
    """Every stage's own counts (filters, drops, settings), as summary.json records them."""
    section = Section("Stage details", "What each stage counted, besides rows in and out.")
    details = [
        [stage, key, cell(value)]
        for stage, line in summary.items()
        if isinstance(line, dict)
        for key, value in line.items()
        if key not in COUNTS
    ]
    if details:
        section.tables.append(Table(["stage", "detail", "value"], details, "summary.json"))
    return section


def backtranslation_sections(run: Path) -> list[Section]:
    lines = (read_json(run / "summary.json") or {}).items()
    summary = {current_name(name): line for name, line in lines if isinstance(line, dict)}
    results = read_json(run / "eval_results.json")
    evaluation = evaluation_section(
        ordered(numeric_results(results, skip=("intervals", "comparisons")), MODELS),
        "Evaluation: base, M0, M1, M2",
        "Each model on every evaluation in eval_results.json.",
        "No evaluations yet: this run folder has no eval_results.json.",
    )
    folder = run / "evaluation"
    answers = answers_section({m: folder / f"answers_{m}.parquet" for m in MODELS}, "answer")
    return [
        funnel_section(summary),
        scores_section(summary),
        evaluation,
        comparison_section(
            (results or {}).get("comparisons"),
            "M1 against M0 and the base",
            COMPARISON_INTRO,
            "No comparisons yet: written by the evaluation at the end of `run`.",
        ),
        *([answers] if answers else []),
        throughput_section(summary),
        sft_section(run),
        details_section(summary),
        settings_section(run),
    ]
