"""`selftaught eval` on the generation engines: judge, math and curation through a real llama.cpp server.

The server (tests/servers.py) serves the SmolLM2 GGUF; the local folder of the embedded model gives the
tokenizer and chat template, as a user's own folder would.
"""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl
from datasets import Dataset
from servers import SERVED

from selftaught.cli import main, parse_config
from selftaught.evaluate.config import CurationEvalConfig, DistanceEvalConfig, JudgeEvalConfig, MathEvalConfig
from selftaught.models.embedded import embedded_teacher
from selftaught.models.naming import model_label

pytest.importorskip("xllamacpp")
pytest_plugins = ("servers",)  # its `server_url` fixture

MATH_ROWS = [
    {"problem": "What is $2+3$?", "answer": "5", "subject": "Prealgebra", "level": 1},
    {"problem": "Find $x$ if $2x=8$.", "answer": "4", "subject": "Algebra", "level": 1},
]
# Two identical requests to the server can differ a little (measured: 0.008 in J's P(answer 1 is better)
# for one judge prompt sent twice): llama.cpp's numerics depend on how it batches and caches requests.
SERVER_NOISE = 0.05


@pytest.fixture(scope="module")
def local_model() -> str:
    return str(embedded_teacher())


def served(server_url: str) -> list[str]:
    """The flags that send an evaluation to the test server."""
    return ["--engine", "openai", "--base_url", server_url, "--served_model", SERVED, "--max_concurrency=2"]


@pytest.mark.slow  # about 5 s alone, 40-55 s on a busy 2-core machine (prompt processing)
def test_eval_judge_through_the_server_ties_a_model_with_itself(tmp_path, server_url, local_model):
    """A = B = J = the served model: the same greedy answers, so each pair is one prompt in both orders and
    the two verdicts must cancel (a real check of the engine path and of the order swap)."""
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"instruction": "What is the capital of France?"}, {"instruction": "Name a famous painter."}],
    )
    out = tmp_path / "eval"
    models = ["--model", local_model, "--baseline", local_model, "--judge", local_model]
    main(["eval", "judge", *models, "--prompts", str(prompts), "--output_dir", str(out),
          "--max_new_tokens", "16", *served(server_url), "--api_key", "sk-secret"])  # fmt: skip
    result = json.loads((out / "judge.json").read_text())
    name = f"openai:{server_url}/{SERVED}"
    assert result["models"] == {"model": name, "baseline": name, "judge": name}
    assert result["settings"]["engine"] == "openai" and "sk-secret" not in json.dumps(result)
    rows = Dataset.from_parquet(str(out / "judge_predictions.parquet")).to_list()
    for row in rows:
        assert row["answer_model"] == row["answer_baseline"] != ""
        assert 0 < row["tokens_model"] <= 16
        assert row["p_model_first"] + row["p_model_second"] == pytest.approx(1.0, abs=SERVER_NOISE)
        assert 0 < row["p_model_first"] < 1 and row["outcome"] == "tie"
    assert result["metrics"]["win_rate"] == 0.5 and result["metrics"]["ties"] == 2


def test_eval_math_through_the_server_saves_every_prediction_and_repeats_its_samples(
    tmp_path, server_url, local_model
):
    data = write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    runs = []
    for out in (tmp_path / "first", tmp_path / "again"):
        main(["eval", "math", "--model", local_model, "--data", str(data), "--output_dir", str(out),
              "--max_new_tokens", "12", "--samples", "2", "--pass_k", "1,2", "--temperature", "1.0",
              *served(server_url)])  # fmt: skip
        runs.append(Dataset.from_parquet(str(out / "math_predictions.parquet")).to_list())
    result = json.loads((tmp_path / "first" / "math.json").read_text())
    # the local model gave the tokenizer (named, never by its path); the served one answered
    assert result["models"] == {
        "model": model_label(local_model),
        "served_by": f"openai:{server_url}/{SERVED}",
    }
    assert {"pass@1", "pass@2", "by_subject"} <= set(result["metrics"])
    first, again = runs
    assert [(p["sample"], p["index"], p["gold"]) for p in first] == [
        (s, i, row["answer"]) for s in (-1, 0, 1) for i, row in enumerate(MATH_ROWS)
    ]
    assert all(p["generated"] and 0 < p["tokens"] <= 12 for p in first)
    # Sample i is drawn with seed + i: a rerun draws the same samples, the two seeds different ones.
    assert [p["generated"] for p in first] == [p["generated"] for p in again]
    assert [p["generated"] for p in first if p["sample"] == 0] != [
        p["generated"] for p in first if p["sample"] == 1
    ]


def test_eval_curation_through_the_server(tmp_path, server_url, local_model):
    rows = [
        {"instruction": "How do I boil an egg?", "response": "Boil it for nine minutes.", "label": 1},
        {"instruction": "How do I boil an egg?", "response": "BUY OUR EGG TIMER NOW!", "label": 0},
    ]
    data = write_jsonl(tmp_path / "labelled.jsonl", rows)
    out = tmp_path / "eval"
    main(["eval", "curation", "--model", local_model, "--data", str(data), "--output_dir", str(out),
          *served(server_url)])  # fmt: skip
    result = json.loads((out / "curation.json").read_text())
    assert result["models"] == {"model": f"openai:{server_url}/{SERVED}"}
    predictions = Dataset.from_parquet(str(out / "curation_predictions.parquet")).to_list()
    assert [p["label"] for p in predictions] == [1, 0]
    assert all(sum(p["score_probs"]) == pytest.approx(1.0) for p in predictions)
    assert result["metrics"]["auc"] in (0.0, 0.5, 1.0)  # one positive, one negative


def test_engine_flags_reach_the_eval_configs_except_distance(capsys):
    flags = ["--engine", "openai", "--base_url", "http://127.0.0.1:8000/v1", "--served_model", "m"]
    for config_class in (JudgeEvalConfig, MathEvalConfig, CurationEvalConfig):
        config = parse_config(config_class, flags, "selftaught eval")
        assert (config.engine, config.base_url, config.served_model) == ("openai", flags[3], "m")
    with pytest.raises(SystemExit):
        parse_config(JudgeEvalConfig, ["--engine", "openai"], "selftaught eval judge")
    assert "needs --base_url" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # distance needs full logits: hf only
        parse_config(DistanceEvalConfig, flags, "selftaught eval distance")
    assert "'--engine'" in capsys.readouterr().err
