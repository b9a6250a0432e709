"""A distillation teacher behind vLLM's OpenAI-compatible server, for real (issue 28): its top-K log-probs
over given completion tokens equal the in-process teacher's, and each way a server can be unfit for it is
detected and named (too small a --max-logprobs, another tokenizer, a server that dies).

The servers are real vLLM subprocesses on this CPU (tests/servers.py): the embedded SmolLM2-135M-Instruct
(up in ~75 s here) and, for the one that is killed, a tiny random model (~50 s). llama.cpp's refusal is
in test_engines.py, beside its server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_samples import assert_same_top_k, assert_some_tokens_outside_the_top_k, scored_pairs
from conftest import VLLM_TINY, build_tiny_model
from servers import vllm_server

from selftaught.generation.base import EngineSettings, TooFewLogprobsError
from selftaught.generation.engines import make_engine
from selftaught.generation.openai_engine import TokenizerMismatchError
from selftaught.models import load_tokenizer
from selftaught.models.embedded import embedded_teacher

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
