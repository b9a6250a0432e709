"""The data engine: row shapes -> chat prompts and completions, tokenisation, loading, bad-input errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from datasets import Dataset

import selftaught.data.loading as loading
from selftaught.data.formats import (
    MATH_INSTRUCTION,
    Example,
    to_examples,
    tokenize_completion,
    tokenize_examples,
    tokenize_prompt,
)
from selftaught.data.loading import DataError, available_splits, load_rows

# --- row shapes -------------------------------------------------------------------------------------


def examples_of(rows: list[dict]) -> list[Example]:
    return to_examples(Dataset.from_list(rows), "rows.jsonl")


def test_math_row_becomes_problem_plus_instruction():
    row = {"problem": "  What is 2 + 3?\n", "solution": "2 + 3 = 5, so $\\boxed{5}$.", "answer": "5"}
    (example,) = examples_of([row])
    assert MATH_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert example.prompt == [{"role": "user", "content": f"What is 2 + 3?\n{MATH_INSTRUCTION}"}]
    assert example.completion == row["solution"]
    assert example.answer == "5"


def test_math_row_without_solution_or_answer_is_prompt_only():
    (example,) = examples_of([{"problem": "Compute 7 * 6.", "solution": None, "answer": ""}])
    assert "Compute 7 * 6." in example.prompt[0]["content"]
    assert example.completion is None
    assert example.answer is None


def test_numeric_math_answer_becomes_text():
    (example,) = examples_of([{"problem": "1 + 1?", "answer": 2}])
    assert example.answer == "2"


def test_chat_row_last_assistant_turn_is_the_completion():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
    ]
    (example,) = examples_of([{"messages": messages}])
    assert example.prompt == messages[:-1]
    assert example.completion == "Seven."


def test_chat_row_ending_on_a_user_turn_is_prompt_only():
    messages = [{"role": "user", "content": "Name a prime."}]
    (example,) = examples_of([{"messages": messages}])
    assert example.prompt == messages
    assert example.completion is None


def test_prompt_completion_strings():
    (example,) = examples_of([{"prompt": "Say hi.", "completion": "Hi!"}])
    assert example.prompt == [{"role": "user", "content": "Say hi."}]
    assert example.completion == "Hi!"


def test_prompt_completion_as_message_lists():
    prompt = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi."}]
    completion = [{"role": "assistant", "content": "Hi!"}]
    (example,) = examples_of([{"prompt": prompt, "completion": completion}])
    assert example.prompt == prompt
    assert example.completion == "Hi!"


def test_prompt_only_rows():
    examples = examples_of([{"prompt": "Tell a joke."}, {"prompt": "Tell a story."}])
    assert [e.prompt[0]["content"] for e in examples] == ["Tell a joke.", "Tell a story."]
    assert all(e.completion is None for e in examples)


def test_blank_completion_counts_as_none():
    (example,) = examples_of([{"prompt": "Say hi.", "completion": "   "}])
    assert example.completion is None


# --- tokenisation -----------------------------------------------------------------------------------


PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi."}],
]


def assistant_header(tokenizer, prompt: list[dict[str, str]]) -> str:
    """The text the chat template appends to a conversation to open the assistant's reply."""
    with_header = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    without = tokenizer.apply_chat_template(prompt, add_generation_prompt=False, tokenize=False)
    assert with_header.startswith(without)
    return with_header[len(without) :]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_ids_end_with_the_assistant_header(tokenizer, prompt):
    ids = tokenize_prompt(tokenizer, prompt)
    header = assistant_header(tokenizer, prompt)
    assert "assistant" in header
    assert all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids).endswith(header)
    assert prompt[-1]["content"] in tokenizer.decode(ids)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("completion", ["5", "The answer is $\\boxed{5}$.\n\nDone."])
def test_completion_ids_are_the_text_then_eos_and_nothing_after(tokenizer, prompt, completion):
    prompt_ids = tokenize_prompt(tokenizer, prompt)
    ids = tokenize_completion(tokenizer, prompt, completion, prompt_ids)
    assert ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids) == completion + tokenizer.eos_token
    # prompt + completion is exactly what the template renders for the whole conversation, up to the EOS
    full = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": completion}], tokenize=True, return_dict=False
    )
    assert list(full[: len(prompt_ids) + len(ids)]) == prompt_ids + ids


def test_tokenize_examples_truncates_prompts_left_and_completions_right(tokenizer):
    examples = [
        Example(prompt=PROMPTS[0], completion="The answer is five, written out in words."),
        Example(prompt=PROMPTS[1]),
    ]
    full_prompt = tokenize_prompt(tokenizer, PROMPTS[0])
    full_completion = tokenize_completion(tokenizer, PROMPTS[0], examples[0].completion, full_prompt)
    data = tokenize_examples(tokenizer, examples, max_prompt_length=6, max_completion_length=3)
    assert data[0]["prompt_ids"] == full_prompt[-6:]  # keeps the assistant header
    assert data[0]["completion_ids"] == full_completion[:3]
    assert data[1]["completion_ids"] == []


# --- loading ----------------------------------------------------------------------------------------


ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(3)]


def test_load_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    rows = load_rows(str(path))
    assert rows.to_list() == ROWS
    assert available_splits(str(path)) == ["train"]


def test_load_jsonl_tolerates_blank_lines_crlf_bom_and_unicode_separators(tmp_path):
    """Valid JSONL written on Windows (CRLF, BOM) or with raw U+2028 / U+0085 inside strings."""
    rows = [{"prompt": "one\u2028two", "completion": "three\x85four"}, {"prompt": "five"}]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n\r\n"
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    loaded = load_rows(str(path))
    assert loaded["prompt"] == ["one\u2028two", "five"]
    assert loaded["completion"] == ["three\x85four", None]


def test_a_column_of_numbers_and_text_reads_as_text(tmp_path):
    """Arrow stores one type per column: an answer 2 on one line and "4" on another are both answers."""
    rows = [
        {"problem": "1+1?", "answer": 2},
        {"problem": "2+2?", "answer": "4"},
        {"problem": "?", "answer": 2.5},
    ]
    loaded = load_rows(str(write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert loaded["answer"] == ["2", "4", "2.5"]
    assert [e.answer for e in to_examples(loaded, "rows.jsonl")] == ["2", "4", "2.5"]


def test_load_parquet_file(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert load_rows(str(path)).to_list() == ROWS
    assert available_splits(str(path)) == ["train"]


def test_load_folder_with_splits(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "data" / "test.jsonl", ROWS[2:])
    folder = str(tmp_path / "data")
    assert available_splits(folder) == ["test", "train"]
    assert load_rows(folder, "train").to_list() == ROWS[:2]
    assert load_rows(folder, "test").to_list() == ROWS[2:]
    with pytest.raises(DataError, match=r"no 'validation' split \(found \['test', 'train'\]\)"):
        load_rows(folder, "validation")


def test_folder_split_shards_and_unprefixed_files(tmp_path):
    """Hub layout: `train-00000-of-00002.parquet` shards are concatenated; unprefixed files are train."""
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[1:2]), folder / "train-00001-of-00002.parquet")
    write_jsonl(folder / "validation.jsonl", ROWS[2:])
    assert available_splits(str(folder)) == ["train", "validation"]
    assert load_rows(str(folder), "train").to_list() == ROWS[:2]
    assert load_rows(str(folder), "validation").to_list() == ROWS[2:]

    other = tmp_path / "other"
    write_jsonl(other / "mydata.jsonl", ROWS)
    assert available_splits(str(other)) == ["train"]


def test_local_paths_never_reach_the_hub(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError(f"load_dataset called for a local path: {args} {kwargs}")

    monkeypatch.setattr(loading, "load_dataset", no_hub)
    write_jsonl(tmp_path / "data" / "train.jsonl", ROWS)
    assert len(load_rows(str((tmp_path / "data").resolve()), "train")) == 3
    monkeypatch.chdir(tmp_path)
    assert len(load_rows("data", "train")) == 3  # a relative folder that exists is a folder
    assert len(load_rows("data/train.jsonl")) == 3


def test_hub_name_goes_to_load_dataset_with_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return Dataset.from_list(ROWS)

    monkeypatch.setattr(loading, "load_dataset", fake_load_dataset)
    rows = load_rows("HuggingFaceH4/MATH-500", "test", "default")
    assert rows.to_list() == ROWS
    assert calls == [(("HuggingFaceH4/MATH-500", "default"), {"split": "test"})]

    import datasets

    monkeypatch.setattr(
        datasets, "get_dataset_split_names", lambda name, config=None: [f"{name}|{config}|train"]
    )
    assert available_splits("openai/gsm8k", "main") == ["openai/gsm8k|main|train"]


# --- bad input: the error names the file, the line or row, and the fix -------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "broken"\n{"prompt": "fine"}\n')
    with pytest.raises(DataError) as err:
        load_rows(str(path))
    message = str(err.value)
    assert "train.jsonl" in message and ":3:" in message  # blank line 2 still counts
    assert "malformed JSON" in message and "fix or delete" in message


@pytest.mark.parametrize(
    "values, expected",
    [
        (["b.", ["d."]], "rows.jsonl:3: `response` is a list here but text on line 2"),
        ([{"text": "b."}, "d."], "rows.jsonl:3: `response` is text here but an object on line 2"),
    ],
)
def test_a_column_of_text_and_lists_names_the_first_row_that_differs(tmp_path, values, expected):
    rows = [{"instruction": "a?"}] + [{"instruction": "c?", "response": value} for value in values]
    with pytest.raises(DataError, match=expected):
        load_rows(str(write_jsonl(tmp_path / "rows.jsonl", rows)))


def test_a_parquet_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "rows.parquet"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match=r"rows\.parquet: not a Parquet file \(Parquet magic bytes"):
        load_rows(str(path))


@pytest.mark.parametrize("line", ["[1, 2]", '"just text"', "42", "null"])
def test_non_object_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "train.jsonl"
    path.write_text(f'{{"prompt": "ok"}}\n{line}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: expected a JSON object per line"):
        load_rows(str(path))


def test_utf16_file_is_rejected_as_not_utf8(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xff\xfe" + '{"prompt": "hi"}\n'.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"train\.jsonl:1: not UTF-8 text .*re-encode the file as UTF-8"):
        load_rows(str(path))


def test_latin1_line_names_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: not UTF-8 text"):
        load_rows(str(path))


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=r"train\.jsonl: no rows"):
        load_rows(str(path))


@pytest.mark.parametrize("bad", [{"problem": "  "}, {"problem": None}, {"solution": "x"}])
def test_missing_or_empty_problem_names_the_row(tmp_path, bad):
    """Rows are numbered from 1, like the file's lines (here, row 2 is line 2)."""
    path = write_jsonl(tmp_path / "train.jsonl", [{"problem": "1 + 1?"}, bad, {"problem": "2 + 2?"}])
    with pytest.raises(DataError) as err:
        to_examples(load_rows(str(path)), str(path))
    message = str(err.value)
    assert str(path) in message
    assert "row 2:" in message
    assert "empty `problem`" in message and "fill it in or drop the row" in message


def test_empty_prompt_names_the_row():
    with pytest.raises(DataError, match=r"rows\.jsonl, row 1: empty prompt"):
        examples_of([{"prompt": " ", "completion": "x"}])


def test_unknown_columns_list_the_accepted_shapes(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "1 + 1?", "answer": "2"}])
    with pytest.raises(DataError) as err:
        to_examples(load_rows(str(path)), str(path))
    message = str(err.value)
    assert str(path) in message and "question" in message
    for accepted in ("problem", "solution", "messages", "prompt", "completion"):
        assert f"`{accepted}`" in message


@pytest.mark.parametrize("name", ["missing.jsonl", "./missing", "{tmp}/missing", "{tmp}/missing.parquet"])
def test_nonexistent_path(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "load_dataset", lambda *a, **k: pytest.fail("asked the Hub"))
    source = name.format(tmp=tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_rows(source)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,completion\nhi,yo\n")
    with pytest.raises(DataError, match=r"rows\.csv: unsupported file type; use \.jsonl"):
        load_rows(str(path))


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"no \.jsonl, \.json or \.parquet files"):
        load_rows(str(tmp_path))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
