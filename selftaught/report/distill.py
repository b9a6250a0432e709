"""The report of a `selftaught distill` run: loss, held-out evaluation and answers, throughput, settings."""

from __future__ import annotations

from pathlib import Path

from selftaught.distill.results import DistillResults
from selftaught.report import plots
from selftaught.report.page import Plot, Section
from selftaught.report.readers import card_tables, curve, is_number, numeric_results, read_json, read_jsonl
from selftaught.report.sections import (
    answers_section,
    comparison_section,
    evaluation_section,
    key_value_table,
)

ANSWER_COLUMNS = {"teacher": "teacher", "student_before": "student before", "student_after": "student after"}
POLICY_LABELS = {1.0: "on-policy steps (student samples)", 0.0: "off-policy steps (fixed completions)"}


def objective_name(beta: str | None) -> str:
    """What the training loss is, from the run's beta (0 = forward KL, 1 = reverse KL, else JSD)."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        return "distillation loss"
    return {0.0: "forward KL", 1.0: "reverse KL"}.get(value, f"generalized JSD (beta={value:g})")


def by_policy(rows: list[dict], key: str) -> list[plots.Series]:
    """`key` over steps, one series per kind of step: on-policy, off-policy, or mixed in one log line."""
    groups: dict[str, tuple[list, list]] = {}
    for row in rows:
        if not is_number(row.get(key)) or not is_number(row.get("step")):
            continue
        share = row.get("on_policy")
        label = POLICY_LABELS.get(float(share), "mixed steps") if is_number(share) else "all steps"
        steps, values = groups.setdefault(label, ([], []))
        steps.append(row["step"])
        values.append(row[key])
    return [
        plots.Series(label, s, v, marker="o" if "on-" in label else "s") for label, (s, v) in groups.items()
    ]


def loss_section(rows: list[dict], objective: str) -> Section:
    section = Section(
        "Training loss",
        f"The loss is the {objective} between teacher and student, per completion token (nats). On-policy "
        "steps score the student's own samples; off-policy steps the data's (or teacher's) completions.",
    )
    series = by_policy(rows, "loss")
    if not series:
        section.notes.append("metrics.jsonl has no training loss yet (the run stopped before its first log).")
        return section
    title = f"Training loss over steps: {objective}"
    section.plots.append(Plot("loss", title, plots.step_lines(series, title, "loss (nats per token)")))
    others = sorted(
        {k for r in rows for k in r if k != "loss" and ("kl" in k or "jsd" in k or k == "eval_loss")}
    )
    extra = [plots.Series(key, *curve(rows, key)) for key in others]
    extra = [s for s in extra if s.steps]
    if extra:
        title = "Other logged losses and divergences"
        section.plots.append(Plot("divergences", title, plots.step_lines(extra, title, "nats per token")))
    return section


def throughput_section(rows: list[dict]) -> Section:
    section = Section(
        "Throughput",
        "Completion tokens trained on per second of wall time, per logged step (sampling included).",
    )
    series = by_policy(rows, "tokens_per_second")
    if series:
        title = "Training throughput over steps"
        section.plots.append(
            Plot("throughput", title, plots.step_lines(series, title, "completion tokens per second"))
        )
    else:
        section.notes.append("metrics.jsonl has no tokens_per_second values yet.")
    return section


def settings_section(card: dict[str, dict[str, str]], train: dict | None) -> Section:
    section = Section("Run settings", "As recorded in the model card (README.md) and by the trainer.")
    section.tables += [key_value_table(table, title) for title, table in card.items()]
    if isinstance(train, dict) and train:
        section.tables.append(key_value_table(train, "Trainer statistics (seconds, samples/s, final loss)"))
    if not section.tables:
        section.notes.append("No model card (README.md) yet: it is written when the run finishes.")
    return section


def evaluation_section_of(results: DistillResults | None) -> Section:
    """Every held-out metric of teacher and student, said plainly when there is none and why."""
    if results is None:
        missing = "No evaluation results: eval_results.json is missing (the run has not finished yet)."
    else:
        missing = (
            "No held-out evaluation: this run was trained with --eval_size 0, so no model answered held-out "
            "prompts (eval_results.json holds the training statistics only)."
        )
    section = evaluation_section(
        numeric_results(results.evaluated() if results else None),
        "Held-out evaluation: teacher, student before and after",
        "Greedy answers to the held-out prompts; distances are per token to the teacher's greedy answers. "
        "degenerate_share, distinct_2, mean_tokens and eos_share say whether each model still writes text. "
        "The answers themselves are in evaluation/*.parquet.",
        missing,
    )
    for note in (results.task_note(), results.warning) if results else ():
        if note:
            section.notes.insert(0, note)
    return section


def distill_sections(run: Path) -> list[Section]:
    rows = read_jsonl(run / "metrics.jsonl")
    written = read_json(run / "eval_results.json")
    results = DistillResults.from_json(written) if written is not None else None
    card = card_tables(run / "README.md")
    objective = objective_name(card.get("Training hyper-parameters", {}).get("beta"))
    folder = run / "evaluation"
    answers = answers_section(
        {label: folder / f"{m}.parquet" for m, label in ANSWER_COLUMNS.items()}, "completion"
    )
    return [
        loss_section(rows, objective),
        evaluation_section_of(results),
        comparison_section(
            results.comparisons if results else None,
            "Did the student get closer to its teacher?",
            "The student after training minus before, per token on the teacher's held-out answers. KL and "
            "JSD: lower is closer; top-1 agreement: higher is closer. And the share of the student's own "
            "answers that loop or are empty (degenerate share): lower is better; where the prompts have gold "
            "answers, the share it answers right (math_accuracy): the task itself.",
            "No comparison: the run has no held-out evaluation after training.",
        ),
        *([answers] if answers else []),
        throughput_section(rows),
        settings_section(card, results.train if results else None),
    ]
