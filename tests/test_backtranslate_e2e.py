"""`selftaught backtranslate`, end to end on a tiny real model: outputs, provenance, resume, SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from selftaught.cli import main
from selftaught.training.sft import COMPLETE_MARKER

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the flour. The starter is "
    "fed with equal weights of flour and water, and it is ready when it doubles within a few hours. "
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Six markdown documents with two sections each (distinct text, so no duplicates)."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        body = "\n\n".join(f"{PARAGRAPH} Note {i}.{j}: variation number {i * 10 + j}." for j in range(3))
        (folder / f"doc{i}.md").write_text(
            f"# Baking {i}\n\n{body}\n\n## More {i}\n\n{body.upper().lower()}\n"
        )
    return folder


def flags(run_dir: Path, base: Path, corpus: Path) -> list[str]:
    return [
        "--run_dir",
        str(run_dir),
        "--base_model",
        str(base),
        "--corpus",
        str(corpus),
        "--seed_size",
        "8",
        "--min_chars",
        "200",
        "--max_chars",
        "700",
        "--max_segments",
        "8",
        "--max_instruction_tokens",
        "6",
        "--shard_size",
        "2",
        "--generation_batch_size",
        "4",
        "--min_score",
        "1",
        "--iterations",
        "2",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--max_length",
        "128",
        "--learning_rate",
        "1e-3",
        "--final_learning_rate",
        "9e-4",
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_student, corpus) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "bt"
    main(["backtranslate", "run", *flags(run_dir, tiny_student, corpus)])
    return run_dir


def test_run_writes_every_stage(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    expected = {
        "seed",
        "segment",
        "augment",
        "curate_1",
        "select_1",
        "curate_2",
        "select_2",
        "train-seed",
        "train-backward",
        "train_1",
        "train_2",
    }
    assert expected <= set(summary)
    for stage in expected:
        assert {"rows_in", "rows_out", "rows_per_second"} <= set(summary[stage])
    assert summary["seed"]["rows_out"] == 8
    for name in ("M0", "Myx", "M1", "M2"):
        folder = finished_run / "models" / name
        assert (folder / "model.safetensors").is_file()
        AutoModelForCausalLM.from_pretrained(folder)
        card = ModelCard.load(folder / "README.md")
        assert "selftaught" in card.data.tags
        assert "2308.06259" in card.text


def test_rows_carry_provenance_and_load_with_datasets(finished_run):
    rated = load_dataset("parquet", data_files=str(finished_run / "iteration2" / "curate" / "*.parquet"))[
        "train"
    ]
    assert len(rated) > 0
    for row in rated:
        assert row["segment_id"] and row["source"] and row["generating_model"].endswith("Myx")
        assert row["scoring_model"].endswith("M1") and row["iteration"] == 2
        assert row["curation_mode"] == "rubric"  # every score with its model and mode
        assert abs(sum(row["score_probs"]) - 1) < 1e-4
        assert row["score_argmax"] in range(1, 6)
    first = load_dataset("parquet", data_files=str(finished_run / "iteration1" / "curate" / "*.parquet"))[
        "train"
    ]
    assert set(first["scoring_model"]) == {"models/M0"}  # named within the run: the folder may move
    selected = load_dataset("parquet", data_files=str(finished_run / "iteration1" / "selected.parquet"))[
        "train"
    ]
    assert len(selected) == len(first)  # min_score 1 keeps everything


def test_rerun_skips_finished_stages(finished_run, tiny_student, corpus):
    weights = finished_run / "models" / "M2" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (finished_run / "summary.json").read_text())
    main(["backtranslate", "run", *flags(finished_run, tiny_student, corpus)])
    assert (weights.stat().st_mtime_ns, (finished_run / "summary.json").read_text()) == before


def shard_rows(folder: Path) -> list[dict]:
    files = sorted(folder.glob("shard-*.parquet"))
    return [row for f in files for row in load_dataset("parquet", data_files=str(f))["train"]]


@pytest.mark.parametrize("stage", ["augment", "curate"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(stage, finished_run, tiny_student, corpus, tmp_path):
    """Kill the stage with SIGKILL once a shard is committed; the rerun's output equals a clean run's."""
    output = {"augment": Path("augment"), "curate": Path("iteration1") / "curate"}[stage]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}

    def command(run_dir: Path) -> list[str]:
        one_row_shards = [*flags(run_dir, tiny_student, corpus), "--shard_size", "1"]
        return [sys.executable, "-m", "selftaught.cli", "backtranslate", stage, *one_row_shards]

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for run_dir in (reference, killed):
        shutil.copytree(finished_run, run_dir)
        shutil.rmtree(run_dir / output)
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.pop({"augment": "augment", "curate": "curate_1"}[stage])
        (run_dir / "summary.json").write_text(json.dumps(summary))
    subprocess.run(command(reference), env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)

    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed / output).glob("shard-*.parquet")) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = len(list((killed / output).glob("shard-*.parquet")))
    assert 0 < committed < len(list((reference / output).glob("shard-*.parquet"))), "kill missed the run"

    subprocess.run(command(killed), env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
    strip = lambda rows: [{k: v for k, v in r.items() if "model" not in k} for r in rows]  # noqa: E731
    assert strip(shard_rows(killed / output)) == strip(shard_rows(reference / output))


def test_an_empty_selection_trains_on_the_seed_alone(finished_run, tiny_student, corpus, tmp_path, capsys):
    """A rater that scores nothing high enough must not crash the run: M1 learns from the seed pairs."""
    run = tmp_path / "bt"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("M1", "M2", "iteration2"))
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("select_1", "train_1"):
        summary.pop(stage)
    (run / "summary.json").write_text(json.dumps(summary))
    strict = [*flags(run, tiny_student, corpus), "--min_score", "5", "--select_by", "expectation"]
    main(["backtranslate", "select", *strict])
    said = capsys.readouterr().out
    assert "no pair passes expectation >= 5: M1 will learn from the seed pairs only" in said
    assert pq.read_table(run / "iteration1" / "selected.parquet").num_rows == 0
    main(["backtranslate", "train", *strict])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["select_1"]["rows_out"] == 0
    assert summary["train_1"]["rows_in"] == summary["seed"]["rows_out"]
    AutoModelForCausalLM.from_pretrained(run / "models" / "M1")


def drop_last_shard(run: Path, output: Path, stage: str) -> Path:
    """Undo the end of a stage, as a crash would: its last shard and its summary line are gone."""
    last = sorted((run / output).glob("shard-*.parquet"))[-1]
    last.unlink()
    summary = json.loads((run / "summary.json").read_text())
    summary.pop(stage)
    (run / "summary.json").write_text(json.dumps(summary))
    return last


def test_a_moved_run_folder_resumes_where_it_stopped(finished_run, tiny_student, corpus, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(finished_run, moved)
    for stage, output, command in (
        ("augment", Path("augment"), ["augment"]),
        ("curate_1", Path("iteration1") / "curate", ["curate", "--iteration", "1"]),
    ):
        last = drop_last_shard(moved, output, stage)
        main(["backtranslate", *command, *flags(moved, tiny_student, corpus)])
        assert last.is_file()
        assert len(shard_rows(moved / output)) == len(shard_rows(finished_run / output))


def test_a_retrained_model_is_not_mixed_with_the_old_ones_output(
    finished_run, tiny_student, corpus, tmp_path, capsys
):
    run = tmp_path / "bt"
    shutil.copytree(finished_run, run)
    drop_last_shard(run, Path("augment"), "augment")
    marker = run / "models" / "Myx" / COMPLETE_MARKER  # train-backward ran again: a new record
    marker.write_text(marker.read_text().replace('"num_examples"', '"retrained": true, "num_examples"'))
    with pytest.raises(SystemExit) as exit_info:
        main(["backtranslate", "augment", *flags(run, tiny_student, corpus)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "different settings (params.model: 'models/Myx@" in err and "--overwrite" in err
