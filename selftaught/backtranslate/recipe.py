"""`selftaught backtranslate`: instruction backtranslation (Humpback, Li et al. 2023), stage by stage.

    seed            gold (instruction, response) pairs: first turns of oasst1 trees, rank 0, English
    train-seed      M0  = base fine-tuned on the seed pairs
    train-backward  Myx = base fine-tuned on the seed pairs turned round (response -> instruction)
    segment         the unlabelled corpus cut into 600-3000 character segments, deduplicated
    augment         Myx writes an instruction for every segment            (sharded, resumable)
    curate k        M(k-1) scores every pair: rubric, pmi, ifd, backward    (sharded, resumable)
    select k        pairs the selection rule keeps (a threshold or a top fraction of a score)
    train k         M(k) = base fine-tuned on tagged seed pairs + tagged selected pairs
    evaluate        base, M0, M1, M2 side by side, with bootstrap intervals (evaluation.py)

Every stage reads the previous stage's output from the run folder and writes its own there; `run`
chains them and, rerun on the same folder, skips what is finished and resumes what is not. When a
stage counts as finished, and how `--overwrite` redoes it and what depends on it: runfolder.py.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset

from selftaught.backtranslate.card import backtranslation_card, train_sizes
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.evaluation import stage_evaluate
from selftaught.backtranslate.examples import backward_example, seed_example, web_example
from selftaught.backtranslate.new_domain import corpus_documents, without_held_out
from selftaught.backtranslate.runfolder import (
    RunFolder,
    StageClock,
    finished,
    overwrite,
    overwrite_all,
    record,
    sharded_seconds,
    stage_command,
    writes_run_folder,
    writing_run_folder,
)
from selftaught.backtranslate.segment import segment_corpus
from selftaught.backtranslate.sharded import augment_shard_fn, curate_shard_fn, run_shards
from selftaught.data.loading import DataError, content_fingerprint
from selftaught.data.ray_pipeline import ray_map
from selftaught.data.seed_pairs import BUILTIN_OASST_SEED, load_seed_pairs
from selftaught.data.shards import export_jsonl, read_parquet, read_shards, write_parquet
from selftaught.models.naming import model_label
from selftaught.report import write_report
from selftaught.scoring.curation import SCORES, SelectionRule, unscored_reason
from selftaught.training.checkpoints import newest_complete_checkpoint
from selftaught.training.model_card import write_model_card
from selftaught.training.sft import SFTSettings, train_sft


def begin(config: BacktranslateConfig, stage: str) -> RunFolder:
    """The run folder, with `stage` and what depends on it discarded first under --overwrite."""
    run = RunFolder(config.run_dir)
    if config.overwrite:
        overwrite(run, stage)
    return run


# --- stages --------------------------------------------------------------------------------------


@writes_run_folder("seed")
def stage_seed(config: BacktranslateConfig, settings: SFTSettings) -> list[dict]:
    run = begin(config, "seed")
    source = config.seed_data or str(BUILTIN_OASST_SEED)
    knobs = {
        "seed_data": model_label(config.seed_data)
        if config.seed_data
        else "the shipped oasst1-format seed set",
        # by content too: another file of the same name is other seed data (a Hub dataset: None)
        "seed_data_content": content_fingerprint(source),
        "seed_split": config.seed_split,
        "seed_size": config.seed_size,
        "seed": settings.seed,
    }
    if finished(run, "seed", knobs):
        return read_parquet(run.seed_pairs)
    started = time.perf_counter()
    pairs, stats = load_seed_pairs(source, config.seed_size, settings.seed, split=config.seed_split)
    if not pairs:
        raise DataError(f"{source}: no seed pairs survived the filters ({stats}); check lang/rank fields")
    write_parquet(run.seed_pairs, pairs)
    rows_in = stats.get("rows", len(pairs))
    record(run, "seed", rows_in, len(pairs), time.perf_counter() - started, knobs, **stats)
    return pairs


@writes_run_folder("train-seed")
def stage_train_seed(config: BacktranslateConfig, settings: SFTSettings) -> Path:
    run = RunFolder(config.run_dir)
    pairs = read_parquet(run.require(run.seed_pairs, "seed"))
    examples = [seed_example(p) for p in pairs]
    return train_and_document(config, settings, "M0", examples, train_sizes(len(pairs)), iteration=0)


@writes_run_folder("train-backward")
def stage_train_backward(config: BacktranslateConfig, settings: SFTSettings) -> Path:
    run = RunFolder(config.run_dir)
    pairs = read_parquet(run.require(run.seed_pairs, "seed"))
    examples = [backward_example(p["instruction"], p["response"]) for p in pairs]
    return train_and_document(config, settings, "Myx", examples, {"seed pairs (reversed)": len(pairs)}, 0)


@writes_run_folder("segment")
def stage_segment(config: BacktranslateConfig, settings: SFTSettings) -> list[dict]:
    run = begin(config, "segment")
    knobs = {
        "corpus": model_label(config.corpus) if config.corpus else "installed packages",
        "corpus_content": content_fingerprint(config.corpus),
        **asdict_subset(config, SEGMENT_KNOBS),
        "seed": settings.seed,  # which documents are held out for the evaluation
    }
    if finished(run, "segment", knobs):
        return read_parquet(run.segments)
    started = time.perf_counter()
    documents = without_held_out(corpus_documents(config), config, settings.seed)  # new_domain.py
    map_documents = partial(ray_map, address=config.ray_address) if config.ray else map
    segments, stats = segment_corpus(
        documents, config.min_chars, config.max_chars, config.max_segments, map_documents
    )
    write_parquet(run.segments, segments)
    seconds = time.perf_counter() - started
    record(run, "segment", stats.get("documents", 0), len(segments), seconds, knobs, **stats)
    return segments


@writes_run_folder("augment")
def stage_augment(config: BacktranslateConfig, settings: SFTSettings) -> Dataset:
    """Myx writes one instruction per segment (temperature 0.7, top-p 0.9), shard by shard."""
    run = begin(config, "augment")
    backward = run.trained("Myx", "train-backward")
    knobs = {"model": run.identity(backward), "seed": settings.seed, **asdict_subset(config, AUGMENT_KNOBS)}
    if finished(run, "augment", knobs):
        return read_shards(run.augment)
    segments = read_parquet(run.require(run.segments, "segment"))
    fingerprint = {"segments": digest(s["segment_id"] for s in segments), **knobs}
    redo = redo_hint("augment")
    run_shards(
        config,
        segments,
        run.augment,
        fingerprint,
        "augment",
        redo,
        augment_shard_fn,
        config,
        settings,
        backward,
    )
    pairs = read_shards(run.augment)
    empty = sum(not p for p in pairs["instruction"])
    seconds = sharded_seconds(run.augment)
    record(run, "augment", len(segments), len(pairs) - empty, seconds, knobs, empty_instructions=empty)
    export(config, run.augment)
    return pairs


@writes_run_folder("curate")
def stage_curate(config: BacktranslateConfig, settings: SFTSettings, k: int) -> Dataset:
    """Every (instruction, segment) pair scored in each curation mode; the scores are stored with each."""
    run = begin(config, f"curate_{k}")
    rater = run.trained(f"M{k - 1}", "train-seed" if k == 1 else f"train --iteration {k - 1}")
    backward = run.trained("Myx", "train-backward") if "backward" in config.curation_modes else None
    knobs = curate_knobs(config, run, rater, backward)
    if finished(run, f"curate_{k}", knobs):
        return read_shards(run.curate(k))
    pairs = [p for p in read_shards(run.require(run.augment, "augment")) if p["instruction"]]
    fingerprint = {"pairs": digest(p["segment_id"] + p["instruction"] for p in pairs), **knobs}
    folder, redo = run.curate(k), redo_hint(f"curate_{k}")
    desc = f"curate (iteration {k})"
    run_shards(config, pairs, folder, fingerprint, desc, redo, curate_shard_fn, config, rater, backward, k)
    rated = read_shards(folder)
    counts = curation_counts(rated)
    say_curation_counts(f"curate_{k}", counts)
    record(run, f"curate_{k}", len(pairs), len(rated), sharded_seconds(folder), knobs, **counts)
    export(config, folder)
    return rated


@writes_run_folder("select")
def stage_select(config: BacktranslateConfig, settings: SFTSettings, k: int) -> list[dict]:
    """The pairs the selection rule keeps, with a histogram of the score it ranked them by."""
    run = begin(config, f"select_{k}")
    rule = config.selection_rule()
    knobs = {"rule": rule.describe()}
    if finished(run, f"select_{k}", knobs):
        return read_parquet(run.selected(k))
    started = time.perf_counter()
    rated = read_shards(run.require(run.curate(k), f"curate --iteration {k}")).to_list()
    try:  # against what was curated (rows curated before modes existed were rated on the rubric)
        rule.check(rated[0].get("curation_mode", "rubric").split(",") if rated else config.curation_modes)
    except ValueError as err:
        raise DataError(f"{run.curate(k)}: {err}") from None
    keep = rule.keep(rated)
    selected = [r for r, kept in zip(rated, keep, strict=True) if kept]
    write_parquet(run.selected(k), selected)
    counts = score_histogram(rule, rated, keep)
    print_histogram(counts, f"iteration {k}: {rule.score} of every pair (kept: {rule.describe()})")
    unscored = Counter(
        unscored_reason(r) for r, v in zip(rated, rule.values(rated), strict=True) if v is None
    )
    if unscored:
        print(
            f"[select_{k}] {unscored.total()} pairs have no {rule.score} and are never kept "
            f"({', '.join(f'{reason}: {n}' for reason, n in unscored.items())})"
        )
    counts |= {"unscored": unscored.total(), "unscored_reasons": dict(unscored)}
    if not selected:
        print(
            f"[select_{k}] no pair passes {rule.describe()}: M{k} will learn from the seed pairs only. "
            "Lower --min_score, or keep a fraction with --select_top (see the histogram above)."
        )
    seconds = time.perf_counter() - started
    record(run, f"select_{k}", len(rated), len(selected), seconds, knobs, rule=rule.describe(), **counts)
    return selected


@writes_run_folder("train")
def stage_train(config: BacktranslateConfig, settings: SFTSettings, k: int) -> Path:
    run = RunFolder(config.run_dir)
    seed = read_parquet(run.require(run.seed_pairs, "seed"))
    selected = read_parquet(run.require(run.selected(k), f"select --iteration {k}"))
    examples = [seed_example(p) for p in seed] + [web_example(p) for p in selected]
    return train_and_document(config, settings, f"M{k}", examples, train_sizes(len(seed), len(selected)), k)


def run_all(config: BacktranslateConfig, settings: SFTSettings) -> dict:
    """Every stage in order; finished stages are skipped, interrupted ones resume."""
    if config.engine == "openai":
        # One server holds one model, but the stages use several (Myx writes, M0, M1... rate): a
        # single --base_url would rate with the wrong model.
        raise ValueError(
            "`backtranslate run` uses several models and a server serves one: with --engine openai run "
            "the stages one by one (augment against a server of Myx, curate --iteration k against one "
            "of M(k-1)), or use --engine hf or vllm"
        )
    config.base()  # a bad --base_model stops the run before the first stage, not at the second
    with writing_run_folder(config.run_dir, "run"):  # once, for every stage (each takes it again)
        if config.overwrite:
            overwrite_all(RunFolder(config.run_dir))
            config = replace(config, overwrite=False)
        stage_seed(config, settings)
        stage_train_seed(config, settings)
        stage_train_backward(config, settings)
        stage_segment(config, settings)
        stage_augment(config, settings)
        for k in range(1, config.iterations + 1):
            stage_curate(config, settings, k)
            stage_select(config, settings, k)
            stage_train(config, settings, k)
        if PartialState().is_main_process:
            stage_evaluate(config, settings)
            write_report(config.run_dir)
        return RunFolder(config.run_dir).read_summary()


# --- helpers -------------------------------------------------------------------------------------

SEGMENT_KNOBS = (
    "corpus_split",
    "corpus_config",
    "text_column",
    "min_chars",
    "max_chars",
    "max_segments",
    "eval_new_domain_documents",
)
AUGMENT_KNOBS = ("temperature", "top_p", "max_instruction_tokens", "shard_size", "engine", "served_model")
# Settings that do not change what a model learns (logging, checkpoint keeping): not compared on rerun.
UNRECORDED_SFT = ("logging_steps", "save_steps", "save_total_limit", "keep_checkpoints", "report_to")


def curate_knobs(config: BacktranslateConfig, run: RunFolder, rater: Path, backward: Path | None) -> dict:
    """What a curation's scores depend on: the models and the settings of the modes it computes."""
    modes = config.curation_modes
    knobs = {"curation_mode": config.curation_mode, **asdict_subset(config, ("shard_size", "engine"))}
    if set(modes) - {"backward"}:
        knobs["rater"] = run.identity(rater)
    if backward is not None:
        knobs["backward_model"] = run.identity(backward)
    if "generate" in modes:
        knobs["max_reasoning_tokens"] = config.max_reasoning_tokens
    if set(modes) & {"pmi", "ifd", "backward"}:
        knobs["max_scored_tokens"] = config.max_scored_tokens
    if config.engine == "openai":
        knobs["served_model"] = config.served_model
    return knobs


def curation_counts(rated: Dataset) -> dict:
    """How many curated pairs went unscored (by reason) and had their instruction cut to the context."""
    columns = set(rated.column_names)
    unscored = Counter(r for r in (rated["unscored"] if "unscored" in columns else []) if r)
    truncated = rated["instruction_truncated"] if "instruction_truncated" in columns else []
    return {
        "unscored": unscored.total(),
        "unscored_reasons": dict(unscored),
        "instructions_truncated": sum(bool(t) for t in truncated),
    }


def say_curation_counts(stage: str, counts: dict) -> None:
    """The counts of `curation_counts` in words, when there is anything to say."""
    if counts["unscored"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in counts["unscored_reasons"].items())
        print(f"[{stage}] {counts['unscored']} pairs have no score ({reasons}): `select` never keeps them")
    if counts["instructions_truncated"]:
        print(
            f"[{stage}] {counts['instructions_truncated']} instructions longer than half the rater's context "
            "were scored on their first half-context of tokens"
        )


def redo_hint(stage: str) -> str:
    return f"rerun `selftaught backtranslate {stage_command(stage)}` with --overwrite"


def digest(items) -> str:
    """A short fingerprint of a stage's input, so a rerun on different input is refused, not mixed."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def asdict_subset(config: BacktranslateConfig, names: tuple[str, ...]) -> dict:
    values = asdict(config)
    return {name: values[name] for name in names}


HISTOGRAM_BINS = 8


def score_histogram(rule: SelectionRule, rows: list[dict], keep: list[bool]) -> dict:
    """Pairs per score bin, all and kept: digits 1-5 for the rubric's argmax, else equal-width bins of the
    rule's score (a combination: its percentile rank) between the lowest and highest finite value."""
    values = rule.values(rows)
    if rule.score == "argmax":
        labels = [str(d) for d in range(1, 6)]
        bins = ["none" if v is None else str(int(v)) for v in values]
        labels += ["none"] if "none" in bins else []
    else:
        finite = [v for v in values if v is not None and math.isfinite(v)] or [0.0]
        low, width = min(finite), (max(finite) - min(finite)) / HISTOGRAM_BINS or 1.0
        edges = [low + width * i for i in range(HISTOGRAM_BINS)]
        labels = [f"{e:.2f}" for e in edges]
        bins = [
            labels[min(int((v - low) / width), HISTOGRAM_BINS - 1)]
            if v is not None and math.isfinite(v)
            else "none"
            for v in values
        ]
        labels += ["none"] if "none" in bins else []
    every, kept = Counter(bins), Counter(b for b, k in zip(bins, keep, strict=True) if k)
    return {
        "score": rule.score if rule.score not in SCORES else f"{rule.score} ({SCORES[rule.score][1]})",
        "score_histogram": {label: every.get(label, 0) for label in labels},
        "kept_histogram": {label: kept.get(label, 0) for label in labels},
    }


def print_histogram(counts: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("bin (from)")
    table.add_column("pairs", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("")
    every, kept = counts["score_histogram"], counts["kept_histogram"]
    most = max(every.values(), default=0) or 1
    for label, n in every.items():
        table.add_row(
            label,
            str(n),
            str(kept[label]),
            "#" * round(30 * kept[label] / most) + "." * round(30 * (n - kept[label]) / most),
        )
    Console().print(table)


def export(config: BacktranslateConfig, folder: Path) -> None:
    if config.output_format == "jsonl":
        export_jsonl(folder, folder.with_suffix(".jsonl"))


def train_and_document(
    config: BacktranslateConfig,
    settings: SFTSettings,
    name: str,
    examples: list[dict],
    sizes: dict,
    iteration: int,
) -> Path:
    stage = f"train_{name}"
    run = begin(config, stage)
    knobs = {"base_model": model_label(config.base())} | {
        k: v for k, v in asdict(settings).items() if k not in UNRECORDED_SFT
    }
    if finished(run, stage, knobs):
        return run.model(name)
    ledger = run.timing / f"{stage}.jsonl"
    if newest_complete_checkpoint(run.model(name)) is None:  # a fresh start: no earlier time to add
        ledger.unlink(missing_ok=True)
    clock = StageClock(ledger)
    out = train_sft(
        config.base(),
        examples,
        run.model(name),
        settings,
        trust_remote_code=config.trust_remote_code,
        callbacks=[clock],
    )
    if PartialState().is_main_process:  # under `accelerate launch`, one process documents the model
        record(run, stage, len(examples), len(examples), clock.total(), knobs)
        write_model_card(
            out, backtranslation_card(config, settings, name, iteration, sizes, run.read_summary())
        )
    return out
