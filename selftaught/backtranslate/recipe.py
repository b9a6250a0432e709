"""`selftaught backtranslate`: instruction backtranslation (Humpback, Li et al. 2023), stage by stage.

    seed            gold (instruction, response) pairs: first turns of oasst1 trees, rank 0, English
    train-seed      M0  = base fine-tuned on the seed pairs
    train-backward  Myx = base fine-tuned on the seed pairs turned round (response -> instruction)
    segment         the unlabelled corpus cut into 600-3000 character segments, deduplicated
    augment         Myx writes an instruction for every segment            (sharded, resumable)
    curate k        M(k-1) rates every pair on the 5-point rubric           (sharded, resumable)
    select k        pairs at or above the threshold
    train k         M(k) = base fine-tuned on tagged seed pairs + tagged selected pairs

Every stage reads the previous stage's output from the run folder and writes its own there; `run`
chains them and, rerun on the same folder, skips what is finished and resumes what is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset

from selftaught.backtranslate.card import backtranslation_card
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.corpus import installed_package_descriptions
from selftaught.backtranslate.seed import load_seed_pairs
from selftaught.backtranslate.segment import read_corpus, segment_corpus
from selftaught.data.loading import DataError
from selftaught.data.ray_pipeline import ray_map, ray_runner
from selftaught.data.shards import (
    export_jsonl,
    read_parquet,
    read_shards,
    run_sharded,
    write_json,
    write_parquet,
)
from selftaught.evaluate.config import CurationEvalConfig, JudgeEvalConfig
from selftaught.evaluate.curation import mismatched_labels, read_labelled
from selftaught.evaluate.judge import read_requests
from selftaught.evaluate.results import eval_rows
from selftaught.evaluate.suite import ModelSuite, summary_numbers
from selftaught.generation.engines import GenerationEngine, make_engine
from selftaught.generation.hf import SamplingParams
from selftaught.models.check import check_model_argument
from selftaught.report import write_report
from selftaught.scoring.ratings import rate_pairs
from selftaught.training.model_card import write_model_card
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings, sft_example, train_sft

SEED_TAG = "Answer in the style of an AI Assistant."
WEB_TAG = "Answer with knowledge from web search."
BACKWARD_PROMPT = "Write the instruction or question that the following text answers.\n\n"
BUILTIN_SEED = Path(__file__).resolve().parent / "builtin" / "oasst_seed.jsonl"


class RunFolder:
    """Where each stage's output lives inside the run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.seed_pairs = self.root / "seed" / "pairs.parquet"
        self.segments = self.root / "segments" / "segments.parquet"
        self.augment = self.root / "augment"
        self.summary = self.root / "summary.json"
        self.evaluation = self.root / "evaluation"
        self.eval_results = self.root / "eval_results.json"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def curate(self, k: int) -> Path:
        return self.root / f"iteration{k}" / "curate"

    def selected(self, k: int) -> Path:
        return self.root / f"iteration{k}" / "selected.parquet"

    def trained(self, name: str, stage: str) -> Path:
        """The folder of a finished model (its completion marker is written last)."""
        return self.require(self.model(name) / COMPLETE_MARKER, stage).parent

    def name_of(self, model: Path) -> str:
        """How rows name a model of this run: its place in the run folder, e.g. "models/Myx", so the
        run folder can be moved or renamed and still resume into identical rows."""
        return Path(model).relative_to(self.root).as_posix()

    def identity(self, model: Path) -> str:
        """A trained model as stage manifests record it: its name and a digest of its completion record,
        so training the model again changes it (a rerun never mixes two models' output)."""
        record = hashlib.sha256((model / COMPLETE_MARKER).read_bytes()).hexdigest()[:16]
        return f"{self.name_of(model)}@{record}"

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `selftaught backtranslate {stage}` first")
        return path


# --- bookkeeping ---------------------------------------------------------------------------------


def finished(run: RunFolder, stage: str) -> bool:
    """A stage is finished once its summary line is written: that is the last thing it does."""
    return run.summary.exists() and stage in json.loads(run.summary.read_text())


def record(run: RunFolder, stage: str, rows_in: int, rows_out: int, seconds: float, **extra) -> None:
    """Add one stage's line to summary.json: rows in, rows out, throughput, and its own counts."""
    summary = json.loads(run.summary.read_text()) if run.summary.exists() else {}
    summary[stage] = {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows_in / seconds, 3) if seconds > 0 else None,
        **extra,
    }
    run.summary.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.summary.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run.summary)
    print(f"[{stage}] rows in {rows_in}, rows out {rows_out}, {seconds:.1f} s")


def base_model(config: BacktranslateConfig) -> str:
    """`--base_model`, checked before anything loads, or the embedded default (built on first use)."""
    if config.base_model is None:
        from selftaught.models.embedded import embedded_teacher

        config.base_model = str(embedded_teacher())
    else:
        check_model_argument(config.base_model, "--base_model")
    return config.base_model


# --- stages --------------------------------------------------------------------------------------


def stage_seed(config: BacktranslateConfig, settings: SFTSettings) -> list[dict]:
    run = RunFolder(config.run_dir)
    if finished(run, "seed"):
        return read_parquet(run.seed_pairs)
    started = time.perf_counter()
    source = config.seed_data or str(BUILTIN_SEED)
    pairs, stats = load_seed_pairs(source, config.seed_size, settings.seed, split=config.seed_split)
    if not pairs:
        raise DataError(f"{source}: no seed pairs survived the filters ({stats}); check lang/rank fields")
    write_parquet(run.seed_pairs, pairs)
    record(run, "seed", stats.get("rows", len(pairs)), len(pairs), time.perf_counter() - started, **stats)
    return pairs


def backward_example(instruction: str, response: str) -> dict:
    """Myx's training example: the response is the prompt, the instruction the completion."""
    return sft_example(BACKWARD_PROMPT + response, instruction)


def stage_train_seed(config: BacktranslateConfig, settings: SFTSettings) -> Path:
    run = RunFolder(config.run_dir)
    pairs = read_parquet(run.require(run.seed_pairs, "seed"))
    examples = [sft_example(p["instruction"], p["response"], SEED_TAG) for p in pairs]
    return train_and_document(config, settings, "M0", examples, train_sizes(len(pairs)), iteration=0)


def stage_train_backward(config: BacktranslateConfig, settings: SFTSettings) -> Path:
    run = RunFolder(config.run_dir)
    pairs = read_parquet(run.require(run.seed_pairs, "seed"))
    examples = [backward_example(p["instruction"], p["response"]) for p in pairs]
    return train_and_document(config, settings, "Myx", examples, {"seed pairs (reversed)": len(pairs)}, 0)


def stage_segment(config: BacktranslateConfig, settings: SFTSettings) -> list[dict]:
    run = RunFolder(config.run_dir)
    if finished(run, "segment"):
        return read_parquet(run.segments)
    started = time.perf_counter()
    if config.corpus is None:
        documents, source_stats = installed_package_descriptions(), {"corpus": "installed packages"}
    else:
        documents = read_corpus(
            config.corpus,
            text_column=config.text_column,
            split=config.corpus_split,
            config=config.corpus_config,
        )
        source_stats = {"corpus": config.corpus}
    map_documents = partial(ray_map, address=config.ray_address) if config.ray else map
    segments, stats = segment_corpus(
        documents, config.min_chars, config.max_chars, config.max_segments, map_documents
    )
    write_parquet(run.segments, segments)
    record(
        run,
        "segment",
        stats.get("documents", 0),
        len(segments),
        time.perf_counter() - started,
        **source_stats,
        **stats,
    )
    return segments


def stage_augment(config: BacktranslateConfig, settings: SFTSettings) -> Dataset:
    """Myx writes one instruction per segment (temperature 0.7, top-p 0.9), shard by shard."""
    run = RunFolder(config.run_dir)
    if finished(run, "augment"):
        return read_shards(run.augment)
    segments = read_parquet(run.require(run.segments, "segment"))
    backward = run.trained("Myx", "train-backward")
    started = time.perf_counter()
    fingerprint = {
        "segments": digest(s["segment_id"] for s in segments),
        "model": run.identity(backward),
        "seed": settings.seed,
        **asdict_subset(config, AUGMENT_KNOBS),
    }
    run_shards(
        config, segments, run.augment, fingerprint, "augment", augment_shard_fn, config, settings, backward
    )
    pairs = read_shards(run.augment)
    empty = sum(not p for p in pairs["instruction"])
    record(
        run,
        "augment",
        len(segments),
        len(pairs) - empty,
        time.perf_counter() - started,
        empty_instructions=empty,
    )
    export(config, run.augment)
    return pairs


def stage_curate(config: BacktranslateConfig, settings: SFTSettings, k: int) -> Dataset:
    """M(k-1) rates every (instruction, segment) pair; the score distribution is stored with each."""
    run = RunFolder(config.run_dir)
    if finished(run, f"curate_{k}"):
        return read_shards(run.curate(k))
    pairs = [p for p in read_shards(run.require(run.augment, "augment")) if p["instruction"]]
    rater_path = run.trained(f"M{k - 1}", "train-seed" if k == 1 else f"train --iteration {k - 1}")
    started = time.perf_counter()
    fingerprint = {
        "pairs": digest(p["segment_id"] + p["instruction"] for p in pairs),
        "rater": run.identity(rater_path),
        **asdict_subset(config, CURATE_KNOBS),
    }
    run_shards(
        config,
        pairs,
        run.curate(k),
        fingerprint,
        f"curate (iteration {k})",
        curate_shard_fn,
        config,
        rater_path,
        k,
    )
    rated = read_shards(run.curate(k))
    record(
        run,
        f"curate_{k}",
        len(pairs),
        len(rated),
        time.perf_counter() - started,
        score_histogram=histogram(rated["score_argmax"]),
    )
    export(config, run.curate(k))
    return rated


# --- the per-shard work of augment and curate: one place each, for this process and for Ray actors -----


def run_engine(config: BacktranslateConfig, model: Path) -> GenerationEngine:
    """The engine for a model of this run, which its rows name within the run folder (`name_of`)."""
    name = RunFolder(config.run_dir).name_of(model)
    return make_engine(config, str(model), config.generation_batch_size, config.trust_remote_code, name=name)


def augment_shard_fn(
    config: BacktranslateConfig, settings: SFTSettings, backward: Path
) -> Callable[[list[dict], int], list[dict]]:
    """Myx writing one instruction per segment of a shard; its engine is built here, once per process."""
    engine = run_engine(config, backward)
    tokenizer = engine.tokenizer

    def write_instructions(rows: list[dict], shard: int) -> list[dict]:
        # seeded by the shard: the same samples on any rerun, in any process or Ray actor
        seed = settings.seed * 1_000_003 + shard
        params = SamplingParams(config.max_instruction_tokens, config.temperature, config.top_p, seed=seed)
        prompts = [prompt_ids(tokenizer, backward_example("", r["text"])) for r in rows]
        completions = engine.generate(prompts, params, "augment")
        instructions = tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [
            {
                "segment_id": r["segment_id"],
                "source": r["source"],
                "instruction": i.strip(),
                "response": r["text"],
                "generating_model": engine.name,
                "iteration": 0,
            }
            for r, i in zip(rows, instructions, strict=True)
        ]

    return write_instructions


def curate_shard_fn(
    config: BacktranslateConfig, rater_path: Path, k: int
) -> Callable[[list[dict], int], list[dict]]:
    """M(k-1) rating the pairs of a shard; its engine is built here, once per process."""
    engine = run_engine(config, rater_path)

    def rate(rows: list[dict], shard: int) -> list[dict]:
        scores = rate_pairs(
            engine,
            engine.tokenizer,
            [(r["instruction"], r["response"]) for r in rows],
            batch_size=config.generation_batch_size,
            mode=config.curation_mode,
            max_reasoning_tokens=config.max_reasoning_tokens,
        )
        return [
            r | s | {"scoring_model": engine.name, "iteration": k} for r, s in zip(rows, scores, strict=True)
        ]

    return rate


def run_shards(
    config: BacktranslateConfig,
    rows: list[dict],
    folder: Path,
    fingerprint: dict,
    desc: str,
    factory: Callable[..., Callable[[list[dict], int], list[dict]]],
    *args,
) -> None:
    """The shards `folder` lacks, computed by `factory(*args)` here, or on Ray actors with `--ray`."""
    if config.ray:
        runner = ray_runner(factory, args, config.ray_actors, config.ray_address, config.ray_gpus_per_actor)
        run_sharded(rows, folder, config.shard_size, None, fingerprint, desc, runner=runner)
    else:
        run_sharded(rows, folder, config.shard_size, factory(*args), fingerprint, desc)


def stage_select(config: BacktranslateConfig, settings: SFTSettings, k: int) -> list[dict]:
    run = RunFolder(config.run_dir)
    if finished(run, f"select_{k}"):
        return read_parquet(run.selected(k))
    started = time.perf_counter()
    rated = read_shards(run.require(run.curate(k), f"curate --iteration {k}")).to_list()
    column = "score_argmax" if config.select_by == "argmax" else "score_expectation"
    selected = [r for r in rated if r[column] >= config.min_score]
    write_parquet(run.selected(k), selected)
    counts = histogram([r["score_argmax"] for r in rated])
    print_histogram(counts, f"iteration {k}: score histogram (argmax)")
    if not selected:
        print(
            f"[select_{k}] no pair has {column} >= {config.min_score}: M{k} will learn from the seed pairs "
            "only. Lower --min_score, or use --select_by expectation (see the histogram above)."
        )
    record(
        run,
        f"select_{k}",
        len(rated),
        len(selected),
        time.perf_counter() - started,
        rule=f"{column} >= {config.min_score}",
        score_histogram=counts,
    )
    return selected


def stage_train(config: BacktranslateConfig, settings: SFTSettings, k: int) -> Path:
    run = RunFolder(config.run_dir)
    seed = read_parquet(run.require(run.seed_pairs, "seed"))
    selected = read_parquet(run.require(run.selected(k), f"select --iteration {k}"))
    examples = [sft_example(p["instruction"], p["response"], SEED_TAG) for p in seed]
    examples += [sft_example(p["instruction"], p["response"], WEB_TAG) for p in selected]
    return train_and_document(config, settings, f"M{k}", examples, train_sizes(len(seed), len(selected)), k)


def held_out_seed_pairs(config: BacktranslateConfig, settings: SFTSettings) -> list[dict]:
    """Seed pairs that the seed sample left out: first turns no model of the run was trained on."""
    run = RunFolder(config.run_dir)
    every, _ = load_seed_pairs(config.seed_data or str(BUILTIN_SEED), None, settings.seed, config.seed_split)
    used = {p["id"] for p in read_parquet(run.require(run.seed_pairs, "seed"))}
    return [p for p in every if p["id"] not in used]


def evaluation_configs(
    config: BacktranslateConfig, folder: Path
) -> tuple[JudgeEvalConfig, CurationEvalConfig]:
    """The judge (the base model, answers under the seed tag) and curation settings of the run."""
    shared = {
        "output_dir": str(folder),
        "split": config.seed_split,
        "batch_size": config.generation_batch_size,
        "trust_remote_code": config.trust_remote_code,
    }
    judge = JudgeEvalConfig(
        **shared,
        limit=config.eval_prompt_count,
        prompts=config.eval_prompts or "held-out seed prompts",
        baseline=base_model(config),
        judge=base_model(config),
        system_prompt=SEED_TAG,
        max_new_tokens=config.eval_max_new_tokens,
    )
    curation = CurationEvalConfig(
        **shared,
        limit=config.eval_curation_pairs,
        data=config.eval_curation_data or "held-out seed pairs and mismatched pairs",
        mode=config.curation_mode,
        max_reasoning_tokens=config.max_reasoning_tokens,
    )
    return judge, curation


def evaluation_inputs(
    config: BacktranslateConfig, settings: SFTSettings, configs: tuple
) -> tuple[list, list]:
    """(judge prompts, labelled pairs): the user's files, else built from the left-out seed pairs."""
    judge, curation = configs
    held_out = (
        [] if config.eval_prompts and config.eval_curation_data else held_out_seed_pairs(config, settings)
    )
    requests = (
        read_requests(config.eval_prompts, judge)
        if config.eval_prompts
        else [p["instruction"] for p in held_out]
    )
    if config.eval_curation_data:
        labelled = read_labelled(config.eval_curation_data, curation)
    else:
        labelled = mismatched_labels(held_out[: config.eval_curation_pairs // 2])
    return requests[: config.eval_prompt_count], labelled[: config.eval_curation_pairs]


def stage_evaluate(config: BacktranslateConfig, settings: SFTSettings) -> dict:
    """The base model and every finished M(k): answers to held-out prompts judged against the base
    model's (by the base model, both orders), and the curation AUC of each rater (M0 .. M(n-1)).

    Writes <run_dir>/evaluation/ (per-eval JSON and Parquet, each kept and reused by a rerun),
    <run_dir>/eval_results.json ({label: {metric: number}}) and the results onto the M(k) cards.
    """
    run = RunFolder(config.run_dir)
    names = [f"M{k}" for k in range(config.iterations + 1) if (run.model(f"M{k}") / COMPLETE_MARKER).exists()]
    models = {"base": base_model(config)} | {name: str(run.model(name)) for name in names}
    configs = evaluation_configs(config, run.evaluation)
    requests, labelled = evaluation_inputs(config, settings, configs)
    if not requests or not labelled:
        print(f"[evaluate] {len(requests)} judge prompts, {len(labelled)} labelled pairs (none: not run)")
    started = time.perf_counter()
    results = ModelSuite(run.evaluation, models, "base", requests, labelled, configs).run(
        [f"M{k}" for k in range(config.iterations) if f"M{k}" in models]
    )
    numbers = summary_numbers(results)
    write_json(run.eval_results, numbers)
    summary = json.loads(run.summary.read_text())
    for name in names:
        rows = eval_rows(results[name]) + eval_rows(results["base"], model="base")
        k = int(name[1:])
        sizes = train_sizes(summary["seed"]["rows_out"], summary[f"select_{k}"]["rows_out"] if k else None)
        write_model_card(
            run.model(name), backtranslation_card(config, settings, name, k, sizes, summary, rows)
        )
    print(f"[evaluate] {', '.join(models)}: {time.perf_counter() - started:.1f} s, see {run.eval_results}")
    return numbers


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
    base_model(config)  # a bad --base_model stops the run before the first stage, not at the second
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
    return json.loads(RunFolder(config.run_dir).summary.read_text())


# --- helpers -------------------------------------------------------------------------------------

AUGMENT_KNOBS = ("temperature", "top_p", "max_instruction_tokens", "shard_size", "engine", "served_model")
CURATE_KNOBS = ("curation_mode", "max_reasoning_tokens", "shard_size", "engine", "served_model")


def digest(items) -> str:
    """A short fingerprint of a stage's input, so a rerun on different input is refused, not mixed."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def asdict_subset(config: BacktranslateConfig, names: tuple[str, ...]) -> dict:
    values = asdict(config)
    return {name: values[name] for name in names}


def prompt_ids(tokenizer, example: dict) -> list[int]:
    return list(
        tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, return_dict=False)
    )


def histogram(scores) -> dict[str, int]:
    counts = Counter(int(s) for s in scores)
    return {str(d): counts.get(d, 0) for d in range(1, 6)}


def print_histogram(counts: dict[str, int], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("score")
    table.add_column("pairs", justify="right")
    table.add_column("")
    most = max(counts.values()) or 1
    for score, n in counts.items():
        table.add_row(score, str(n), "#" * round(30 * n / most))
    Console().print(table)


def export(config: BacktranslateConfig, folder: Path) -> None:
    if config.output_format == "jsonl":
        export_jsonl(folder, folder.with_suffix(".jsonl"))


def train_sizes(seed: int, selected: int | None = None) -> dict:
    """The data sizes a model card lists for M0 (seed only) and M(k) (seed + selected)."""
    sizes = {"seed pairs": seed}
    return sizes if selected is None else sizes | {"selected augmented pairs": selected}


def train_and_document(
    config: BacktranslateConfig,
    settings: SFTSettings,
    name: str,
    examples: list[dict],
    sizes: dict,
    iteration: int,
) -> Path:
    run = RunFolder(config.run_dir)
    if finished(run, f"train_{name}"):
        return run.model(name)
    started = time.perf_counter()
    out = train_sft(
        base_model(config), examples, run.model(name), settings, trust_remote_code=config.trust_remote_code
    )
    if PartialState().is_main_process:  # under `accelerate launch`, one process documents the model
        summary = json.loads(run.summary.read_text()) if run.summary.exists() else {}
        write_model_card(out, backtranslation_card(config, settings, name, iteration, sizes, summary))
        record(run, f"train_{name}", len(examples), len(examples), time.perf_counter() - started)
    return out
