"""`selftaught distill cache-teacher` and the cache it writes, on a tiny real teacher: what it stores equals
the live teacher's top-K, it resumes after a crash, and a cache that cannot serve a run is refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from selftaught.cli import main
from selftaught.data.formats import tokenize_examples
from selftaught.distill import cache_teacher
from selftaught.distill.config import CacheTeacherConfig
from selftaught.distill.recipe import read_split
from selftaught.distill.teacher_cache import (
    DATA_SAMPLE,
    HELD_OUT,
    TeacherCache,
    TeacherCacheError,
    run_settings,
)
from selftaught.generation.engines import HFEngine
from selftaught.models import load_model, load_tokenizer
from selftaught.training.sparse_losses import PADDING_ID

K = 8
LENGTHS = ["--max_new_tokens", "16", "--max_prompt_length", "64"]
HELD_OUT_FLAGS = ["--eval_size", "2", "--eval_max_new_tokens", "8"]  # the data's last 2 rows
REDO = "`selftaught distill cache-teacher`"


def cache_flags(teacher: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "cache-teacher",
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--top_k",
        str(K),
        "--shard_size",
        "4",
        *LENGTHS,
        *HELD_OUT_FLAGS,
        "--output_dir",
        str(output),
        *extra,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import write_jsonl

    rows = [
        {
            "problem": f"What is {a} + {b}?" + " Show your work." * (a % 3),
            "solution": f"${a} + {b} = {a + b}$.",
            "answer": str(a + b),
        }
        for a in range(2, 7)
        for b in range(3, 5)
    ]
    folder = tmp_path_factory.mktemp("cache-data")
    write_jsonl(folder / "train.jsonl", rows)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_teacher, data) -> Path:
    """A cache of the tiny teacher: the data's 10 completions and one teacher sample per prompt, and its
    greedy answers to the 2 held-out prompts."""
    folder = tmp_path_factory.mktemp("cache") / "cache"
    main(cache_flags(tiny_teacher, data, folder, "--samples", "1"))
    return folder


def config_for(teacher: Path, data: Path, **overrides) -> CacheTeacherConfig:
    return CacheTeacherConfig(
        teacher=str(teacher),
        data=str(data),
        max_new_tokens=16,
        max_prompt_length=64,
        output_dir="x",
        **overrides,
    )


def test_cached_top_k_equals_the_live_teacher(cache, tiny_teacher, data):
    tokenizer = load_tokenizer(str(tiny_teacher))
    examples = read_split(config_for(tiny_teacher, data), "train")
    rows = tokenize_examples(tokenizer, examples, 64, 16)
    vocab = len(tokenizer)
    reader = TeacherCache(cache, REDO, vocab)
    cached = [reader.completion(i, sample) for i in range(len(rows)) for sample in (DATA_SAMPLE, 0)]
    # the data's completions are the training rows' own; the samples are the teacher's (EOS-ended or full)
    assert [c.completion_ids for c in cached[::2]] == rows["completion_ids"]
    assert all(0 < len(c.completion_ids) <= 16 for c in cached[1::2])

    engine = HFEngine(load_model(str(tiny_teacher), "float32"), tokenizer, batch_size=4)
    prompts = [p for p in rows["prompt_ids"] for _ in range(2)]
    live = engine.completion_top_logprobs(prompts, [c.completion_ids for c in cached], K)
    padded_slots = 0
    for got, want in zip(cached, live, strict=True):
        # the teacher's padded embedding rows (ids >= the tokenizer's size) are no token: unused slots
        padded = want.top_ids >= vocab
        padded_slots += int(padded.sum())
        assert torch.equal(got.teacher.top_ids, want.top_ids.masked_fill(padded, PADDING_ID))
        # float32, batched with other padding than here: equal to rounding
        torch.testing.assert_close(got.teacher.top_log_probs, want.top_logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.teacher.token_log_probs, want.token_logprobs, rtol=0, atol=1e-5)
        assert got.teacher.token_ids.tolist() == got.completion_ids
    assert padded_slots, "no padded row reached the teacher's top-K: the masking went untested"


def test_summary_records_bytes_per_completion_token(cache, capsys):
    import json

    summary = json.loads((cache / "summary.json").read_text())
    assert summary["completions"] == 20
    on_disk = sum(p.stat().st_size for p in cache.glob("shard-*.parquet"))
    assert summary["bytes_per_completion_token"] == on_disk / summary["completion_tokens"]


def test_a_crashed_run_resumes_and_equals_an_uninterrupted_one(
    cache, tiny_teacher, data, tmp_path, monkeypatch
):
    real = cache_teacher.teacher_records
    shards_done = []

    def crash_on_the_third_shard(engine, config, rows, shard):
        if len(shards_done) == 2:
            raise RuntimeError("killed")
        shards_done.append(shard)
        return real(engine, config, rows, shard)

    monkeypatch.setattr(cache_teacher, "teacher_records", crash_on_the_third_shard)
    folder = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed"):
        main(cache_flags(tiny_teacher, data, folder, "--samples", "1"))
    assert len(list(folder.glob("shard-*.parquet"))) == 2

    redone = []
    monkeypatch.setattr(cache_teacher, "teacher_records", lambda *a: redone.append(a[3]) or real(*a))
    main(cache_flags(tiny_teacher, data, folder, "--samples", "1"))
    assert sorted(redone) == [k for k in range(3) if k not in shards_done]  # only the missing shards
    for path in sorted(cache.glob("shard-*.parquet")):
        assert pq.read_table(folder / path.name).equals(pq.read_table(path))


def test_a_rerun_with_another_k_is_refused_naming_it(cache, tiny_teacher, data, tmp_path, capsys):
    folder = tmp_path / "cache"
    shutil.copytree(cache, folder)
    flags = cache_flags(tiny_teacher, data, folder, "--samples", "1")
    flags[flags.index("--top_k") + 1] = "16"
    with pytest.raises(SystemExit) as exit_code:
        main(flags)
    assert exit_code.value.code == 2
    assert "top_k: 8 there, 16 now" in capsys.readouterr().err


def test_a_cache_for_other_settings_is_refused_naming_what_differs(cache, tiny_teacher, data, tokenizer_dir):
    tokenizer = load_tokenizer(str(tiny_teacher))
    examples = read_split(config_for(tiny_teacher, data), "train")
    reader = TeacherCache(cache, REDO)
    reader.check(run_settings(tokenizer, examples, "train", 64, 16, None))  # the cache's own run passes

    with pytest.raises(TeacherCacheError, match=r"\(max_new_tokens: 16 there, 32 now\)"):
        reader.check(run_settings(tokenizer, examples, "train", 64, 32, None))
    with pytest.raises(TeacherCacheError, match=r"\(data differs\)"):
        reader.check(run_settings(tokenizer, examples[:-1], "train", 64, 16, None))
    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    with pytest.raises(TeacherCacheError, match=r"\(chat_template differs\)"):
        reader.check(run_settings(tokenizer, examples, "train", 64, 16, None))


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_shard_is_named_and_a_rerun_rebuilds_it(
    cache, tiny_teacher, data, tmp_path, damage, capsys
):
    folder = tmp_path / "cache"
    shutil.copytree(cache, folder)
    shard = folder / "shard-00001.parquet"
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(TeacherCacheError, match=rf"shard-00001\.parquet.*{REDO}"):
        TeacherCache(folder, REDO)

    main(cache_flags(tiny_teacher, data, folder, "--samples", "1"))
    if damage == "truncated":
        assert "shard-00001.parquet is damaged" in capsys.readouterr().out
    assert pq.read_table(shard).equals(pq.read_table(cache / shard.name))
    TeacherCache(folder, REDO).completion(4)  # row 5 lives in shard 1


def test_a_completion_is_found_by_its_prompt_and_tokens_and_an_uncached_one_refused(
    cache, tiny_teacher, data
):
    tokenizer = load_tokenizer(str(tiny_teacher))
    rows = tokenize_examples(tokenizer, read_split(config_for(tiny_teacher, data), "train"), 64, 16)
    reader = TeacherCache(cache, REDO, len(tokenizer))
    prompt = rows["prompt_ids"][3]
    for sample in (DATA_SAMPLE, 0):
        by_row = reader.completion(3, sample)
        assert torch.equal(
            reader.scored(prompt, by_row.completion_ids).teacher.top_ids, by_row.teacher.top_ids
        )
    assert reader.sample(prompt, 0) == reader.completion(3, 0).completion_ids
    with pytest.raises(TeacherCacheError, match="student's samples need --teacher or --teacher_url"):
        reader.scored(prompt, by_row.completion_ids[:-1])


def distill_flags(student: Path, cache: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--student",
        str(student),
        "--teacher_cache",
        str(cache),
        "--data",
        str(data),
        *LENGTHS,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--eval_size",
        "0",
        "--output_dir",
        str(output),
        *extra,
    ]


@pytest.mark.slow  # a whole `selftaught distill` run
@pytest.mark.parametrize(
    "completions", [["--lmbda", "0"], ["--lmbda", "0", "--seq_kd"]], ids=["data", "seq_kd"]
)
def test_distill_from_the_cache_loads_no_teacher(
    cache, tiny_student, data, tmp_path, monkeypatch, completions
):
    import json

    from selftaught.distill import recipe
    from selftaught.models import embedded

    loaded = []
    monkeypatch.setattr(recipe, "load_model", lambda path, *a: loaded.append(path) or load_model(path, *a))
    monkeypatch.setattr(embedded, "embedded_teacher", lambda: pytest.fail("the embedded teacher was built"))
    out = tmp_path / "run"
    main(distill_flags(tiny_student, cache, data, out, *completions))
    assert loaded == [str(tiny_student)]  # the student's weights, and no teacher's
    assert (out / "model.safetensors").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert "read from a cache of its top-8 log-probabilities" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lmbda", "0.5"], "no teacher is here to score them"),
        (
            ["--lmbda", "0", "--max_new_tokens", "32"],
            r"made for another run \(max_new_tokens: 16 there, 32 now\)",
        ),
        (
            ["--lmbda", "0", *HELD_OUT_FLAGS, "--eval_max_new_tokens", "16"],
            r"held-out answers of at most 8 tokens, and this run evaluates answers of 16 "
            r"\(--eval_max_new_tokens\)\. Rerun `selftaught distill cache-teacher`",
        ),
        (
            ["--lmbda", "0", *HELD_OUT_FLAGS, "--eval_size", "3"],
            r"no teacher answer to 1 of this run's 3 held-out prompts .*--eval_size 0",
        ),
    ],
    ids=["on-policy", "other-lengths", "other-answer-lengths", "other-held-out-rows"],
)
def test_distill_refuses_what_the_cache_cannot_serve(
    cache, tiny_student, data, tmp_path, capsys, flags, message
):
    with pytest.raises(SystemExit) as exit_code:
        main(distill_flags(tiny_student, cache, data, tmp_path / "run", *flags))
    assert exit_code.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, line)


def test_the_cached_teacher_scores_a_padded_batch_as_the_live_teacher_does(cache, tiny_teacher, data):
    """The trainer's view: a batch of [left-padded prompt | right-padded completion] rows of several lengths,
    scored position by position in the completion mask's order, as the in-process teacher's logits at K."""
    from selftaught.distill.teacher_cache import CachedTeacher
    from selftaught.distill.teachers import CompletionBatch, InProcessTeacher
    from selftaught.generation.base import left_pad, right_pad
    from selftaught.scoring.logits import join_prompt_completion
    from selftaught.training.sparse_losses import SparseTeacher

    tokenizer = load_tokenizer(str(tiny_teacher))
    rows = tokenize_examples(tokenizer, read_split(config_for(tiny_teacher, data), "train"), 64, 16)
    reader = TeacherCache(cache, REDO, len(tokenizer))
    picked = [(2, DATA_SAMPLE), (7, 0), (5, DATA_SAMPLE)]  # a sample among data completions, unequal lengths
    prompts = [rows["prompt_ids"][i] for i, _ in picked]
    completions = [reader.completion(i, sample).completion_ids for i, sample in picked]
    assert len({len(c) for c in completions}) > 1 and len({len(p) for p in prompts}) > 1
    joined = join_prompt_completion(*left_pad(prompts, 0), *right_pad(completions, 0))
    batch = CompletionBatch(joined, right_pad(completions, 0)[1])

    cached = CachedTeacher(reader, [tokenizer.eos_token_id]).scores(batch)
    model = load_model(str(tiny_teacher), "float32")  # its whole output layer, as the cache normalises over
    live_logits = InProcessTeacher(model, tokenizer, model.config.vocab_size).scores(batch)
    live = SparseTeacher.from_logits(live_logits, batch.token_ids(), K)
    assert torch.equal(cached.token_ids, batch.token_ids())
    assert torch.equal(cached.top_ids, live.top_ids.masked_fill(live.top_ids >= len(tokenizer), PADDING_ID))
    torch.testing.assert_close(cached.top_log_probs, live.top_log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.token_log_probs, live.token_log_probs, rtol=0, atol=1e-5)


def test_a_cache_without_held_out_answers_is_refused_and_a_rerun_adds_them(
    cache, tiny_teacher, tiny_student, data, tmp_path, capsys, monkeypatch
):
    """A cache made before caches held the held-out answers (or with --eval_size 0): a run that evaluates is
    refused naming the fix, and the fix, a rerun of cache-teacher, computes only the held-out part."""
    folder = tmp_path / "cache"
    shutil.copytree(cache, folder)
    shutil.rmtree(folder / HELD_OUT)
    with pytest.raises(SystemExit) as exit_code:
        main(distill_flags(tiny_student, folder, data, tmp_path / "run", "--lmbda", "0", *HELD_OUT_FLAGS))
    assert exit_code.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert (
        "holds no teacher answers to the held-out prompts. Rerun `selftaught distill cache-teacher`" in line
    )

    monkeypatch.setattr(cache_teacher, "teacher_records", lambda *a: pytest.fail("training rows redone"))
    main(cache_flags(tiny_teacher, data, folder, "--samples", "1"))
    assert pq.read_table(folder / HELD_OUT / "shard-00000.parquet").equals(
        pq.read_table(cache / HELD_OUT / "shard-00000.parquet")
    )


@pytest.mark.slow  # a whole `selftaught distill` run, and an in-process evaluation to compare with
def test_distill_from_the_cache_evaluates_held_out_exactly_where_it_can(
    cache, tiny_student, tiny_teacher, data, tmp_path
):
    import json

    from selftaught.evaluate.distance import SPARSE_DIVERGENCES, HeldOutEvaluation, HeldOutSettings
    from selftaught.models import shared_vocab_size

    out = tmp_path / "run"
    main(distill_flags(tiny_student, cache, data, out, "--lmbda", "0", *HELD_OUT_FLAGS))
    results = json.loads((out / "eval_results.json").read_text())
    assert {"teacher", "student_before", "student_after", "comparisons"} <= results.keys()
    before = results["student_before"]
    # the divergences on the cached top-K are named apart from the full-vocabulary ones
    assert (
        set(SPARSE_DIVERGENCES) <= before.keys() and not {"forward_kl", "reverse_kl", "jsd"} & before.keys()
    )

    # the same student evaluated against the live teacher (full logits) on the same held-out rows
    tokenizer = load_tokenizer(str(tiny_student))
    student, teacher = load_model(str(tiny_student), "float32"), load_model(str(tiny_teacher), "float32")
    held_out = read_split(config_for(tiny_teacher, data), "train")[-2:]
    settings = HeldOutSettings(8, 8, shared_vocab_size(tokenizer, student, teacher), 64)
    live = HeldOutEvaluation(teacher, tokenizer, held_out, tmp_path / "live", settings)
    cached_answers = pq.read_table(out / "evaluation" / "teacher.parquet").column("completion_ids")
    assert [r["completion_ids"] for r in live.teacher_rows] == cached_answers.to_pylist()
    dense = live.metrics(student, "student")
    assert before["tokens"] == dense["tokens"]
    # exact from the cache: the student's NLL of the teacher's answers, and top-1 agreement
    assert before["nll"] == pytest.approx(dense["nll"], abs=1e-5)
    assert before["top1_agreement"] == dense["top1_agreement"]
    # the rest are lower bounds of the full-vocabulary divergences
    for name in ("forward_kl", "reverse_kl", "jsd"):
        assert 0 < before[f"{name}_sparse"] <= dense[name] + 1e-6
