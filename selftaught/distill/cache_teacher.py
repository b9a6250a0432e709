"""`selftaught distill cache-teacher`: run the teacher once over the training data and store what distillation
needs from it (`distill.teacher_cache` describes the format), so that training never loads it.

The work goes through `data.shards` as the backtranslation stages' does: shard k holds training rows
[k*S, (k+1)*S), committed atomically; a killed run (kill -9 included) resumes where it stopped, and a rerun
with other settings is refused naming them. A shard damaged after it was committed (truncated, emptied) is
deleted with a message and recomputed. The teacher loads only once a shard is missing. Any engine serves:
hf in this process, vLLM, or a teacher behind an OpenAI-compatible server that returns prompt log-probs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selftaught.data.folder_lock import writing_to
from selftaught.data.formats import tokenize_examples
from selftaught.data.shards import check_folder, committed_shards, run_sharded, shard_seconds, write_json
from selftaught.distill.config import CacheTeacherConfig
from selftaught.distill.recipe import BUILTIN_DATA, load_examples, read_split
from selftaught.distill.teacher_cache import DATA_SAMPLE, HELD_OUT, SUMMARY, content_key, run_settings
from selftaught.evaluate.distance import held_out_prompt_ids
from selftaught.generation.base import EngineSettings, GenerationEngine, SamplingParams
from selftaught.generation.engines import make_engine
from selftaught.models import load_tokenizer
from selftaught.models.check import check_model_flags
from selftaught.models.naming import is_local, model_label

COMMAND = "selftaught distill cache-teacher"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")
SAMPLED_BYTES = 1 << 20  # bytes read from each end of each weights file for the teacher's fingerprint


def teacher_identity(teacher: str, settings: EngineSettings) -> dict:
    """The teacher as the manifest records it: its name (never a path of this machine) and, for local
    weights, a hash of each weights file's name, size and first and last MiB: a cheap stand-in for hashing
    every byte of a large model, which still tells two checkpoints of one model apart."""
    if settings.engine == "openai":
        return {"name": settings.served_model or model_label(teacher), "served": True}
    if not is_local(teacher):
        return {"name": teacher}
    path = Path(teacher).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(SAMPLED_BYTES))
            f.seek(max(size - SAMPLED_BYTES, 0))
            digest.update(f.read(SAMPLED_BYTES))
    return {"name": model_label(teacher), "weights": digest.hexdigest()}


def teacher_records(
    engine: GenerationEngine, config: CacheTeacherConfig, rows: list[dict], shard: int
) -> list[dict]:
    """The cache records of one shard's rows: each data completion, and `samples` teacher samples per row,
    scored by the teacher after its own prompt. Samples are seeded by (seed, shard): reruns draw the same."""
    prompts = [r["teacher_prompt_ids"] for r in rows]
    jobs = [(r["row"], DATA_SAMPLE, p, r["completion_ids"]) for r, p in zip(rows, prompts, strict=True)]
    jobs = [job for job in jobs if job[3]]  # prompt-only rows have no data completion to score
    for sample in range(config.samples):
        seed = (config.seed * 1_000_003 + shard) * config.samples + sample
        params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p, seed=seed)
        drawn = engine.generate(prompts, params, f"teacher samples {sample + 1}/{config.samples}")
        jobs += [(r["row"], sample, p, c) for r, p, c in zip(rows, prompts, drawn, strict=True)]
    jobs.sort(key=lambda job: job[:2])
    return scored_records(engine, jobs, config.top_k)


def held_out_records(
    engine: GenerationEngine, config: CacheTeacherConfig, rows: list[dict], shard: int
) -> list[dict]:
    """The held-out part's records of one shard of held-out prompts: the teacher's greedy answer to each
    (as the held-out evaluation asks for it), scored by the teacher after the prompt, as sample 0."""
    prompts = [r["teacher_prompt_ids"] for r in rows]
    params = SamplingParams(config.eval_max_new_tokens, temperature=0.0)
    answers = engine.generate(prompts, params, "teacher held-out answers")
    return scored_records(
        engine, [(r["row"], 0, p, a) for r, p, a in zip(rows, prompts, answers, strict=True)], config.top_k
    )


def scored_records(engine: GenerationEngine, jobs: list[tuple], top_k: int) -> list[dict]:
    """A cache record per (row, sample, teacher prompt ids, completion ids) job, with the teacher's top-K."""
    scored = engine.completion_top_logprobs([j[2] for j in jobs], [j[3] for j in jobs], top_k, "teacher")
    return [
        {
            "row": row,
            "sample": sample,
            "prompt_key": content_key(prompt),
            "completion_ids": np.asarray(completion, dtype=np.int32),
            "top_ids": top.top_ids.numpy().astype(np.int32).ravel(),
            "top_logprobs": top.top_logprobs.numpy().astype(np.float32).ravel(),
            "token_logprobs": top.token_logprobs.numpy().astype(np.float32),
        }
        for (row, sample, prompt, completion), top in zip(jobs, scored, strict=True)
    ]


def drop_damaged_shards(folder: Path) -> None:
    """Delete committed shards that no longer read as Parquet (truncated or emptied after their commit), so
    that the run below recomputes them. Commits are atomic, so only damage from outside makes one."""
    for path in committed_shards(folder):
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as err:
            print(f"[cache-teacher] {path.name} is damaged ({err}): recomputing it")
            path.unlink()


def summarise(folder: Path) -> dict:
    """What the cache holds and what it costs on disk, per completion token (`summary.json`)."""
    shards = committed_shards(folder)
    lengths = [n for p in shards for n in pq.read_table(p, columns=["completion_ids"]).column(0).to_pylist()]
    tokens = sum(map(len, lengths))
    size = sum(p.stat().st_size for p in shards)
    return {
        "completions": len(lengths),
        "completion_tokens": tokens,
        "bytes_on_disk": size,
        "bytes_per_completion_token": size / max(tokens, 1),
        "teacher_seconds": shard_seconds(folder),
    }


def cache_teacher(config: CacheTeacherConfig, settings: EngineSettings) -> dict:
    """Write (or resume) the cache in `config.output_dir`; returns its summary."""
    check_model_flags({"--teacher": config.teacher})
    if config.teacher is None:
        from selftaught.models.embedded import embedded_teacher

        config.teacher = str(embedded_teacher())
    config.data = config.data or str(BUILTIN_DATA)
    examples = read_split(config, config.data_split)
    held_out = load_examples(config)[1]  # the held-out rows `selftaught distill` evaluates on these flags
    tokenizer = load_tokenizer(config.teacher, config.trust_remote_code)
    lengths = (config.max_prompt_length, config.max_new_tokens)
    tokenized = tokenize_examples(tokenizer, examples, *lengths).to_list()
    # the teacher reads its own prompt (with --teacher_context), else the student's
    rows = [
        {**r, "row": i, "teacher_prompt_ids": r.get("teacher_prompt_ids") or r["prompt_ids"]}
        for i, r in enumerate(tokenized)
    ]
    params = run_settings(tokenizer, examples, config.data_split, *lengths, config.teacher_context) | {
        "teacher": teacher_identity(config.teacher, settings),
        "top_k": config.top_k,
        "samples": config.samples,
    }
    if config.samples:
        params |= {"temperature": config.temperature, "top_p": config.top_p, "seed": config.seed}
    # the held-out evaluation's prompts of the teacher
    held_out_rows = [
        {
            "row": i,
            "teacher_prompt_ids": held_out_prompt_ids(tokenizer, e.teacher_prompt or e.prompt, lengths[0]),
        }
        for i, e in enumerate(held_out)
    ]
    held_out_params = run_settings(
        tokenizer,
        held_out,
        "held-out",
        config.max_prompt_length,
        config.eval_max_new_tokens,
        config.teacher_context,
    ) | {"teacher": params["teacher"], "top_k": config.top_k, "samples": 1, "temperature": 0.0}
    folder = Path(config.output_dir)
    built: list[GenerationEngine] = []

    def engine() -> GenerationEngine:
        if not built:  # the teacher loads only once a shard is missing
            name = params["teacher"]["name"]
            built.append(
                make_engine(
                    settings,
                    config.teacher,
                    config.batch_size,
                    config.trust_remote_code,
                    config.teacher_dtype,
                    name,
                    tokenizer,
                    max_logprobs=config.top_k,
                )
            )
        return built[0]

    parts = [(folder, rows, params, teacher_records, "cache-teacher")]
    if held_out_rows:
        parts.append(
            (folder / HELD_OUT, held_out_rows, held_out_params, held_out_records, "held-out answers")
        )
    with writing_to(folder, COMMAND, "another --output_dir"):
        if not config.overwrite:
            for part, part_rows, part_params, *_ in parts:
                check_folder(part_rows, part, config.shard_size, part_params)
                drop_damaged_shards(part)
        for part, part_rows, part_params, records, desc in parts:
            run_sharded(
                part_rows,
                part,
                config.shard_size,
                lambda chunk, shard, records=records: records(engine(), config, chunk, shard),
                part_params,
                desc,
                config.overwrite,
            )
        summary = summarise(folder) | {"held_out_answers": len(held_out_rows)}
        write_json(folder / SUMMARY, summary)
    return summary
