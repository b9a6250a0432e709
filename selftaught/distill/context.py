"""Privileged context for the teacher: self-distillation as in On-Policy Self-Distillation (OPSD, Zhao et
al. 2026, arXiv 2601.18734).

The teacher's prompt is the student's prompt with extra text that the student never sees, typically the
reference solution: the same model, told the answer, judges each token of the student's own attempt.
`--teacher_context` names that text: a column (`solution`), or a template with `{column}` fields
(`Here is a reference solution:\\n{solution}`). It is added to the end of the prompt's last message, the
user turn that holds the problem (for math rows: after the problem and the request to box the answer),
separated by a blank line. An empty context leaves the teacher's prompt equal to the student's.
"""

from __future__ import annotations

import string
from dataclasses import replace

from datasets import Dataset

from selftaught.data.formats import Example
from selftaught.data.loading import DataError


def context_columns(template: str) -> list[str]:
    """The columns a context names: the template's `{fields}`, or the whole string as one column."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    if any(not name or not name.isidentifier() for name in fields):
        raise DataError(
            f"--teacher_context {template!r}: every {{field}} must name a column, e.g. {{solution}} "
            "(write {{ and }} for literal braces)"
        )
    return fields or [template]


def context_text(template: str, row: dict, where: str) -> str:
    """The context of one row; a missing value is an error naming the row (it would teach nothing)."""
    columns = context_columns(template)
    missing = [c for c in columns if row.get(c) is None]
    if missing:
        raise DataError(
            f"{where}: no value in column(s) {missing} for --teacher_context; fill them in or drop the row"
        )
    if columns == [template]:
        return str(row[template])
    return template.format_map({c: str(row[c]) for c in columns})


def with_context(prompt: list[dict[str, str]], context: str) -> list[dict[str, str]]:
    """`prompt` with `context` added to the end of its last message (the user's turn)."""
    if not context.strip():
        return prompt
    last = prompt[-1]
    return [*prompt[:-1], {**last, "content": f"{last['content']}\n\n{context.strip()}"}]


def add_teacher_context(examples: list[Example], rows: Dataset, template: str, source: str) -> list[Example]:
    """Each example with the teacher's own prompt: its prompt plus the row's context."""
    missing = [c for c in context_columns(template) if c not in rows.column_names]
    if missing:
        raise DataError(
            f"{source}: --teacher_context {template!r} needs column(s) {missing}; the columns are "
            f"{rows.column_names} (name one, or a template such as 'Reference: {{solution}}')"
        )
    result = []
    for number, (example, row) in enumerate(zip(examples, rows, strict=True), start=1):
        context = context_text(template, row, f"{source}, row {number}")
        result.append(replace(example, teacher_prompt=with_context(example.prompt, context)))
    return result
