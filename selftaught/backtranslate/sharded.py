"""The per-shard work of `augment` and `curate`: one place each, for this process and for Ray actors.

`run_shards` checks the stage folder's manifest before anything loads (a rerun with other settings is
refused at once, naming the settings that differ), then builds the engine only when a shard is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.examples import backward_example
from selftaught.backtranslate.runfolder import RunFolder
from selftaught.backtranslate.stages import AUGMENT
from selftaught.data.ray_pipeline import ray_runner
from selftaught.data.shards import check_folder, run_sharded
from selftaught.generation.base import GenerationEngine, SamplingParams
from selftaught.generation.engines import make_engine
from selftaught.scoring.curation import score_modes
from selftaught.training.sft import SFTSettings

ShardFn = Callable[[list[dict], int], list[dict]]


def prompt_ids(tokenizer, example: dict) -> list[int]:
    return list(
        tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, return_dict=False)
    )


def run_engine(config: BacktranslateConfig, model: Path) -> GenerationEngine:
    """The engine for a model of this run, which its rows name within the run folder (`name_of`)."""
    name = RunFolder(config.run_dir).name_of(model)
    return make_engine(config, str(model), config.generation_batch_size, config.trust_remote_code, name=name)


def augment_shard_fn(config: BacktranslateConfig, settings: SFTSettings, backward: Path) -> ShardFn:
    """Myx writing one instruction per segment of a shard; its engine is built here, once per process."""
    engine = run_engine(config, backward)
    tokenizer = engine.tokenizer

    def write_instructions(rows: list[dict], shard: int) -> list[dict]:
        # seeded by the shard: the same samples on any rerun, in any process or Ray actor
        seed = settings.seed * 1_000_003 + shard
        params = SamplingParams(config.max_instruction_tokens, config.temperature, config.top_p, seed=seed)
        prompts = [prompt_ids(tokenizer, backward_example("", r["text"])) for r in rows]
        completions = engine.generate(prompts, params, AUGMENT.name())
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


def curate_shard_fn(config: BacktranslateConfig, rater: Path, backward: Path, k: int) -> ShardFn:
    """The pairs of a shard scored in every curation mode: by M(k-1), and by Myx for `backward`. The
    engines are built here, once per process, each only if a mode needs it."""
    modes = config.curation_modes
    rater_engine = run_engine(config, rater) if set(modes) - {"backward"} else None
    backward_engine = run_engine(config, backward) if "backward" in modes else None
    engines = {mode: backward_engine if mode == "backward" else rater_engine for mode in modes}

    def score(rows: list[dict], shard: int) -> list[dict]:
        pairs = [(r["instruction"], r["response"]) for r in rows]
        fields = score_modes(
            engines,
            pairs,
            modes,
            config.max_reasoning_tokens,
            config.max_scored_tokens,
            config.generation_batch_size,
        )
        scored = [
            dict(r, curation_mode=config.curation_mode, iteration=k) | values
            for r, values in zip(rows, fields, strict=True)
        ]
        for row in scored:  # which model computed which fields
            if rater_engine is not None:
                row["scoring_model"] = rater_engine.name
            if backward_engine is not None:
                row["backward_model"] = backward_engine.name
        return scored

    return score


def run_shards(
    config: BacktranslateConfig,
    rows: list[dict],
    folder: Path,
    fingerprint: dict,
    desc: str,
    redo: str,
    factory: Callable[..., ShardFn],
    *args,
) -> None:
    """The shards `folder` lacks, computed by `factory(*args)` here, or on Ray actors with `--ray`.

    The folder's manifest is checked first, so a mismatch is reported before any model loads, and here
    the model is loaded only once a shard is actually missing."""
    check_folder(rows, folder, config.shard_size, fingerprint, redo)
    if config.ray:
        runner = ray_runner(factory, args, config.ray_actors, config.ray_address, config.ray_gpus_per_actor)
        run_sharded(rows, folder, config.shard_size, None, fingerprint, desc, runner=runner, redo=redo)
        return
    built: list[ShardFn] = []

    def process(chunk: list[dict], shard: int) -> list[dict]:
        if not built:
            built.append(factory(*args))
        return built[0](chunk, shard)

    run_sharded(rows, folder, config.shard_size, process, fingerprint, desc, redo=redo)
