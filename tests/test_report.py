"""`selftaught report RUN_DIR`: one self-contained page per run, checked in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from selftaught.backtranslate.card import backtranslation_card
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.runfolder import RunFolder, record
from selftaught.cli import main
from selftaught.data.loading import DataError
from selftaught.data.shards import write_parquet
from selftaught.distill.card import distillation_card
from selftaught.distill.config import DistillConfig
from selftaught.distill.results import DistillResults
from selftaught.report import detect_kind, write_report
from selftaught.report.distill import by_policy
from selftaught.report.sections import direction_hints
from selftaught.training.model_card import write_model_card
from selftaught.training.sft import SFTSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DISTILL_RESULTS = {
    "teacher": {"math_accuracy": 0.5, "mean_tokens": 40.0, "degenerate_share": 0.0},
    "student_before": {"math_accuracy": 0.125, "forward_kl": 3.2, "jsd": 0.41, "top1_agreement": 0.2,
                       "degenerate_share": 0.0},
    "student_after": {"math_accuracy": 0.25, "forward_kl": 1.7, "jsd": 0.22, "top1_agreement": 0.45,
                      "degenerate_share": 0.5},
    "warning": "Warning: 50% of the trained model's held-out answers are degenerate (empty, whitespace or "
    "looping), against 0% before training.",
    "train": {"train_runtime": 12.5, "train_loss": 0.31},
    "comparisons": [
        {"model": "student_after", "against": "student_before", "metric": "forward_kl", "value": 1.7,
         "against_value": 3.2, "difference": -1.5, "ci95": [-2.0, -1.1], "items": 4},
        {"model": "student_after", "against": "student_before", "metric": "top1_agreement", "value": 0.45,
         "against_value": 0.2, "difference": 0.25, "ci95": [-0.05, 0.5], "items": 4},
    ],
}  # fmt: skip
DISTILL_FIGURES = {"loss", "evaluation", "throughput", "compare_forward_kl", "compare_top1_agreement"}
# Each model's greedy answers to two held-out prompts, as `HeldOutEvaluation` saves them.
DISTILL_ANSWERS = {
    "teacher": ["The sum is $\\boxed{5}$.", "<b>4</b> & more"],
    "student_before": ["2 + 3 = 5, so $\\boxed{5}$.", "It is 4."],
    "student_after": [" " * 128, "the the the " * 60],
}
BACKTRANSLATE_RESULTS = {
    "base": {"heldout_nll.per_token": 2.0, "answers.mean_tokens": 120.0},
    "M0": {"judge.win_rate": 0.55, "answers.mean_tokens": 98.0, "curation (pmi).auc": 0.92},
    "M1": {"judge.win_rate": 0.6, "answers.mean_tokens": 104.0, "curation (pmi).auc": 0.93},
    "M2": {"judge.win_rate": 0.66, "answers.mean_tokens": 110.0},
    "intervals": {"M1": {"judge.win_rate": [0.4, 0.8]}},
    "comparisons": [
        {
            "model": "M1",
            "against": "M0",
            "metric": "heldout_nll.per_token",
            "value": 1.8,
            "against_value": 1.9,
            "difference": -0.1,
            "ci95": [-0.15, -0.05],
            "items": 21,
        },
        {
            "model": "M1",
            "against": "base",
            "metric": "judge.win_rate",
            "value": 0.6,
            "against_value": 0.5,
            "difference": 0.1,
            "ci95": [-0.1, 0.3],
            "items": 16,
        },
    ],
}


def write_jsonl_lines(path: Path, rows: list[dict], torn_tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn_tail)


def distill_run(folder: Path, results: dict = DISTILL_RESULTS) -> Path:
    """A finished distillation folder as the recipe leaves it, its card written by the real card code."""
    config = DistillConfig(output_dir=str(folder), student="s", teacher="t", data="d", report_to="none")
    steps = [
        {
            "step": s,
            "loss": 0.6 - 0.01 * s if s % 2 else 0.3 - 0.01 * s,
            "on_policy": float(s % 2 == 0),
            "tokens_per_second": 50.0 + s,
            "completion_tokens": 100,
        }
        for s in range(1, 9)
    ]
    write_jsonl_lines(folder / "metrics.jsonl", [*steps, {"step": 8, "train_loss": 0.4}])
    (folder / "eval_results.json").write_text(json.dumps(results))
    for name, answers in DISTILL_ANSWERS.items():
        rows = [
            {"prompt": prompt, "completion": answer, "completion_ids": [1, 2], "gold_answer": None}
            for prompt, answer in zip(["What is 2 + 3?", "What is 2 + 2?"], answers, strict=True)
        ]
        write_parquet(folder / "evaluation" / f"{name}.parquet", rows)
    write_model_card(folder, distillation_card(config, DistillResults.from_json(results), (16, 16), 4))
    return folder


def test_a_teacher_that_cannot_do_the_task_is_said_to_teach_closeness_not_skill(tmp_path):
    """The demo's teacher gets no MATH problem right: its card and report say that the distances then
    measure closeness to it, not skill, and point at the task-level bench; a teacher at half right does not
    get the note."""
    unskilled = DISTILL_RESULTS | {"teacher": DISTILL_RESULTS["teacher"] | {"math_accuracy": 0.0}}
    for name, results, said in (("unskilled", unskilled, True), ("skilled", DISTILL_RESULTS, False)):
        run = distill_run(tmp_path / name, results)
        page = write_report(run).read_text()
        card = (run / "README.md").read_text()
        assert ("## Closeness is not task skill here" in card) is said
        assert ("The teacher answers 0% of the held-out problems right" in page) is said
        assert ("bench/task_fidelity.py" in card) is said


def backtranslate_run(folder: Path, results: dict | None = BACKTRANSLATE_RESULTS) -> Path:
    """A two-iteration backtranslation folder: summary.json through the recipe's own `record`."""
    run = RunFolder(folder)
    record(run, "seed", 40, 12, 0.1, {}, non_english=3)
    record(run, "segment", 5, 30, 0.2, {"min_chars": 600}, corpus="<script>alert(1)</script>")
    record(run, "augment", 30, 28, 9.0, {}, empty_instructions=2)
    for k, kept in ((1, 6), (2, 11)):
        hist = {"-0.50": 2, "-0.25": 3, "0.00": 5, "0.25": 12 - kept, "0.50": kept + 6}
        chosen = {b: n if b >= "0.25" else 0 for b, n in hist.items()}
        record(run, f"curate_{k}", 28, 28, 8.0, {"curation_mode": "pmi"})
        record(run, f"select_{k}", 28, kept, 0.01, {}, rule="pmi >= 0.25", score="pmi (pmi)",
               score_histogram=hist, kept_histogram=chosen)  # fmt: skip
    config, settings = BacktranslateConfig(run_dir=str(folder), base_model="base"), SFTSettings()
    for k, name in enumerate(("M0", "Myx", "M1", "M2")):
        write_jsonl_lines(
            run.model(name) / "metrics.jsonl", [{"step": s, "loss": 3.0 - 0.2 * s} for s in (1, 2, 3)]
        )
        write_model_card(
            run.model(name), backtranslation_card(config, settings, name, k, {"seed pairs": 12}, {})
        )
    for name, answer in (("base", "Paris is the capital."), ("M0", "Paris."), ("M1", "la la la " * 30)):
        rows = [
            {
                "prompt": "What is the capital of France?",
                "answer": answer,
                "tokens": 3,
                "ended_with_eos": True,
            }
        ]
        write_parquet(folder / "evaluation" / f"answers_{name}.parquet", rows)
    if results is not None:
        (folder / "eval_results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (never `playwright install`: it downloads a browser)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "Debian's chromium is not installed; `make test` installs it"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


def open_in_browser(browser, page_path: Path) -> tuple[list[str], list[dict], str]:
    """Every request the page made, each <img>'s load state and size, and the visible text."""
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(page_path.resolve().as_uri(), wait_until="load")
    images = page.evaluate(
        "[...document.images].map(i => ({src: i.src.slice(0, 22), complete: i.complete, "
        "width: i.naturalWidth}))"
    )
    text = page.inner_text("body")
    page.close()
    return requests, images, text


def assert_self_contained(browser, page_path: Path, figures: set[str]) -> str:
    requests, images, text = open_in_browser(browser, page_path)
    assert requests == [page_path.resolve().as_uri()]  # nothing fetched but the page itself
    assert len(images) == len(figures)
    assert all(i["complete"] and i["width"] > 0 and i["src"] == "data:image/png;base64," for i in images)
    pngs = {p.stem: p.read_bytes() for p in page_path.parent.glob("*.png")}
    assert set(pngs) == figures and all(png.startswith(PNG_MAGIC) for png in pngs.values())
    return text


def test_distillation_report_opens_in_a_browser_with_every_figure(tmp_path, browser):
    run = distill_run(tmp_path / "distill")
    assert detect_kind(run) == "distillation"
    page = write_report(run)
    assert page == run / "report" / "index.html"
    text = assert_self_contained(browser, page, DISTILL_FIGURES)
    for expected in ("jsd", "forward_kl", "student_after", "teacher", "lmbda", "train_runtime"):
        assert expected in text
    # how the student moved, with intervals: one that moved, one the held-out set cannot tell apart
    assert "Did the student get closer to its teacher?" in text
    assert "[-2, -1.1]" in text and "differ" in text and "cannot tell apart" in text
    card = (run / "README.md").read_text()
    assert (
        "## Closer to the teacher?" in card and "| forward_kl | student_before | 1.7 | 3.2 | -1.5 |" in card
    )
    assert "generalized JSD (beta=0.5)" in page.read_text()  # the loss is named from the run's beta
    assert DISTILL_RESULTS["warning"] in text  # the collapse, said where the numbers are
    assert str(tmp_path) not in page.read_text()  # the run by its folder's name, never a path


def test_distillation_report_shows_the_answers_side_by_side_escaped_and_cut(tmp_path, browser):
    page = write_report(distill_run(tmp_path / "distill"))
    text = assert_self_contained(browser, page, DISTILL_FIGURES)
    assert "Held-out answers, side by side" in text
    assert "What is 2 + 3?" in text and "The sum is $\\boxed{5}$." in text and "It is 4." in text
    assert "<b>4</b> & more" in text and "<b>4</b>" not in page.read_text()  # shown as text, not markup
    assert "[empty or whitespace only: 128 characters]" in text  # what a reader could not see
    assert "[degenerate] the the the" in text and "more]" in text  # the loop, cut to its first characters


def test_a_distillation_without_a_held_out_split_says_there_is_no_evaluation(tmp_path):
    run = distill_run(tmp_path / "distill")
    shutil.rmtree(run / "evaluation")
    (run / "eval_results.json").write_text(json.dumps({"train": DISTILL_RESULTS["train"]}))
    html = write_report(run).read_text()
    assert "No held-out evaluation" in html and "--eval_size 0" in html
    assert "eval_results.json is missing" not in html
    assert "Held-out answers" not in html


def test_on_policy_and_off_policy_steps_are_drawn_apart():
    rows = [{"step": s, "loss": 0.1 * s, "on_policy": float(s % 2)} for s in range(1, 7)]
    rows += [{"step": 7, "loss": 0.2, "on_policy": 0.5}, {"step": 7, "train_loss": 0.3}]
    series = {s.label.split(" ")[0]: list(s.steps) for s in by_policy(rows, "loss")}
    assert series == {"on-policy": [1, 3, 5], "off-policy": [2, 4, 6], "mixed": [7]}


def test_backtranslation_report_shows_funnel_scores_evaluations_and_escapes_corpus_text(tmp_path, browser):
    run = backtranslate_run(tmp_path / "bt")
    assert detect_kind(run) == "backtranslation"
    page = write_report(run)
    figures = {"funnel", "scores", "evaluation", "stages", "sft_loss"}
    figures |= {"compare_heldout_nll_per_token", "compare_judge_win_rate"}
    text = assert_self_contained(browser, page, figures)
    for expected in ("M2", "base", "curation (pmi).auc", "judge.win_rate", "min_chars=600", "pmi >= 0.25"):
        assert expected in text
    assert str(tmp_path) not in page.read_text() and "run folder bt" in text  # never a path of this machine
    assert "differ" in text and "cannot tell apart" in text  # M1 vs M0 on NLL; M1 vs base by the judge
    assert "<script>alert(1)</script>" in text  # shown as text, not run
    assert "<script" not in page.read_text().replace("&lt;script", "")
    # what each model writes, side by side: M2 has no answers file and no column
    assert "Held-out answers, side by side" in text and "What is the capital of France?" in text
    assert "Paris is the capital." in text and "[degenerate] la la la" in text
    assert page.read_text().count("Paris.") == 1


def test_backtranslation_without_evaluations_says_so_and_drops_a_stale_figure(tmp_path):
    run = backtranslate_run(tmp_path / "bt")
    write_report(run)
    assert (run / "report" / "evaluation.png").exists()
    (run / "eval_results.json").unlink()
    html = write_report(run).read_text()
    assert "No evaluations yet" in html
    assert not (run / "report" / "evaluation.png").exists()


def test_a_run_stopped_midway_still_gives_a_page(tmp_path, browser):
    distill = tmp_path / "distill"  # killed during its first steps: a torn last line, no results, no card
    write_jsonl_lines(
        distill / "metrics.jsonl", [{"step": 1, "loss": 0.5, "on_policy": 1.0}], '{"step": 2, "lo'
    )
    (distill / "evaluation").mkdir()
    text = assert_self_contained(browser, write_report(distill), {"loss"})
    assert "eval_results.json is missing" in text and "No model card" in text

    bt = tmp_path / "bt"  # only the seed stage finished; the evaluation file half written
    record(RunFolder(bt), "seed", 40, 12, 0.1, {})
    (bt / "eval_results.json").write_text('{"M0": {"win')
    text = assert_self_contained(browser, write_report(bt), {"stages"})
    assert "No corpus stage has finished yet" in text and "No evaluations yet" in text


def test_cli_writes_the_report_and_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    run = distill_run(tmp_path / "distill")
    main(["report", str(run)])
    assert str(run / "report" / "index.html") in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a selftaught run folder"):
        write_report(tmp_path / "empty")
    with pytest.raises(SystemExit) as stopped:
        main(["report", str(tmp_path / "missing")])
    assert stopped.value.code == 2 and "no such run folder" in capsys.readouterr().err


def test_every_panel_with_a_better_way_says_which():
    """The degeneration and likelihood panels said nothing while the distance panels beside them said
    'lower is better': a reader had to guess which way degenerate_share or heldout_nll should move."""
    hints = direction_hints(
        ["degenerate_share", "answers.distinct_2", "heldout_nll.per_token", "math_unverifiable", "forward_kl"]
        + ["boxed_share", "mean_tokens", "eos_share"]
    )
    assert hints == {
        "degenerate_share": "lower is better",
        "answers.distinct_2": "higher is better",
        "heldout_nll.per_token": "lower is better",
        "math_unverifiable": "lower is better",
        "forward_kl": "lower is better",
        "boxed_share": "higher is better",
    }  # mean length and EOS share have no better way: they are read against the teacher's
