"""The evaluation at the end of `selftaught backtranslate run`: eval_results.json, cards, held-out, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from test_backtranslate_e2e import corpus, flags  # noqa: F401  (corpus is a fixture)

from selftaught.cli import main

pytestmark = pytest.mark.slow
EVAL_FLAGS = ["--eval_prompt_count", "4", "--eval_curation_pairs", "6", "--eval_max_new_tokens", "6",
              "--eval_heldout_pairs", "5", "--curation_mode", "rubric,pmi"]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_student, corpus) -> Path:  # noqa: F811
    run_dir = tmp_path_factory.mktemp("run") / "bt"
    main(["backtranslate", "run", *flags(run_dir, tiny_student, corpus), *EVAL_FLAGS])
    return run_dir


def test_eval_results_hold_every_model_with_intervals_and_comparisons(evaluated_run, tiny_student):
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    assert set(results) == {"base", "M0", "M1", "M2", "intervals", "comparisons"}
    for label in ("base", "M0", "M1", "M2"):
        numbers = results[label]
        assert numbers["heldout_nll.per_token"] > 0 and 0 <= numbers["answers.degenerate_share"] <= 1
        assert {"relevance.pmi", "answers.distinct_2", "answers.eos_share"} <= set(numbers)
        low, high = results["intervals"][label]["heldout_nll.per_token"]
        assert low <= numbers["heldout_nll.per_token"] <= high
    assert "judge.win_rate" not in results["base"]  # no judge against itself
    for label in ("M0", "M1", "M2"):
        assert 0 <= results[label]["judge.win_rate"] <= 1 and 0 <= results[label]["judge.tie_rate"] <= 1
        detail = json.loads((evaluated_run / "evaluation" / f"judge_{label}.json").read_text())
        assert sum(detail["metrics"][k] for k in ("wins", "ties", "losses")) == 4
        base = tiny_student.name  # a local base model is named by its folder, a run's models within the run
        assert detail["models"] == {"model": f"models/{label}", "baseline": base, "judge": base}
    for rater in ("M0", "M1"):  # the models that curate in a 2-iteration run, in each of its modes
        for mode in ("rubric", "pmi"):
            assert 0 <= results[rater][f"curation ({mode}).auc"] <= 1
            detail = json.loads((evaluated_run / "evaluation" / f"curation_{mode}_{rater}.json").read_text())
            assert detail["metrics"]["pairs"] == 6 and detail["metrics"]["mode"] == mode
    assert not any(k.startswith("curation") for k in results["M2"])
    pairs = {(c["model"], c["against"]) for c in results["comparisons"]}
    assert pairs == {("M0", "base"), ("M1", "base"), ("M1", "M0"), ("M2", "base"), ("M2", "M1")}
    for c in results["comparisons"]:
        assert c["difference"] == pytest.approx(c["value"] - c["against_value"])
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1]


def test_held_out_corpus_documents_are_scored_for_every_model_and_shown_on_the_cards(evaluated_run):
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    pairs = Dataset.from_parquet(str(evaluated_run / "evaluation" / "new_domain_pairs.parquet"))
    segments = Dataset.from_parquet(str(evaluated_run / "segments" / "segments.parquet"))["text"]
    notes = [set(re.findall(r"variation number \d+\.", text)) for text in (*segments, *pairs["response"])]
    segmented, held_out = set().union(*notes[: len(segments)]), set().union(*notes[len(segments) :])
    assert held_out and not segmented & held_out  # asked about, and never segmented for augmentation
    assert all(r.startswith(("Tell me about", "Describe", "Write about")) for r in pairs["instruction"])
    for label in ("base", "M0", "M1", "M2"):
        value = results[label]["new_domain_nll.per_token"]
        low, high = results["intervals"][label]["new_domain_nll.per_token"]
        assert value > 0 and low <= value <= high
    compared = {
        (c["model"], c["against"])
        for c in results["comparisons"]
        if c["metric"] == "new_domain_nll.per_token"
    }
    assert ("M1", "M0") in compared and ("M2", "M1") in compared
    card = ModelCard.load(evaluated_run / "models" / "M1" / "README.md")
    assert "| new_domain_nll.per_token | M0 |" in card.text and "held out of augmentation" in card.text


def test_no_result_names_a_path_of_this_machine(evaluated_run):
    root = str(evaluated_run.parent.parent)  # the temporary folder everything was made in
    for path in [evaluated_run / "eval_results.json", *(evaluated_run / "evaluation").glob("*.json")]:
        assert root not in path.read_text(), path
    for name in ("M0", "M1", "M2"):
        assert root not in (evaluated_run / "models" / name / "README.md").read_text()


def test_judge_prompts_and_labelled_pairs_were_never_trained_on(evaluated_run):
    seed = set(Dataset.from_parquet(str(evaluated_run / "seed" / "pairs.parquet"))["instruction"])
    answers = Dataset.from_parquet(str(evaluated_run / "evaluation" / "answers_M1.parquet"))
    curation = Dataset.from_parquet(str(evaluated_run / "evaluation" / "curation_rubric_M0.parquet"))
    assert len(answers) == 4 and not seed & set(answers["prompt"])
    assert sorted(curation["label"]) == [0, 0, 0, 1, 1, 1] and not seed & set(curation["instruction"])


def test_cards_carry_the_numbers_in_their_model_index(evaluated_run):
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    for name in ("M1", "M2"):
        card = ModelCard.load(evaluated_run / "models" / name / "README.md")
        index = {r.metric_name: r.metric_value for r in card.data.eval_results if r.task_name == "judge"}
        assert index["win_rate"] == pytest.approx(results[name]["judge.win_rate"])
        assert "How it was evaluated" in card.text
        assert "Compared with the model before it and the base" in card.text and "95% interval" in card.text
        assert f"| heldout_nll.per_token | M{int(name[1:]) - 1} |" in card.text  # against the model before it
        assert "Why this mode" in card.text and "`pmi`" in card.text


def test_rerun_reuses_every_written_evaluation(evaluated_run, tiny_student, corpus):  # noqa: F811
    written = sorted((evaluated_run / "evaluation").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in written}
    results = (evaluated_run / "eval_results.json").read_text()
    main(["backtranslate", "evaluate", *flags(evaluated_run, tiny_student, corpus), *EVAL_FLAGS])
    assert {p.name: p.stat().st_mtime_ns for p in written} == before
    assert (evaluated_run / "eval_results.json").read_text() == results


def test_an_evaluation_rerun_with_other_settings_says_so_and_overwrite_redoes_it(
    evaluated_run,
    tiny_student,
    corpus,  # noqa: F811
    capsys,
):
    results = (evaluated_run / "eval_results.json").read_text()
    other = [*EVAL_FLAGS[:4], "--eval_max_new_tokens", "3", *EVAL_FLAGS[6:]]
    main(["backtranslate", "evaluate", *flags(evaluated_run, tiny_student, corpus), *other])
    said = capsys.readouterr().out
    assert "[evaluate] skipped" in said and "(eval_max_new_tokens: 6 then, 3 now)" in said
    assert "`selftaught backtranslate evaluate` with --overwrite" in said
    assert (evaluated_run / "eval_results.json").read_text() == results  # kept, not mixed

    main(["backtranslate", "evaluate", *flags(evaluated_run, tiny_student, corpus), *other, "--overwrite"])
    recorded = json.loads((evaluated_run / "evaluation" / "settings.json").read_text())
    assert recorded["eval_max_new_tokens"] == 3
    answers = Dataset.from_parquet(str(evaluated_run / "evaluation" / "answers_M1.parquet"))
    assert max(answers["tokens"]) <= 3  # redone with the new setting
