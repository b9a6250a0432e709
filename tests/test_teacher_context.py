"""`--teacher_context`: which text the teacher reads, where it goes, and the errors for bad input."""

from __future__ import annotations

import pytest
from datasets import Dataset

from selftaught.data.formats import Example, tokenize_examples, tokenize_prompt
from selftaught.data.loading import DataError
from selftaught.distill.context import add_teacher_context, context_columns, with_context

ROWS = Dataset.from_list(
    [
        {"problem": "What is 2 + 3?", "solution": "2 + 3 = 5, so $\\boxed{5}$.", "answer": "5"},
        {"problem": "What is 4 - 1?", "solution": "4 - 1 = 3.", "answer": "3"},
    ]
)


def examples() -> list[Example]:
    return [Example([{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["problem"]}])
            for r in ROWS]  # fmt: skip


def test_a_column_or_a_template_names_the_context():
    assert context_columns("solution") == ["solution"]
    assert context_columns("Reference: {solution} (answer {answer})") == ["solution", "answer"]
    assert context_columns("Braces {{kept}}: {solution}") == ["solution"]
    with pytest.raises(DataError, match="every \\{field\\} must name a column"):
        context_columns("Reference: {} {0}")


def test_the_context_goes_after_the_problem_in_the_users_turn_only():
    [first, second] = add_teacher_context(examples(), ROWS, "Reference: {solution}", "data.jsonl")
    assert first.prompt == examples()[0].prompt  # the student's prompt is untouched
    assert first.teacher_prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?\n\nReference: 2 + 3 = 5, so $\\boxed{5}$."},
    ]
    assert second.teacher_prompt[-1]["content"] == "What is 4 - 1?\n\nReference: 4 - 1 = 3."
    [by_column, _] = add_teacher_context(examples(), ROWS, "answer", "data.jsonl")
    assert by_column.teacher_prompt[-1]["content"] == "What is 2 + 3?\n\n5"


def test_an_empty_context_leaves_the_teachers_prompt_equal_to_the_students():
    prompt = examples()[0].prompt
    assert with_context(prompt, "") == prompt and with_context(prompt, "  \n") == prompt


def test_teacher_prompt_ids_are_tokenized_alongside(tokenizer):
    with_context_examples = add_teacher_context(examples(), ROWS, "solution", "data.jsonl")
    data = tokenize_examples(tokenizer, with_context_examples, 512, 32)
    assert data["prompt_ids"][0] == tokenize_prompt(tokenizer, examples()[0].prompt)
    assert data["teacher_prompt_ids"][0] == tokenize_prompt(
        tokenizer, with_context_examples[0].teacher_prompt
    )
    assert "teacher_prompt_ids" not in tokenize_examples(tokenizer, examples(), 512, 32).column_names


def test_a_missing_column_is_named_with_the_columns_there_are():
    with pytest.raises(DataError, match=r"data.jsonl: --teacher_context .* needs column\(s\) \['hint'\]"):
        add_teacher_context(examples(), ROWS, "Hint: {hint}", "data.jsonl")


def test_a_row_without_a_value_is_named():
    rows = Dataset.from_list([{"problem": "a", "solution": "s"}, {"problem": "b", "solution": None}])
    with pytest.raises(DataError, match=r"data.jsonl, row 2: no value in column\(s\) \['solution'\]"):
        add_teacher_context(examples(), rows, "solution", "data.jsonl")
