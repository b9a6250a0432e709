"""`--ray`: segment, augment and curate on a local Ray instance write what the single-process path writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from selftaught.backtranslate import recipe
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.segment import segment_corpus
from selftaught.cli import main
from selftaught.data.loading import DataError
from selftaught.data.ray_pipeline import ray_map
from selftaught.data.shards import read_parquet
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install selftaught[ray]")
pytestmark = pytest.mark.slow

TOPICS = ("kettles", "bicycles", "compost", "violins", "lanterns", "ferries")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small local Ray instance for the module: starting one costs seconds."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i, topic in enumerate(TOPICS):
        sections = [
            f"## Part {j}\n\n"
            + " ".join(
                f"Fact {k} about {topic} in part {j}: it weighs {i * 7 + j * 3 + k} units." for k in range(6)
            )
            for j in range(2)
        ]
        (folder / f"{topic}.md").write_text(f"# {topic.title()}\n\n" + "\n\n".join(sections) + "\n")
    return folder


def settings_and_config(run_dir: Path, corpus: Path, **overrides) -> tuple[BacktranslateConfig, SFTSettings]:
    knobs = dict(
        run_dir=str(run_dir),
        corpus=str(corpus),
        min_chars=150,
        max_chars=400,
        max_instruction_tokens=6,
        shard_size=2,
        generation_batch_size=4,
        temperature=0.0,
    )
    return BacktranslateConfig(**(knobs | overrides)), SFTSettings()


@pytest.fixture(scope="module")
def untied_model(tmp_path_factory, tiny_student, tokenizer) -> Path:
    """The tiny model with its own output layer: tied to the input embeddings, a random model's greedy
    choice is the token it just read ("\n" forever), so every instruction would be empty."""
    model = AutoModelForCausalLM.from_pretrained(tiny_student)
    model.config.tie_word_embeddings = False
    torch.manual_seed(5)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    folder = tmp_path_factory.mktemp("untied")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, untied_model, corpus) -> Path:
    """A run folder with segments, and a finished Myx and M0 (a tiny model: training is not tested here)."""
    run_dir = tmp_path_factory.mktemp("prepared") / "run"
    for name in ("Myx", "M0"):
        shutil.copytree(untied_model, run_dir / "models" / name)
        (run_dir / "models" / name / COMPLETE_MARKER).write_text("{}")
    recipe.stage_segment(*settings_and_config(run_dir, corpus))
    return run_dir


def copy_run(prepared: Path, folder: Path) -> Path:
    shutil.copytree(prepared, folder)
    return folder


def stage_output(folder: Path, run_dir: Path) -> tuple[list[str], dict, list[list[dict]]]:
    """Shard names, manifest and rows of a sharded stage. Nothing in them names the run folder (models are
    named within it), so two runs in different folders compare whole."""
    shards = sorted(folder.glob("shard-*.parquet"))
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = [pq.read_table(path).to_pylist() for path in shards]
    assert str(run_dir) not in json.dumps([manifest, rows])
    return [p.name for p in shards], manifest, rows


def run_augment_and_curate(run_dir: Path, corpus: Path, **overrides) -> None:
    config, settings = settings_and_config(run_dir, corpus, **overrides)
    recipe.stage_augment(config, settings)
    recipe.stage_curate(config, settings, 1)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, prepared, corpus) -> Path:
    run_dir = copy_run(prepared, tmp_path_factory.mktemp("single") / "run")
    run_augment_and_curate(run_dir, corpus)
    return run_dir


def test_segment_on_ray_equals_single_process(tmp_path, prepared, corpus):
    config, settings = settings_and_config(tmp_path / "run", corpus, ray=True)
    segments = recipe.stage_segment(config, settings)
    assert len(segments) >= 8
    assert segments == read_parquet(prepared / "segments" / "segments.parquet")
    mine, theirs = (segment_counts(run) for run in (tmp_path / "run", prepared))
    assert mine == theirs  # the same counts: documents, duplicates, boilerplate, ...


def test_bad_document_on_ray_names_its_row(tmp_path):
    """A DataError raised in a Ray task reaches the user as itself, naming the file and row."""
    documents = [{"text": "Fine text. " * 40, "source": "a.jsonl:1"}, {"text": 5, "source": "a.jsonl:2"}]
    with pytest.raises(DataError, match="a.jsonl:2: the text is int"):
        segment_corpus(documents, map_documents=ray_map)


def segment_counts(run_dir: Path) -> dict:
    """The segment stage's summary line without its timings."""
    line = json.loads((run_dir / "summary.json").read_text())["segment"]
    return {k: v for k, v in line.items() if k not in ("seconds", "rows_per_second")}


def test_augment_and_curate_on_two_actors_equal_single_process(tmp_path, single_process, prepared, corpus):
    run_dir = copy_run(prepared, tmp_path / "run")
    run_augment_and_curate(run_dir, corpus, ray=True, ray_actors=2)
    for stage in ("augment", "iteration1/curate"):
        ray_out, local_out = (
            stage_output(run_dir / stage, run_dir),
            stage_output(single_process / stage, single_process),
        )
        assert ray_out == local_out, stage
    rated = [row for shard in stage_output(run_dir / "iteration1" / "curate", run_dir)[2] for row in shard]
    assert len(rated) > 4 and all(row["score_argmax"] in range(1, 6) for row in rated)


def test_sampled_instructions_do_not_depend_on_the_actor(tmp_path, prepared, corpus):
    """Temperature 0.7: each shard is seeded by its index inside the actor, so any actor gives the same."""
    local = copy_run(prepared, tmp_path / "local")
    recipe.stage_augment(*settings_and_config(local, corpus, temperature=0.7))
    on_ray = copy_run(prepared, tmp_path / "ray")
    recipe.stage_augment(*settings_and_config(on_ray, corpus, temperature=0.7, ray=True, ray_actors=2))
    assert stage_output(on_ray / "augment", on_ray) == stage_output(local / "augment", local)


def test_ray_completes_a_partial_run_without_duplicates(tmp_path, single_process, prepared, corpus):
    """Some shards committed by an interrupted single-process run; `--ray` does the rest, nothing twice."""
    run_dir = copy_run(prepared, tmp_path / "run")
    recipe.stage_augment(*settings_and_config(run_dir, corpus))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("augment")  # as if the run had been killed before it finished
    (run_dir / "summary.json").write_text(json.dumps(summary))
    shards = sorted((run_dir / "augment").glob("shard-*.parquet"))
    assert len(shards) >= 4
    for path in shards[1::2]:
        path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in shards[::2]}

    flags = ["--run_dir", str(run_dir), "--corpus", str(corpus), "--min_chars", "150", "--max_chars", "400"]
    flags += ["--max_instruction_tokens", "6", "--shard_size", "2", "--generation_batch_size", "4"]
    main(["backtranslate", "augment", *flags, "--temperature", "0", "--ray", "--ray_actors", "2"])

    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # committed shards are not redone
    names, manifest, rows = stage_output(run_dir / "augment", run_dir)
    assert (names, manifest, rows) == stage_output(single_process / "augment", single_process)
    ids = [row["segment_id"] for shard in rows for row in shard]
    assert len(ids) == len(set(ids)) == len(read_parquet(run_dir / "segments" / "segments.parquet"))
