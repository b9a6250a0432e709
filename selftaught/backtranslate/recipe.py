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
chains them and, rerun on the same folder, skips what is finished and resumes what is not. Each
`stage_*` below is the stage's method; what it reads and writes is in the stage table (stages.py), and
the bookkeeping around it (the folder's lock, when it counts as finished, its line in summary.json, how
`--overwrite` redoes it and what depends on it) in runfolder.py's `runs_stage`.
"""

from __future__ import annotations

import hashlib
import math
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
    Done,
    RunFolder,
    StageClock,
    overwrite_all,
    runs_stage,
    sharded_seconds,
    stage_command,
    writing_run_folder,
)
from selftaught.backtranslate.segment import segment_corpus
from selftaught.backtranslate.sharded import augment_shard_fn, curate_shard_fn, run_shards
from selftaught.backtranslate.stages import (
    AUGMENT,
    CURATE,
    SEED,
    SEGMENT,
    SELECT,
    TRAIN,
    TRAIN_BACKWARD,
    TRAIN_SEED,
    Stage,
    trainer,
)
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

# --- stages: each is its method; `runs_stage` does the bookkeeping (lock, skip, summary line) --------


def seed_knobs(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int) -> dict:
    return {
        "seed_data": model_label(config.seed_data)
        if config.seed_data
        else "the shipped oasst1-format seed set",
        # by content too: another file of the same name is other seed data (a Hub dataset: None)
        "seed_data_content": content_fingerprint(seed_source(config)),
        "seed_split": config.seed_split,
        "seed_size": config.seed_size,
        "seed": settings.seed,
    }


@runs_stage(SEED, seed_knobs)
def stage_seed(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done:
    source = seed_source(config)
    pairs, stats = load_seed_pairs(source, config.seed_size, settings.seed, split=config.seed_split)
    if not pairs:
        raise DataError(f"{source}: no seed pairs survived the filters ({stats}); check lang/rank fields")
    write_parquet(run.seed_pairs, pairs)
    return Done(stats.get("rows", len(pairs)), len(pairs), stats)


def training_knobs(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int) -> dict:
    """The base model and the settings that change what a model learns."""
    recorded = {name: value for name, value in asdict(settings).items() if name not in UNRECORDED_SFT}
    return {"base_model": model_label(config.base())} | recorded


@runs_stage(TRAIN_SEED, training_knobs)
def stage_train_seed(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done | None:
    pairs = read_parquet(run.input(SEED.name()))
    examples = [seed_example(p) for p in pairs]
    return train(config, settings, run, TRAIN_SEED, 0, examples, train_sizes(len(pairs)))


@runs_stage(TRAIN_BACKWARD, training_knobs)
def stage_train_backward(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done | None:
    pairs = read_parquet(run.input(SEED.name()))
    examples = [backward_example(p["instruction"], p["response"]) for p in pairs]
    return train(config, settings, run, TRAIN_BACKWARD, 0, examples, {"seed pairs (reversed)": len(pairs)})


def segment_knobs(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int) -> dict:
    return {
        "corpus": model_label(config.corpus) if config.corpus else "installed packages",
        "corpus_content": content_fingerprint(config.corpus),
        **asdict_subset(config, SEGMENT_KNOBS),
        "seed": settings.seed,  # which documents are held out for the evaluation
    }


@runs_stage(SEGMENT, segment_knobs)
def stage_segment(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done:
    documents = without_held_out(corpus_documents(config), config, settings.seed)  # new_domain.py
    map_documents = partial(ray_map, address=config.ray_address) if config.ray else map
    segments, stats = segment_corpus(
        documents, config.min_chars, config.max_chars, config.max_segments, map_documents
    )
    write_parquet(run.segments, segments)
    return Done(stats.get("documents", 0), len(segments), stats)


def augment_knobs(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int) -> dict:
    backward = run.input(TRAIN_BACKWARD.name())
    return {"model": run.identity(backward), "seed": settings.seed, **asdict_subset(config, AUGMENT_KNOBS)}


@runs_stage(AUGMENT, augment_knobs)
def stage_augment(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done:
    """Myx writes one instruction per segment (temperature 0.7, top-p 0.9), shard by shard."""
    segments = read_parquet(run.input(SEGMENT.name()))
    fingerprint = {"segments": digest(s["segment_id"] for s in segments), **knobs}
    backward = run.input(TRAIN_BACKWARD.name())
    redo = redo_hint(AUGMENT.name())
    run_shards(
        config,
        segments,
        run.augment,
        fingerprint,
        AUGMENT.name(),
        redo,
        augment_shard_fn,
        config,
        settings,
        backward,
    )
    pairs = read_shards(run.augment)
    empty = sum(not p for p in pairs["instruction"])
    export(config, run.augment)
    return Done(
        len(segments), len(pairs) - empty, {"empty_instructions": empty}, sharded_seconds(run.augment)
    )


def curate_knobs(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int) -> dict:
    """What a curation's scores depend on: the models and the settings of the modes it computes."""
    modes = config.curation_modes
    knobs = {"curation_mode": config.curation_mode, **asdict_subset(config, ("shard_size", "engine"))}
    rater, backward = curation_models(config, run, k)
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


@runs_stage(CURATE, curate_knobs)
def stage_curate(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done:
    """Every (instruction, segment) pair scored in each curation mode; the scores are stored with each."""
    pairs = [p for p in read_shards(run.input(AUGMENT.name())) if p["instruction"]]
    fingerprint = {"pairs": digest(p["segment_id"] + p["instruction"] for p in pairs), **knobs}
    folder, redo = run.curate(k), redo_hint(CURATE.name(k))
    desc = f"curate (iteration {k})"
    models = curation_models(config, run, k)
    run_shards(config, pairs, folder, fingerprint, desc, redo, curate_shard_fn, config, *models, k)
    rated = read_shards(folder)
    counts = curation_counts(rated)
    say_curation_counts(CURATE.name(k), counts)
    export(config, folder)
    return Done(len(pairs), len(rated), counts, sharded_seconds(folder))


@runs_stage(SELECT, lambda config, settings, run, k: {"rule": config.selection_rule().describe()})
def stage_select(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done:
    """The pairs the selection rule keeps, with a histogram of the score it ranked them by."""
    rule = config.selection_rule()
    rated = read_shards(run.input(CURATE.name(k))).to_list()
    try:  # against what was curated (rows curated before modes existed were rated on the rubric)
        rule.check(rated[0].get("curation_mode", "rubric").split(",") if rated else config.curation_modes)
    except ValueError as err:
        raise DataError(f"{run.curate(k)}: {err}") from None
    keep = rule.keep(rated)
    selected = [r for r, kept in zip(rated, keep, strict=True) if kept]
    write_parquet(run.selected(k), selected)
    return Done(
        len(rated), len(selected), {"rule": rule.describe(), **selection_counts(rule, rated, keep, k)}
    )


@runs_stage(TRAIN, training_knobs)
def stage_train(
    config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int, knobs: dict
) -> Done | None:
    seed = read_parquet(run.input(SEED.name()))
    selected = read_parquet(run.input(SELECT.name(k)))
    examples = [seed_example(p) for p in seed] + [web_example(p) for p in selected]
    return train(config, settings, run, TRAIN, k, examples, train_sizes(len(seed), len(selected)))


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


def seed_source(config: BacktranslateConfig) -> str:
    return config.seed_data or str(BUILTIN_OASST_SEED)


def curation_models(config: BacktranslateConfig, run: RunFolder, k: int) -> tuple[Path, Path | None]:
    """The rater M(k-1), and Myx where the backward score is computed."""
    backward = run.input(TRAIN_BACKWARD.name()) if "backward" in config.curation_modes else None
    return run.input(trainer(k - 1)), backward


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


def selection_counts(rule: SelectionRule, rated: list[dict], keep: list[bool], k: int) -> dict:
    """What `select` reports of a selection, shown and returned for its summary line: the histogram of the
    score, the pairs that have none (never kept), and a warning when none is kept."""
    counts = score_histogram(rule, rated, keep)
    print_histogram(counts, f"iteration {k}: {rule.score} of every pair (kept: {rule.describe()})")
    unscored = Counter(
        unscored_reason(r) for r, v in zip(rated, rule.values(rated), strict=True) if v is None
    )
    if unscored:
        print(
            f"[{SELECT.name(k)}] {unscored.total()} pairs have no {rule.score} and are never kept "
            f"({', '.join(f'{reason}: {n}' for reason, n in unscored.items())})"
        )
    if not any(keep):
        print(
            f"[{SELECT.name(k)}] no pair passes {rule.describe()}: M{k} will learn from the seed pairs only. "
            "Lower --min_score, or keep a fraction with --select_top (see the histogram above)."
        )
    return counts | {"unscored": unscored.total(), "unscored_reasons": dict(unscored)}


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


def train(
    config: BacktranslateConfig,
    settings: SFTSettings,
    run: RunFolder,
    stage: Stage,
    k: int,
    examples: list[dict],
    sizes: dict,
) -> Done | None:
    """The base fine-tuned on `examples` into `stage`'s model folder, timed over every process that trained
    it (a resumed training adds the seconds spent before). One process reports it and writes its card."""
    model = stage.writes(run, k)[0]
    ledger = run.ledger(stage.name(k))
    if newest_complete_checkpoint(model) is None:  # a fresh start: no earlier time to add
        ledger.unlink(missing_ok=True)
    clock = StageClock(ledger)
    out = train_sft(
        config.base(),
        examples,
        model,
        settings,
        trust_remote_code=config.trust_remote_code,
        callbacks=[clock],
    )
    if not PartialState().is_main_process:  # under `accelerate launch`, one process documents the model
        return None

    def document() -> None:
        card = backtranslation_card(config, settings, model.name, k, sizes, run.read_summary())
        write_model_card(out, card)

    return Done(len(examples), len(examples), seconds=clock.total(), then=document)
