"""The evaluation at the end of `selftaught backtranslate run`: eval_results.json, cards, held-out, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from test_backtranslate_e2e import corpus, flags  # noqa: F401  (corpus is a fixture)

from selftaught.cli import main

pytestmark = pytest.mark.slow
EVAL_FLAGS = ["--eval_prompt_count", "4", "--eval_curation_pairs", "6", "--eval_max_new_tokens", "6"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_student, corpus) -> Path:  # noqa: F811
    run_dir = tmp_path_factory.mktemp("run") / "bt"
    main(["backtranslate", "run", *flags(run_dir, tiny_student, corpus), *EVAL_FLAGS])
    return run_dir


def test_eval_results_hold_every_model(evaluated_run):
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    assert set(results) == {"base", "M0", "M1", "M2"}
    assert set(results["base"]) == {"answers.mean_tokens", "answers.mean_chars"}  # no judge against itself
    for label in ("M0", "M1", "M2"):
        assert 0 <= results[label]["judge.win_rate"] <= 1 and results[label]["answers.mean_tokens"] <= 6
        counts = sum(results[label][f"judge.{k}"] for k in ("wins", "ties", "losses"))
        assert counts == 4
    for rater in ("M0", "M1"):  # the models that curate in a 2-iteration run
        assert 0 <= results[rater]["curation.auc"] <= 1
        detail = json.loads((evaluated_run / "evaluation" / f"curation_{rater}.json").read_text())
        assert detail["metrics"]["pairs"] == 6 and detail["metrics"]["auc"] == results[rater]["curation.auc"]
    assert "curation.auc" not in results["M2"]


def test_judge_prompts_and_labelled_pairs_were_never_trained_on(evaluated_run):
    seed = set(Dataset.from_parquet(str(evaluated_run / "seed" / "pairs.parquet"))["instruction"])
    answers = Dataset.from_parquet(str(evaluated_run / "evaluation" / "answers_M1.parquet"))
    curation = Dataset.from_parquet(str(evaluated_run / "evaluation" / "curation_M0.parquet"))
    assert len(answers) == 4 and not seed & set(answers["prompt"])
    assert sorted(curation["label"]) == [0, 0, 0, 1, 1, 1] and not seed & set(curation["instruction"])


def test_cards_carry_the_numbers_in_their_model_index(evaluated_run):
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    for name in ("M1", "M2"):
        card = ModelCard.load(evaluated_run / "models" / name / "README.md")
        index = {r.metric_name: r.metric_value for r in card.data.eval_results if r.task_name == "judge"}
        assert index["win_rate"] == pytest.approx(results[name]["judge.win_rate"])
        assert "How it was evaluated" in card.text


def test_rerun_reuses_every_written_evaluation(evaluated_run, tiny_student, corpus):  # noqa: F811
    written = sorted((evaluated_run / "evaluation").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in written}
    results = (evaluated_run / "eval_results.json").read_text()
    main(["backtranslate", "evaluate", *flags(evaluated_run, tiny_student, corpus), *EVAL_FLAGS])
    assert {p.name: p.stat().st_mtime_ns for p in written} == before
    assert (evaluated_run / "eval_results.json").read_text() == results
