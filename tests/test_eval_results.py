"""Evaluation results: the JSON every eval writes becomes model-index rows on a card and a flat summary."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from selftaught.cli import main
from selftaught.evaluate.config import CurationEvalConfig
from selftaught.evaluate.curation import mismatched_labels
from selftaught.evaluate.results import eval_rows, flat_metrics, read_result, write_result
from selftaught.evaluate.suite import summary_intervals, summary_numbers
from selftaught.training.model_card import CardContent, render_model_card


def judge_result(win_rate: float) -> dict:
    metrics = {"win_rate": win_rate, "win_rate_ci95": [0.3, 0.9], "tie_rate": 2 / 6, "wins": 3, "ties": 2,
               "losses": 1, "mean_tokens_model": 40.5}  # fmt: skip
    return {"task": "judge", "dataset": "held-out prompts", "models": {}, "metrics": metrics}


def test_write_result_round_trips_with_settings_and_models(tmp_path):
    config = CurationEvalConfig(output_dir=str(tmp_path), model="m", data="d.jsonl")
    metrics = {
        "auc": 0.75,
        "pmi >= 0.5": {"kept": 2, "precision": None, "recall": 0.5},
        "by_kind": {"x": {"auc": 1}},
    }
    written = write_result(tmp_path, "curation", metrics, config, {"model": "m"}, "d.jsonl")
    assert read_result(tmp_path / "curation.json") == written
    assert written["settings"]["threshold"] == 4.0 and written["models"] == {"model": "m"}
    assert written["settings"]["output_dir"] == tmp_path.name  # no path of this machine in a result
    # nested metrics flatten to dotted names, a rule's after its numbers; None (an undefined precision) is
    # left out, not written as 0
    assert flat_metrics(written) == {
        "auc": 0.75,
        "kept (pmi >= 0.5)": 2.0,
        "recall (pmi >= 0.5)": 0.5,
        "by_kind.x.auc": 1.0,
    }


def test_eval_rows_put_the_numbers_in_the_cards_model_index():
    rows = eval_rows([judge_result(0.67)]) + eval_rows([judge_result(0.5)], model="base")
    content = CardContent(
        model_name="run-M1",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        summary="s",
        method="m",
        citations=[],
        hyperparameters={},
        data={},
        results=rows,
    )
    card = ModelCard(render_model_card(content))
    index = card.data.eval_results
    assert {(r.metric_type, r.metric_value) for r in index} == {
        ("win_rate", 0.67),
        ("tie_rate", 2 / 6),
        ("wins", 3.0),
        ("ties", 2.0),
        ("losses", 1.0),
        ("mean_tokens_model", 40.5),
    }  # fmt: skip  (the base model's 0.5 is in the body table only)
    assert "| judge | held-out prompts | win_rate | 0.67 | 0.5 |" in card.text


def test_summary_numbers_keep_the_headline_of_each_task():
    curation = {
        "task": "curation (pmi)",
        "dataset": "d",
        "models": {},
        "metrics": {"auc": 0.6, "auc_ci95": [0.5, 0.7]},
    }
    results = {"base": [], "M1": [judge_result(0.6), curation]}
    numbers = summary_numbers(results)
    assert numbers["base"] == {}
    # the headline numbers only (the counts and mean_tokens_model stay in the detailed JSON); the tie rate
    # beside the win rate, so that a judge that ties everything is seen as one
    assert numbers["M1"] == {"judge.win_rate": 0.6, "judge.tie_rate": 2 / 6, "curation (pmi).auc": 0.6}
    assert summary_intervals(results) == {
        "M1": {"judge.win_rate": [0.3, 0.9], "curation (pmi).auc": [0.5, 0.7]}
    }


def test_mismatched_labels_pair_every_instruction_with_another_answer():
    pairs = [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(3)]
    labelled = mismatched_labels(pairs)
    assert sum(r["label"] for r in labelled) == 3 and len(labelled) == 6
    for row in labelled:
        own = row["response"] == "a" + row["instruction"][1:]
        assert own == (row["label"] == 1)
    assert mismatched_labels(pairs[:1]) == []


def test_eval_without_a_task_lists_the_tasks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2
    assert "{math,judge,distance,curation}" in capsys.readouterr().out
