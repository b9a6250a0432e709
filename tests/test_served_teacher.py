"""A distillation teacher behind vLLM's OpenAI-compatible server, for real (issue 28): its top-K log-probs
over given completion tokens equal the in-process teacher's, and each way a server can be unfit for it is
detected and named (too small a --max-logprobs, another tokenizer, a server that dies). `selftaught distill
--teacher_url` trains against it with no teacher weights in the training process, and a run whose server
dies stops in one line with its checkpoints whole, and resumes once a server is back.

The servers are real vLLM subprocesses on this CPU (tests/servers.py): the embedded SmolLM2-135M-Instruct
(up in ~75 s here) and, for the one that is killed, a tiny random model (~50 s). llama.cpp's refusal is
in test_engines.py, beside its server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from chat_samples import assert_same_top_k, assert_some_tokens_outside_the_top_k, scored_pairs
from conftest import VLLM_TINY, build_tiny_model
from safetensors.torch import load_file
from servers import vllm_server

from selftaught.cli import main
from selftaught.distill import recipe
from selftaught.distill.teachers import CompletionBatch, InProcessTeacher, ServedTeacher
from selftaught.generation.base import (
    EngineSettings,
    SamplingParams,
    TooFewLogprobsError,
    left_pad,
    right_pad,
)
from selftaught.generation.engines import make_engine
from selftaught.generation.openai_engine import TokenizerMismatchError
from selftaught.models import load_model, load_tokenizer
from selftaught.models.embedded import embedded_teacher
from selftaught.scoring.logits import join_prompt_completion
from selftaught.training.checkpoints import newest_complete_checkpoint
from selftaught.training.losses import generalized_jsd
from selftaught.training.sparse_losses import SparseTeacher, sparse_generalized_jsd

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

MAX_LOGPROBS = 32  # the server's --max-logprobs
# vLLM's CPU kernels against torch's on the same float32 weights; measured: within 6e-5 at K = 8.
MAX_LOGPROB_GAP = 1e-3


@pytest.fixture(scope="module")
def teacher_server():
    with vllm_server(embedded_teacher(), "teacher", max_logprobs=MAX_LOGPROBS) as server:
        yield server


def served_engine(base_url: str, tokenizer_folder: Path, **settings):
    """The openai engine on `base_url`, with this run's tokenizer from `tokenizer_folder`."""
    return make_engine(EngineSettings(engine="openai", base_url=base_url, **settings), str(tokenizer_folder))


@pytest.fixture(scope="module")
def hf():
    return make_engine(EngineSettings(), str(embedded_teacher()))


def test_served_top_logprobs_equal_the_in_process_teachers(teacher_server, hf):
    """Several completions per request (3 of 4, then 1), K = 8 and K = the server's maximum, one answer
    with tokens far outside the top-K: the hf engine's values, from its wider top-K where ids are tied."""
    prompts, completions = scored_pairs(hf.tokenizer)
    engine = served_engine(teacher_server.base_url, embedded_teacher())
    engine.prompts_per_request = 3
    reference = hf.completion_top_logprobs(prompts, completions, MAX_LOGPROBS + 8)
    for k in (8, MAX_LOGPROBS):
        served = engine.completion_top_logprobs(prompts, completions, k)
        for ours, theirs in zip(reference, served, strict=True):
            assert_same_top_k(ours, theirs, MAX_LOGPROB_GAP)
        assert_some_tokens_outside_the_top_k(served, completions)


def test_a_k_above_the_servers_max_logprobs_names_the_flag(teacher_server, hf):
    prompts, completions = scored_pairs(hf.tokenizer)
    engine = served_engine(teacher_server.base_url, embedded_teacher())
    with pytest.raises(
        TooFewLogprobsError, match=rf"refuses {MAX_LOGPROBS + 1} .*--max-logprobs {MAX_LOGPROBS + 1}"
    ):
        engine.completion_top_logprobs(prompts, completions, MAX_LOGPROBS + 1)


def swapped_tokenizer(folder: Path, first: str, second: str) -> Path:
    """SmolLM2's tokenizer with the ids of two tokens exchanged: another vocabulary of the same size."""
    load_tokenizer(str(embedded_teacher())).save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocabulary = spec["model"]["vocab"]
    vocabulary[first], vocabulary[second] = vocabulary[second], vocabulary[first]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_a_server_with_another_tokenizer_is_named(teacher_server, tmp_path):
    """Ours swaps the ids of " Paris" and " cats": the server reads our " Paris" as " cats". And a tokenizer
    with more tokens than the served model's: the server refuses the id, named as the same mistake."""
    ours = load_tokenizer(str(swapped_tokenizer(tmp_path / "swapped", "ĠParis", "Ġcats")))
    prompt = ours.encode("What is the capital of France?", add_special_tokens=False)
    completion = ours.encode(" The capital of France is Paris.", add_special_tokens=False)
    engine = served_engine(teacher_server.base_url, tmp_path / "swapped")
    with pytest.raises(TokenizerMismatchError, match=r"decodes token \d+ as ' cats' where .* has ' Paris'"):
        engine.completion_top_logprobs([prompt], [completion], 8)

    larger = load_tokenizer(str(embedded_teacher()))
    larger.add_tokens(["<teacher-has-no-such-token>"])
    larger.save_pretrained(tmp_path / "larger")
    completion = larger.encode(" Paris <teacher-has-no-such-token>", add_special_tokens=False)
    engine = served_engine(teacher_server.base_url, tmp_path / "larger")
    with pytest.raises(TokenizerMismatchError, match=r"has fewer tokens than this run's tokenizer .*49153"):
        engine.completion_top_logprobs([prompt], [completion], 8)


def test_a_server_killed_mid_run_fails_naming_its_url_after_the_retries(tmp_path, tokenizer_dir):
    model = build_tiny_model(tmp_path / "tiny", tokenizer_dir, seed=4, **VLLM_TINY)
    prompts, completions = [[1, 2, 3, 4, 5], [6, 7, 8]], [[9, 10, 11], [12]]
    with vllm_server(model, "tiny", max_logprobs=8) as server:
        engine = served_engine(server.base_url, model, max_retries=2, request_timeout=10)
        assert len(engine.completion_top_logprobs(prompts, completions, 8)) == 2  # a first step scored
        server.kill()
        with pytest.raises(ConnectionError, match=rf"{server.base_url}: no answer after 2 retries"):
            engine.completion_top_logprobs(prompts, completions, 8)


# --- distillation against the served teacher (distill/teachers.py) --------------------------------------


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> CompletionBatch:
    """The rows as the trainer hands them to a teacher: [left-padded prompt | right-padded completion]."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    completion_ids, completion_mask = right_pad(completions, pad_id)
    return CompletionBatch(
        join_prompt_completion(prompt_ids, prompt_mask, completion_ids, completion_mask), completion_mask
    )


def test_the_served_teachers_scores_of_a_batch_are_the_in_process_teachers(teacher_server, hf):
    """One padded batch of four completions of different lengths: the served teacher's top-32 and actual-token
    log-probs, position by position in the trainer's order, are the in-process teacher's within 1e-3, and so
    is the sparse loss of a student against either, at every beta."""
    prompts, completions = scored_pairs(hf.tokenizer)
    batch = completion_batch(prompts, completions, hf.tokenizer.pad_token_id)
    vocabulary = len(hf.tokenizer)
    logits = InProcessTeacher(hf.model, hf.tokenizer, vocabulary).scores(batch)
    reference = SparseTeacher.from_logits(logits, batch.token_ids(), MAX_LOGPROBS)
    served = ServedTeacher(teacher_server.base_url, MAX_LOGPROBS, hf.tokenizer).scores(batch)

    assert served.token_ids.tolist() == [token for completion in completions for token in completion]
    torch.testing.assert_close(served.top_log_probs, reference.top_log_probs, atol=MAX_LOGPROB_GAP, rtol=0)
    torch.testing.assert_close(
        served.token_log_probs, reference.token_log_probs, atol=MAX_LOGPROB_GAP, rtol=0
    )
    student = torch.Generator().manual_seed(0)
    student_logits = torch.randn(len(served.token_ids), vocabulary, generator=student) * 4
    for beta in (0.0, 0.5, 1.0):
        ours = sparse_generalized_jsd(student_logits, reference, beta)
        torch.testing.assert_close(
            sparse_generalized_jsd(student_logits, served, beta), ours, atol=1e-3, rtol=0
        )


def test_a_training_steps_requests_show_no_progress_bar(teacher_server, hf, capsys):
    """What the trainer asks each step (scores, and samples with no `desc`) draws no bar; the held-out
    evaluation's answers, asked with a `desc`, do."""
    prompts, completions = scored_pairs(hf.tokenizer)
    teacher = ServedTeacher(teacher_server.base_url, 8, hf.tokenizer)
    capsys.readouterr()
    teacher.scores(completion_batch(prompts, completions, hf.tokenizer.pad_token_id))
    teacher.generate(prompts[:2], SamplingParams(4, temperature=1.0, seed=3), None)
    assert capsys.readouterr().err == ""
    teacher.generate(prompts[:2], SamplingParams(4, temperature=0.0), "teacher answers")
    assert "teacher answers" in capsys.readouterr().err


def distill_argv(student: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--student", str(student),
        "--data", str(data),
        "--output_dir", str(out),
        "--lmbda", "1",
        "--per_device_train_batch_size", "2",
        "--max_new_tokens", "8",
        "--eval_max_new_tokens", "8",
        "--save_steps", "1",
        "--report_to", "none",
        "--use_cpu",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


def test_distill_trains_nothing_against_a_server_unfit_for_the_run(
    teacher_server, tiny_student, math_data, tmp_path, capsys
):
    """A K above the server's --max-logprobs, and a student whose tokenizer maps ids to other tokens than the
    server's: each stops `selftaught distill` with exit 2 and one line, before any step is trained (the
    second saying where a teacher with another tokenizer can run)."""
    student = tmp_path / "swapped"
    shutil.copytree(tiny_student, student)
    swapped_tokenizer(student, "Ġhelpful", "Ġcats")  # " helpful" is in SmolLM2's system prompt
    too_many = MAX_LOGPROBS + 1
    for model, top_k, expected in (
        (tiny_student, too_many, rf"refuses {too_many} log-probs .*--max-logprobs {too_many}"),
        (
            student,
            MAX_LOGPROBS,
            r"decodes token \d+ as ' cats' where this run's tokenizer .* has ' helpful'.* load it in this "
            r"process: --teacher MODEL without --teacher_url\.$",
        ),
    ):
        out = tmp_path / f"out-{top_k}"
        argv = ["--teacher_url", teacher_server.base_url, "--teacher_top_k", str(top_k), "--max_steps", "1"]
        with pytest.raises(SystemExit) as stop:
            main(distill_argv(model, math_data, out, *argv, "--eval_size", "0"))
        assert stop.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("selftaught distill: error: ") and re.search(expected, line), line
        assert not list(out.glob("checkpoint-*")) and not (out / "metrics.jsonl").exists()


def test_distill_trains_on_policy_against_a_served_teacher_without_loading_it(
    teacher_server, tiny_student, math_data, tmp_path, monkeypatch
):
    """`selftaught distill --teacher_url URL --teacher_top_k 32`: two on-policy steps on a real loss, a saved
    model, held-out distances to the served teacher; the only weights loaded are the student's."""
    loaded = []
    load_model = recipe.load_model
    monkeypatch.setattr(
        recipe, "load_model", lambda name, *rest: loaded.append(name) or load_model(name, *rest)
    )
    out = tmp_path / "out"
    argv = ["--teacher_url", teacher_server.base_url, "--teacher_top_k", "32", "--max_steps", "2"]
    main(distill_argv(tiny_student, math_data, out, *argv, "--eval_size", "2"))

    assert loaded == [str(tiny_student)]
    assert load_file(out / "model.safetensors")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["on_policy"] == 1.0 for r in steps)
    assert all(0 < r["loss"] < float("inf") for r in steps)
    results = json.loads((out / "eval_results.json").read_text())
    for model in ("student_before", "student_after"):  # top-K divergences: named as the bounds they are
        assert "forward_kl" not in results[model] and results[model]["forward_kl_sparse"] > 0
        assert results[model]["nll"] > 0 and 0 <= results[model]["top1_agreement"] <= 1
    assert results["teacher"]["mean_tokens"] > 0  # the server's own greedy answers
    card = (out / "README.md").read_text()
    assert "served over HTTP (its top-32 log-probabilities per token)" in card
    assert "127.0.0.1" not in card  # the server's address is the user's machine's


@pytest.fixture(scope="module")
def tiny_teacher_server(tmp_path_factory, tokenizer_dir):
    """A tiny random model on SmolLM2's tokenizer, served with --max-logprobs = the whole vocabulary (49,152).
    The last test of this module kills it."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-teacher"), tokenizer_dir, seed=4, **VLLM_TINY)
    with vllm_server(folder, "tiny", max_logprobs=VOCABULARY) as server:
        yield folder, server


VOCABULARY = 49152  # SmolLM2's tokenizer, and the tiny models' output rows


def test_at_k_equal_to_the_vocabulary_the_served_loss_is_the_dense_loss(tiny_teacher_server, tokenizer):
    """With every token's log-probability served there is no tail bin: the sparse JSD on the server's answer
    is the dense JSD on the in-process teacher's logits (float32 kernels of vLLM and torch: 1e-4)."""
    folder, server = tiny_teacher_server
    prompt = tokenizer.encode("What is 2 + 3?", add_special_tokens=False)
    batch = completion_batch([prompt, prompt[:2]], [[28, 1232, 30], [355]], tokenizer.pad_token_id)
    dense = InProcessTeacher(load_model(str(folder)), tokenizer, VOCABULARY).scores(batch)
    served = ServedTeacher(server.base_url, VOCABULARY, tokenizer).scores(batch)
    assert served.top_ids.shape == (4, VOCABULARY)
    student_logits = torch.randn(4, VOCABULARY, generator=torch.Generator().manual_seed(0)) * 4
    for beta in (0.0, 0.5, 1.0):
        expected = generalized_jsd(student_logits, dense, beta)
        torch.testing.assert_close(
            sparse_generalized_jsd(student_logits, served, beta), expected, atol=1e-4, rtol=0
        )


def newest_step(out: Path) -> int:
    newest = newest_complete_checkpoint(out)
    return int(newest.name.rpartition("-")[2]) if newest else 0


def test_a_served_teacher_that_dies_mid_run_stops_it_in_one_line_and_it_resumes_once_back(
    tiny_teacher_server, tiny_student, math_data, tmp_path
):
    """The server is killed after the second checkpoint: the run ends with exit 2 and one line, its last,
    naming the server and the newest complete checkpoint, which loads; a new server (another port) and
    `--resume_from_checkpoint last` train the remaining steps: every step is logged once."""
    teacher, server = tiny_teacher_server
    out, steps = tmp_path / "out", 30
    argv = [sys.executable, "-m", "selftaught.cli"]
    argv += distill_argv(tiny_student, math_data, out, "--max_steps", str(steps), "--eval_size", "0")
    argv += ["--teacher_top_k", "8"]
    environment = os.environ | {"HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(
        [*argv, "--teacher_url", server.base_url], stderr=subprocess.PIPE, text=True, env=environment
    )
    deadline = time.monotonic() + 300
    while newest_step(out) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    server.kill()
    _, stderr = run.communicate(timeout=300)
    stopped_at = newest_step(out)
    assert run.returncode == 2, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("selftaught distill: error: the served teacher does not answer: ")
    assert server.base_url in line and f"checkpoint-{stopped_at} is the newest complete checkpoint" in line
    assert line.endswith("rerun with --resume_from_checkpoint last")
    assert 2 <= stopped_at < steps
    assert load_file(out / f"checkpoint-{stopped_at}" / "model.safetensors")

    with vllm_server(teacher, "tiny", max_logprobs=8) as restarted:
        resume = [*argv, "--teacher_url", restarted.base_url, "--resume_from_checkpoint", "last"]
        subprocess.run(resume, check=True, env=environment, capture_output=True)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, steps + 1))  # each step once
    assert load_file(out / "model.safetensors")
