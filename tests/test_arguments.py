"""Every bad argument is a named error: exit 2, one line on stderr naming the flag, the file or the row, no
traceback, and nothing loaded. Each case is what a user typed; the models named are valid tiny ones, so
only the bad value can stop the command, and a model load fails the test (`no_model_loads`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl
from transformers import PreTrainedModel

from selftaught.cli import main

DISTILL = ["--student", "{model}", "--teacher", "{model}", "--data", "{math}", "--output_dir", "{out}"]
EVAL_MATH = ["--model", "{model}", "--data", "{math}", "--output_dir", "{out}"]
BACKTRANSLATE = ["--base_model", "{model}", "--seed_data", "{seed}", "--run_dir", "{out}"]

# case: (command line, words its one-line error must hold); {name} is a file of `inputs`
CASES = {
    "lmbda above 1": (["distill", *DISTILL, "--lmbda", "2"], "--lmbda must lie in [0, 1], got 2.0"),
    "negative beta": (["distill", *DISTILL, "--beta", "-1"], "--beta must lie in [0, 1], got -1.0"),
    "temperature 0": (["distill", *DISTILL, "--temperature", "0"], "--temperature must be > 0"),
    "a flag's value of the wrong type": (["distill", *DISTILL, "--lmbda", "abc"], "--lmbda: invalid float"),
    "distill batch 0": (
        ["distill", *DISTILL, "--per_device_train_batch_size", "0"],
        "--per_device_train_batch_size must be at least 1, got 0",
    ),
    "sft batch 0": (
        ["backtranslate", "train-seed", *BACKTRANSLATE, "--per_device_train_batch_size", "0"],
        "--per_device_train_batch_size must be at least 1, got 0",
    ),
    "eval batch 0": (["eval", "math", *EVAL_MATH, "--batch_size", "0"], "--batch_size must be at least 1"),
    "distill output_dir a file": (
        ["distill", *DISTILL, "--output_dir", "{file}"],
        "--output_dir {file} is a file",
    ),
    "eval output_dir a file": (["eval", "math", *EVAL_MATH, "--output_dir", "{file}"], "{file} is a file"),
    "run_dir inside a file": (
        ["backtranslate", "seed", *BACKTRANSLATE, "--run_dir", "{file}/run"],
        "--run_dir {file}/run cannot be made: {file} is a file",
    ),
    "teacher self without a context": (
        ["distill", *DISTILL, "--teacher", "self"],
        "--teacher self without --teacher_context",
    ),
    "distill unknown engine": (["distill", *DISTILL, "--engine", "foo"], "--engine must be one of"),
    "eval unknown engine": (["eval", "math", *EVAL_MATH, "--engine", "foo"], "--engine must be one of"),
    "openai without base_url": (["eval", "math", *EVAL_MATH, "--engine", "openai"], "needs --base_url"),
    "negative max_staleness": (
        ["distill", *DISTILL, "--max_staleness", "-1"],
        "--max_staleness must be >= 0",
    ),
    "max_staleness with vllm": (
        ["distill", *DISTILL, "--max_staleness", "1", "--engine", "vllm"],
        "--max_staleness 1 samples beside training with the hf engine only",
    ),
    "openai for on-policy samples": (["distill", *DISTILL, "--engine", "openai"], "cannot sample on-policy"),
    "sampled_kl on off-policy steps": (
        ["distill", *DISTILL, "--loss", "sampled_kl", "--lmbda", "0.5", "--temperature", "1"],
        "--loss sampled_kl is an unbiased reverse-KL gradient only on tokens sampled from the student",
    ),
    "sampled_kl at another temperature": (
        ["distill", *DISTILL, "--loss", "sampled_kl", "--lmbda", "1", "--temperature", "0.7"],
        "Use --lmbda 1 --temperature 1 --top_p 1, or --loss jsd",
    ),
    "kl_estimator without sampled_kl": (
        ["distill", *DISTILL, "--kl_estimator", "k3"],
        "--kl_estimator applies to --loss sampled_kl only",
    ),
    "teacher_top_k without a server": (
        ["distill", *DISTILL, "--teacher_top_k", "8"],
        "--teacher_top_k sets how many log-probabilities a served teacher returns",
    ),
    "a served teacher and teacher self": (
        [
            "distill",
            *DISTILL,
            "--teacher",
            "self",
            "--teacher_context",
            "solution",
            "--teacher_url",
            "http://x/v1",
        ],
        "--teacher self is a copy of the student in this process",
    ),
    "unknown curation mode": (
        ["backtranslate", "seed", *BACKTRANSLATE, "--curation_mode", "foo"],
        "curation_mode 'foo'",
    ),
    "YAML float for an integer": (
        ["distill", "--config", "{float_yaml}"],
        "{float_yaml}: max_steps: expected an integer, got 1.5",
    ),
    "YAML list for an integer": (
        ["distill", "--config", "{list_yaml}"],
        "{list_yaml}: max_steps: expected an integer, got [1, 2]",
    ),
    "YAML syntax": (["distill", "--config", "{broken_yaml}"], "{broken_yaml}:2: not valid YAML"),
    "YAML value out of range": (
        ["distill", "--config", "{lmbda_yaml}"],
        "--lmbda must lie in [0, 1], got 2.0 ({lmbda_yaml}: lmbda: 2.0)",
    ),
    "binary .parquet": (
        ["distill", *DISTILL, "--data", "{binary_parquet}"],
        "{binary_parquet}: not a Parquet file",
    ),
    "a response that is text, then a list": (
        ["backtranslate", "seed", *BACKTRANSLATE, "--seed_data", "{mixed_responses}"],
        "{mixed_responses}:2: `response` is a list here but text on line 1",
    ),
    "distill max_steps 0": (["distill", *DISTILL, "--max_steps", "0"], "--max_steps 0 trains nothing"),
    "sft max_steps 0": (
        ["backtranslate", "train-seed", *BACKTRANSLATE, "--max_steps", "0"],
        "--max_steps 0 trains nothing",
    ),
    "pass@k beyond the samples": (
        ["eval", "math", *EVAL_MATH, "--samples", "2", "--pass_k", "1,8"],
        "pass@k needs k <= --samples, and --samples is 2",
    ),
    "limit 0": (["eval", "math", *EVAL_MATH, "--limit", "0"], "--limit 0 would evaluate no row"),
    "a prompt longer than the model's context": (
        ["eval", "math", *EVAL_MATH, "--data", "{long_problem}"],
        "longer than the model's context of 512 tokens, rows long-one (",
    ),
    "report without a run folder": (["report"], "the following arguments are required: run_dir"),
}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: each refusal must come before one (a tokenizer or a config may load)."""

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad argument was refused")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(load))


@pytest.fixture
def inputs(tmp_path, tiny_student) -> dict[str, str]:
    """The files the cases name: good ones (a model, math rows, seed pairs) and bad ones."""
    math = write_jsonl(tmp_path / "math.jsonl", [{"problem": "1+1?", "solution": "2", "answer": "2"}] * 4)
    seed = write_jsonl(tmp_path / "seed.jsonl", [{"instruction": "Hi?", "response": "Hello."}] * 4)
    model = {"student": str(tiny_student), "teacher": str(tiny_student), "data": str(math)}
    words = " ".join(["word"] * 20_000)
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "broken.yaml").write_text("max_steps: 3\n  lmbda: : [\n")
    (tmp_path / "binary.parquet").write_bytes(bytes(range(256)))
    return {
        "model": str(tiny_student),
        "math": str(math),
        "seed": str(seed),
        "out": str(tmp_path / "out"),
        "file": str(tmp_path / "a_file"),
        "float_yaml": write_yaml(tmp_path / "float.yaml", model | {"max_steps": 1.5}),
        "list_yaml": write_yaml(tmp_path / "list.yaml", model | {"max_steps": [1, 2]}),
        "lmbda_yaml": write_yaml(tmp_path / "lmbda.yaml", model | {"lmbda": 2}),
        "broken_yaml": str(tmp_path / "broken.yaml"),
        "binary_parquet": str(tmp_path / "binary.parquet"),
        "mixed_responses": str(
            write_jsonl(
                tmp_path / "pairs.jsonl",
                [{"instruction": "a?", "response": "b."}, {"instruction": "c?", "response": ["d."]}],
            )
        ),
        "long_problem": str(
            write_jsonl(
                tmp_path / "long.jsonl",
                [
                    {"problem": "1+1?", "answer": "2", "id": "short-one"},
                    {"problem": f"{words} What is 1+1?", "answer": "2", "id": "long-one"},
                ],
            )
        ),
    }


def write_yaml(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def refusal(argv: list[str], capsys) -> str:
    """The one line a refused command writes; it must exit 2 and write nothing else to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"selftaught {argv[0]}") and ": error: " in lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_argument_is_one_named_line_before_any_model_loads(case, inputs, capsys, no_model_loads):
    argv, expected = CASES[case]
    line = refusal([arg.format(**inputs) for arg in argv], capsys)
    assert expected.format(**inputs) in line
    assert not Path(inputs["out"]).exists()  # nothing written


@pytest.mark.parametrize(
    "argv",
    [["distill", *DISTILL], ["eval", "math", *EVAL_MATH], ["backtranslate", "seed", *BACKTRANSLATE]],
    ids=["distill", "eval", "backtranslate"],
)
def test_engine_vllm_without_vllm_names_the_extras(argv, inputs, capsys, monkeypatch, no_model_loads):
    """vLLM is installed here: hide it as an uninstalled package looks (its import fails)."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    line = refusal([arg.format(**inputs) for arg in argv] + ["--engine", "vllm"], capsys)
    assert r"needs vLLM, which is not installed: pip install selftaught[vllm]" in line


def test_a_long_prompt_cut_by_max_prompt_length_is_counted(inputs, tmp_path, capsys):
    out = tmp_path / "eval"
    main(["eval", "math", "--model", inputs["model"], "--data", inputs["long_problem"],
          "--output_dir", str(out), "--max_new_tokens", "2", "--max_prompt_length", "400"])  # fmt: skip
    assert "1 of 2 prompts cut to their last 400 tokens (--max_prompt_length)" in capsys.readouterr().out
    assert json.loads((out / "math.json").read_text())["metrics"]["problems"] == 2


def test_samples_without_pass_k_report_pass_at_1_and_at_the_samples(inputs, tmp_path):
    out = tmp_path / "eval"
    main(["eval", "math", "--model", inputs["model"], "--data", inputs["math"], "--output_dir", str(out),
          "--max_new_tokens", "2", "--samples", "2"])  # fmt: skip
    metrics = json.loads((out / "math.json").read_text())["metrics"]
    assert {k for k in metrics if k.startswith("pass@")} == {"pass@1", "pass@2"}
