"""Turn rows of any supported shape into chat prompts and completions, and tokenise them.

Shapes, recognised by their columns:
- math (MATH-500): `problem`, optional `solution` and `answer`;
- chat: `messages` (the last assistant turn is the completion);
- `prompt` and optional `completion` (each a string or a list of chat messages).
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from selftaught.data.loading import DataError

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# The (instruction, response) pair shapes read by `backtranslate seed` and `eval curation`.
PAIR_SHAPES = (("instruction", "response"), ("prompt", "completion"), ("instruction", "output"))


@dataclass
class Example:
    """One prompt in chat form, with the reference completion and gold answer when the row has them."""

    prompt: list[dict[str, str]]
    completion: str | None = None
    answer: str | None = None
    # The teacher's prompt when it differs from the student's: the same prompt with privileged context
    # added (self-distillation; see selftaught.distill.context). None: the teacher reads `prompt`.
    teacher_prompt: list[dict[str, str]] | None = None


def detect_shape(columns: list[str], source: str) -> str:
    if "messages" in columns:
        return "chat"
    if "problem" in columns:
        return "math"
    if "prompt" in columns:
        return "prompt"
    raise DataError(
        f"{source}: columns {columns} match no known shape; provide `problem` (+ `solution`, `answer`), "
        "`messages`, or `prompt` (+ `completion`)"
    )


def pair_shape(row: dict) -> tuple[str, str] | None:
    """The first of PAIR_SHAPES whose two fields are filled in, else the first whose keys exist at all.

    Rows of a file that mixes shapes come back from `datasets` with every key, the other shape's as None.
    """
    filled = {k for k, v in row.items() if v is not None}
    for keys in (filled, set(row)):
        if shape := next((s for s in PAIR_SHAPES if set(s) <= keys), None):
            return shape
    return None


def _as_messages(value, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty prompt; fill it in or drop the row")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return [{"role": m["role"], "content": m.get("content") or ""} for m in value]
    raise DataError(f"{where}: expected a string or a list of {{role, content}} messages, got {value!r:.80}")


def _as_text(value, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):  # chat-form completion: the assistant's words
        value = "".join(m.get("content") or "" for m in value if m.get("role") == "assistant")
    if not isinstance(value, str):
        raise DataError(f"{where}: completion must be text, got {type(value).__name__}")
    return value if value.strip() else None


def to_example(row: dict, shape: str, where: str) -> Example:
    """One row as an `Example`; `where` ("file, row N") goes into any error."""
    if shape == "math":
        problem = row.get("problem")
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{where}: empty `problem`; fill it in or drop the row")
        answer = row.get("answer")
        return Example(
            prompt=[{"role": "user", "content": f"{problem.strip()}\n{MATH_INSTRUCTION}"}],
            completion=_as_text(row.get("solution"), where),
            answer=str(answer) if answer not in (None, "") else None,
        )
    if shape == "chat":
        messages = _as_messages(row.get("messages"), where)
        if messages[-1]["role"] == "assistant":
            return Example(prompt=messages[:-1], completion=_as_text(messages[-1]["content"], where))
        return Example(prompt=messages)
    return Example(
        prompt=_as_messages(row.get("prompt"), where),
        completion=_as_text(row.get("completion"), where),
        answer=row.get("answer"),
    )


def rename_columns(rows: Dataset, renames: dict[str, str | None], source: str) -> Dataset:
    """Read the user's `{standard name: their column}` columns under the standard names."""
    mapping = {theirs: ours for ours, theirs in renames.items() if theirs and theirs != ours}
    missing = [c for c in mapping if c not in rows.column_names]
    if missing:
        raise DataError(f"{source}: no column(s) {missing}; the columns are {rows.column_names}")
    return rows.remove_columns([c for c in mapping.values() if c in rows.column_names]).rename_columns(
        mapping
    )


def to_examples(rows: Dataset, source: str) -> list[Example]:
    shape = detect_shape(rows.column_names, source)
    return [to_example(row, shape, f"{source}, row {i}") for i, row in enumerate(rows, start=1)]


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]]) -> list[int]:
    """Prompt ids through the chat template, ending where the assistant's reply begins."""
    return list(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def tokenize_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]], completion: str, prompt_ids: list[int]
) -> list[int]:
    """Completion ids as the chat template renders the reply, up to and including its EOS.

    The EOS is kept even when the tokenizer pads with it: a student that never sees it learns never
    to stop (a bug in peers that masked every pad-valued token).
    """
    full = list(
        tokenizer.apply_chat_template(
            prompt + [{"role": "assistant", "content": completion}], tokenize=True, return_dict=False
        )
    )
    if full[: len(prompt_ids)] == prompt_ids:
        ids = full[len(prompt_ids) :]
    else:  # a template that rewrites earlier turns: fall back to the bare text
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids + [eos]


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_prompt_length: int,
    max_completion_length: int,
) -> Dataset:
    """A dataset of `prompt_ids` (left-truncated) and `completion_ids` (right-truncated; [] if none), and
    `teacher_prompt_ids` (left-truncated alike) when some example's teacher has a prompt of its own."""
    with_teacher_prompts = any(e.teacher_prompt is not None for e in examples)
    records = []
    for example in examples:
        prompt_ids = tokenize_prompt(tokenizer, example.prompt)
        completion_ids = (
            tokenize_completion(tokenizer, example.prompt, example.completion, prompt_ids)
            if example.completion is not None
            else []
        )
        record = {
            "prompt_ids": prompt_ids[-max_prompt_length:],
            "completion_ids": completion_ids[:max_completion_length],
        }
        if with_teacher_prompts:
            teacher_prompt = tokenize_prompt(tokenizer, example.teacher_prompt or example.prompt)
            record["teacher_prompt_ids"] = teacher_prompt[-max_prompt_length:]
        records.append(record)
    return Dataset.from_list(records)
