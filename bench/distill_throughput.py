"""On-policy distillation throughput: selftaught's GKDistillTrainer, TRL's GKDTrainer and DistillationTrainer.

One configuration, three trainers, each in its own fresh interpreter (so imports, caches and peak memory
do not leak between them):

    lmbda = 1 (every step samples from the student), beta = 0.5, sampling temperature 0.9,
    max_new_tokens = 128, per-device batch 4, gradient accumulation 1, learning rate 1e-5, seed 42,
    float32 on CPU, the embedded models (teacher SmolLM2-135M-Instruct, 10-layer student cut from it),
    and the first steps x batch rows of the shipped math prompts, read in order by every trainer.
    Everything else is each trainer's own default (TRL's configs turn gradient checkpointing on).

`selftaught-served` is selftaught with the teacher behind vLLM's OpenAI-compatible server on this machine
(`--teacher_url`, top-32 log-probabilities, the sparse JSD; issue 28): the server (started as the tests start
it, tests/servers.py) shares the CPU with training, and its memory is not the training process's. For both
selftaught rows the step is split into where its time goes: the student's sampling, the teacher's scores
(a forward in this process, or the HTTP requests to the server), and the rest (student forward, backward,
optimizer). `--only selftaught --only selftaught-served` compares the two.

A fourth subprocess times the parts of one step on their own (sampling with the KV cache, teacher
forward, student forward + backward) on one batch: their sum is a floor no trainer's step can beat.

The host's speed drifts (by a third within minutes on a shared 2-core machine), so the trainers do not run
one after another: they alternate in rounds (A B C A B C ..., --rounds, 3 by default), each round a fresh
subprocess per trainer training --steps steps (the first a warm-up), and every ratio is taken within a
round and reported as the median [range] of the rounds'. A fixed reference (the student's forward on a
fixed batch, in this process) is timed before every round and after the last: its end / start is the
drift. --append adds rounds to an earlier run's JSON, so a long run can be split into chunks.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_throughput.py            # 3 rounds (~15 min, CPU)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_throughput.py --steps 2 --max-new-tokens 8   # smoke
    ... --only selftaught --only parts                                        # a subset
    ... --rounds 2 --output X.json; ... --rounds 2 --output X.json --append   # 4 rounds in two chunks

What is measured, per trainer:
- trained completion tokens: the positions whose divergence enters the loss, counted from the very
  tensors each trainer's `compute_loss` receives (a thin subclass records them; no trainer logic changes):
  selftaught and DistillationTrainer: `completion_mask.sum()`; GKDTrainer: `(labels[:, 1:] != -100).sum()`
  (its on-policy labels mask the prompt, the padding and all after the first EOS). Padding never counts.
- seconds per step: time between consecutive `on_step_end` callbacks (so sampling, wherever a trainer
  does it, is inside the step); the first step of each round is warm-up and left out; the median of the
  rest, per round.
- tokens per second: trained tokens of a round's steps after the first / their total time.
- peak RSS: `ru_maxrss` of the subprocess at its end (models, data, optimizer state, activations).
- first-batch loss: the value the first `compute_loss` returned (what was back-propagated), with the
  denominator it was divided by, and the per-trained-token mean it implies, to compare across trainers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from common import (  # bench/common.py
    REFERENCE,
    drift,
    forward_reference,
    interleave,
    median_range,
    spreads,
    write_result,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "selftaught" / "data" / "builtin" / "math_prompts" / "train.jsonl"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "distill_throughput.json"

RUNNERS = (
    "selftaught", "selftaught-async1", "selftaught-served", "selftaught-vllm",
    "gkd", "distillation", "distillation-vllm",
)  # fmt: skip
VLLM_RUNNERS = {"selftaught-vllm": "selftaught", "distillation-vllm": "distillation"}  # and their hf twins
PARTS = "parts"
SERVED_TOP_K = 32  # the served teacher's log-probabilities per position
LMBDA, BETA, TEMPERATURE, LEARNING_RATE, SEED = 1.0, 0.5, 0.9, 1e-5, 42

LOSS_NOTES = """\
Loss conventions (read from each trainer's compute_loss; the table's "loss/tok" undoes each denominator):
- selftaught: samples at T=0.9 but computes the JSD at temperature 1 (the models' own distributions); sums
  it over completion tokens (through the first EOS) and divides by the completion tokens of the whole
  optimizer step (all micro-batches and processes). Logits only at completion positions (logits_to_keep).
- TRL GKDTrainer: also samples at T=0.9 and, in this TRL version, also computes the JSD at temperature 1:
  compute_loss never passes its temperature to generalized_jsd_loss. It sums over labels != -100 (the
  sampled tokens through the first EOS) but divides by num_items_in_batch, which transformers counts
  from the dataset's labels (the reference solutions) before the on-policy sample replaces them, so its
  loss is the mean JSD x (sampled tokens / reference-solution tokens). Full-sequence logits for both
  models, prompt included.
- TRL DistillationTrainer: divides both models' logits by the temperature (0.9) inside the loss, so its
  JSD is between sharper distributions and not directly comparable; sums over sampled completion tokens
  and divides by the sampled tokens of the generation batch (= the step here). Chunked lm_head projection.
Other defaults that differ: both TRL configs default to gradient_checkpointing=True (the student forward is
recomputed in backward); GKDTrainer then also generates with use_cache=False (no KV cache), which
DistillationTrainer does not (the table's "ckpt" and "kv" columns: what each trainer actually ran with).
Completions differ between trainers (each draws its own samples), so tokens per step differ: compare
tokens/s rather than s/step."""


# --- the prompts: the first N rows, prompted exactly as selftaught does ------------------------------


def load_examples(n: int) -> list:
    """selftaught's `Example`s for the first `n` rows: user = problem + the boxed-answer instruction."""
    from selftaught.data.formats import to_examples
    from selftaught.data.loading import load_rows

    rows = load_rows(str(DATA))
    if len(rows) < n:
        raise SystemExit(f"{DATA} has {len(rows)} rows; --steps x --batch-size needs {n}")
    return to_examples(rows.select(range(n)), str(DATA))


def model_paths() -> tuple[str, str]:
    """(teacher, student) folders of the embedded default, built and cached on first use."""
    from selftaught.models.embedded import embedded_student, embedded_teacher

    return str(embedded_teacher()), str(embedded_student())


def load_models():
    """(tokenizer, teacher, student): the same float32 objects for every trainer, via selftaught's loader."""
    from selftaught.models import load_model, load_tokenizer

    teacher_path, student_path = model_paths()
    teacher, student = load_model(teacher_path, "float32"), load_model(student_path, "float32")
    return load_tokenizer(student_path), teacher, student


def common_args(args: argparse.Namespace, output_dir: str) -> dict:
    """TrainingArguments every trainer gets; the rest stays at each trainer's default."""
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps,
        learning_rate=LEARNING_RATE,
        seed=SEED,
        use_cpu=True,
        bf16=False,  # float32 (TRL's configs would otherwise default to bf16)
        train_sampling_strategy="sequential",  # the same prompts in the same step for every trainer
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
    )


# --- measuring inside a trainer ---------------------------------------------------------------------


class Probe:
    """What each training `compute_loss` call saw, and when each optimizer step ended."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.denominators: list[float] = []
        self.batch_tokens: list[int] = []
        self.step_tokens: list[int] = []
        self.step_seconds: list[float] = []
        self.parts: dict[str, list[float]] = {}  # seconds per step in `timed_part`s (selftaught's rows)
        self._parts_since_step: dict[str, float] = {}
        self._tokens_since_step = 0
        self._last_time = time.perf_counter()

    def record_batch(self, loss: float, tokens: int, denominator: float) -> None:
        self.losses.append(loss)
        self.batch_tokens.append(tokens)
        self.denominators.append(denominator)
        self._tokens_since_step += tokens

    def start(self) -> None:
        self._last_time = time.perf_counter()

    def timed_part(self, part: str, fn):
        """`fn`, adding the seconds of each call to `part` of the current step."""

        def timed_fn(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self._parts_since_step[part] = self._parts_since_step.get(part, 0.0) + spent

        return timed_fn

    def end_step(self) -> tuple[float, int]:
        now = time.perf_counter()
        self.step_seconds.append(now - self._last_time)
        self.step_tokens.append(self._tokens_since_step)
        for part in self.parts.keys() | self._parts_since_step.keys():
            self.parts.setdefault(part, []).append(self._parts_since_step.get(part, 0.0))
        self._parts_since_step = {}
        self._last_time, self._tokens_since_step = now, 0
        return self.step_seconds[-1], self.step_tokens[-1]


class ProbedLoss:
    """Mixed in before a trainer class: calls its compute_loss unchanged and records the batch."""

    probe: Probe

    def trained_tokens(self, inputs: dict) -> int:
        raise NotImplementedError

    def loss_denominator(self, inputs: dict, num_items_in_batch) -> float:
        if num_items_in_batch is None:
            return float(self.trained_tokens(inputs))
        return float(num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = result[0] if return_outputs else result
            self.probe.record_batch(
                float(loss.detach()),
                self.trained_tokens(inputs),
                self.loss_denominator(inputs, num_items_in_batch),
            )
        return result


def step_callback(name: str, probe: Probe, total: int):
    """A TrainerCallback closing each step's clock and printing one line per step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            probe.start()

        def on_step_end(self, args, state, control, **kwargs):
            seconds, tokens = probe.end_step()
            loss = probe.losses[-1] if probe.losses else float("nan")
            print(
                f"  [{name}] step {state.global_step}/{total}: {seconds:.2f} s, {tokens} trained tokens, "
                f"loss {loss:.4f}",
                flush=True,
            )

    return StepClock()


# --- the three trainers, built as each project documents --------------------------------------------


def build_selftaught(
    args: argparse.Namespace,
    probe: Probe,
    output_dir: str,
    engine: str = "hf",
    served: bool = False,
    max_staleness: int = 0,
):
    """As selftaught/distill/recipe.py does: DistillConfig, tokenize_examples, GKDistillTrainer; `engine`
    vllm samples through a colocated vLLM (on CPU: in this process), weights pushed once per step; `served`:
    the teacher behind a vLLM server (started here, stopped when this process exits), no teacher weights
    loaded in this process; `max_staleness` 1: the next step sampled in a thread beside training (its
    "student_sampling" part is then the trainer's wait for the samples)."""
    from selftaught.data.formats import tokenize_examples
    from selftaught.distill.config import DistillConfig
    from selftaught.distill.trainer import GKDistillTrainer

    class Probed(ProbedLoss, GKDistillTrainer):
        def trained_tokens(self, inputs: dict) -> int:
            return int(inputs["completion_mask"].sum())

    teacher_path, student_path = model_paths()
    teacher_url = serve_teacher(teacher_path) if served else None
    config = DistillConfig(
        **common_args(args, output_dir),
        teacher=teacher_path,
        student=student_path,
        data=str(DATA),
        lmbda=LMBDA,
        beta=BETA,
        temperature=TEMPERATURE,
        max_new_tokens=args.max_new_tokens,
        engine=engine,
        teacher_url=teacher_url,
        teacher_top_k=SERVED_TOP_K if served else None,
        max_staleness=max_staleness,
    )
    if served:
        from selftaught.distill.teachers import ServedTeacher
        from selftaught.models import load_model, load_tokenizer

        tokenizer, student = load_tokenizer(student_path), load_model(student_path, "float32")
        teacher = ServedTeacher(teacher_url, SERVED_TOP_K, tokenizer)
    else:
        tokenizer, teacher, student = load_models()
    examples = load_examples(prompts_needed(args))
    dataset = tokenize_examples(tokenizer, examples, config.max_prompt_length, config.max_new_tokens)
    trainer = Probed(
        model=student, teacher=teacher, args=config, processing_class=tokenizer, train_dataset=dataset
    )
    trainer.probe = probe
    trainer.teacher.scores = probe.timed_part("teacher_scores", trainer.teacher.scores)
    if max_staleness:
        trainer.step_sampled_ahead = probe.timed_part("student_sampling", trainer.step_sampled_ahead)
    else:
        sampler = trainer.samplers["student"]
        sampler.generate = probe.timed_part("student_sampling", sampler.generate)
    return trainer


def serve_teacher(model: str) -> str:
    """The base URL of a vLLM server on `model` (as the tests start it), up until this process exits."""
    import atexit
    from contextlib import ExitStack

    sys.path.insert(0, str(ROOT / "tests"))
    from servers import vllm_server

    stack = ExitStack()
    started = time.perf_counter()
    server = stack.enter_context(vllm_server(Path(model), "teacher", max_logprobs=SERVED_TOP_K))
    atexit.register(stack.close)
    print(
        f"  [served] vLLM server up in {time.perf_counter() - started:.0f} s at {server.base_url}", flush=True
    )
    return server.base_url


def build_gkd(args: argparse.Namespace, probe: Probe, output_dir: str):
    """TRL's experimental GKDTrainer: conversational `messages` rows (prompt + reference solution)."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class Probed(ProbedLoss, GKDTrainer):
        def trained_tokens(self, inputs: dict) -> int:
            # compute_loss trains on shifted positions whose label is not -100: after on-policy sampling
            # these are exactly the sampled tokens through the first EOS.
            return int((inputs["labels"][:, 1:] != -100).sum())

    config = GKDConfig(
        **common_args(args, output_dir),
        lmbda=LMBDA,
        beta=BETA,
        temperature=TEMPERATURE,
        max_new_tokens=args.max_new_tokens,
    )
    tokenizer, teacher, student = load_models()
    examples = load_examples(prompts_needed(args))
    # The collator needs a final assistant turn (the prompt is messages[:-1]); with lmbda = 1 it is only
    # ever replaced by the student's sample, but transformers counts its tokens for num_items_in_batch.
    rows = [{"messages": e.prompt + [{"role": "assistant", "content": e.completion or ""}]} for e in examples]
    trainer = Probed(
        model=student,
        teacher_model=teacher,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows),
    )
    trainer.probe = probe
    return trainer


def build_distillation(args: argparse.Namespace, probe: Probe, output_dir: str, use_vllm: bool = False):
    """TRL's DistillationTrainer: conversational `prompt` rows, always on-policy; `use_vllm`: its own
    colocated vLLM option (TRL builds the LLM and pushes with `load_weights`)."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    class Probed(ProbedLoss, DistillationTrainer):
        def trained_tokens(self, inputs: dict) -> int:
            return int(inputs["completion_mask"].sum())

        def loss_denominator(self, inputs: dict, num_items_in_batch) -> float:
            # compute_loss replaces transformers' count with its own over the sampled completions
            return float(inputs["num_items_in_batch"]) / self.accelerator.num_processes

    config = DistillationConfig(
        **common_args(args, output_dir),
        beta=BETA,  # its default is 1.0 (reverse KL); 0.5 is the same generalized JSD as GKD's
        temperature=TEMPERATURE,  # sampling and (unlike the others) the loss
        max_completion_length=args.max_new_tokens,
        shuffle_dataset=False,  # its own sampler ignores train_sampling_strategy
        use_vllm=use_vllm,
        vllm_mode="colocate",
    )
    tokenizer, teacher, student = load_models()
    examples = load_examples(prompts_needed(args))
    rows = [{"prompt": e.prompt} for e in examples]
    trainer = Probed(
        model=student,
        teacher_model=teacher,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows),
    )
    trainer.probe = probe
    return trainer


BUILDERS = {
    "selftaught": build_selftaught,
    "selftaught-async1": functools.partial(build_selftaught, max_staleness=1),
    "selftaught-served": functools.partial(build_selftaught, served=True),
    "selftaught-vllm": functools.partial(build_selftaught, engine="vllm"),
    "gkd": build_gkd,
    "distillation": build_distillation,
    "distillation-vllm": functools.partial(build_distillation, use_vllm=True),
}


def prompts_needed(args: argparse.Namespace) -> int:
    return args.steps * args.batch_size * args.grad_accum


def effective_settings(trainer) -> dict:
    """The defaults that matter for speed, as the built trainer holds them (not as we assume them)."""
    if hasattr(trainer, "sampling"):  # selftaught: SamplingParams builds its GenerationConfig per call
        from selftaught.generation.hf import eos_ids_of, generation_config

        eos_ids = eos_ids_of(trainer.model, trainer.processing_class)
        generation = generation_config(trainer.sampling, eos_ids, trainer.processing_class.pad_token_id)
    else:  # both TRL trainers keep theirs on the trainer
        generation = trainer.generation_config
    use_cache = generation.use_cache
    if use_cache is None:  # unset: generate() falls back to the model's own generation config
        use_cache = trainer.model.generation_config.use_cache
    return {
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "generation_use_cache": bool(use_cache),
        "bf16": bool(trainer.args.bf16),
        "learning_rate": trainer.args.learning_rate,
        "sampling_temperature": generation.temperature,
        "top_k": generation.top_k,
        "top_p": generation.top_p,
    }


def train_and_measure(name: str, args: argparse.Namespace) -> dict:
    """Build one trainer, train `--steps` optimizer steps, summarise what the probe saw."""
    from transformers import PrinterCallback, ProgressCallback

    probe = Probe()
    with tempfile.TemporaryDirectory(prefix=f"distill_bench_{name}_") as output_dir:
        trainer = BUILDERS[name](args, probe, output_dir)
        for quiet in (PrinterCallback, ProgressCallback):  # our callback prints one line per step instead
            trainer.remove_callback(quiet)
        trainer.add_callback(step_callback(name, probe, args.steps))
        settings = effective_settings(trainer)
        trainer.train()

    warm = slice(1, None) if len(probe.step_seconds) > 1 else slice(None)  # step 1 is warm-up
    seconds, tokens = probe.step_seconds[warm], probe.step_tokens[warm]
    first_loss, first_tokens = probe.losses[0], probe.batch_tokens[0]
    first_denominator = probe.denominators[0]
    return {
        "tokens_per_second": sum(tokens) / sum(seconds),
        "seconds_per_step": statistics.median(seconds),
        "trained_tokens_per_step": statistics.mean(tokens),
        "first_loss": first_loss,
        "first_loss_denominator": first_denominator,
        "first_batch_trained_tokens": first_tokens,
        "first_loss_per_trained_token": first_loss * first_denominator / max(first_tokens, 1),
        "step_seconds": probe.step_seconds,
        "step_tokens": probe.step_tokens,
        "losses": probe.losses,
        "warmup_steps_excluded": 1 if len(probe.step_seconds) > 1 else 0,
        # where the time of a step goes (selftaught's rows): median seconds per step after the warm-up
        "step_parts_seconds": {part: statistics.median(values[warm]) for part, values in probe.parts.items()},
        "settings": settings,
    }


# --- the parts of one step, on their own -------------------------------------------------------------


def timed(fn, repeats: int = 3) -> tuple[float, list[float]]:
    """Median and all wall-clock seconds of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def measure_parts(args: argparse.Namespace) -> dict:
    """Sampling (exactly max_new_tokens each, KV cache), teacher forward, student forward + backward."""
    import torch

    from selftaught.data.formats import tokenize_prompt
    from selftaught.generation.base import SamplingParams, left_pad
    from selftaught.generation.hf import eos_ids_of, generate_completions
    from selftaught.models.vocab import shared_vocab_size
    from selftaught.scoring.logits import completion_logits, join_prompt_completion
    from selftaught.training.losses import generalized_jsd

    torch.manual_seed(SEED)
    tokenizer, teacher, student = load_models()
    teacher.requires_grad_(False).eval()
    student.train()
    vocab = shared_vocab_size(tokenizer, student, teacher)
    pad, eos_ids = tokenizer.pad_token_id, eos_ids_of(student, tokenizer)
    prompts = [tokenize_prompt(tokenizer, e.prompt) for e in load_examples(args.batch_size)]
    prompt_ids, prompt_mask = left_pad(prompts, pad)
    # EOS suppressed until max_new_tokens, so every row has all of them
    sampling = SamplingParams(args.max_new_tokens, TEMPERATURE, min_new_tokens=args.max_new_tokens)

    samples = []
    sample_s, sample_all = timed(
        lambda: samples.append(generate_completions(student, prompt_ids, prompt_mask, sampling, eos_ids, pad))
    )
    completion_ids, completion_mask = samples[0]
    inputs = join_prompt_completion(prompt_ids, prompt_mask, completion_ids, completion_mask)
    mask = completion_mask

    def teacher_forward() -> torch.Tensor:
        with torch.no_grad():
            return completion_logits(teacher, inputs, mask, vocab)

    teacher_logits = teacher_forward()

    def student_forward_backward() -> None:
        student_logits = completion_logits(student, inputs, mask, vocab)
        loss = generalized_jsd(student_logits, teacher_logits, BETA).sum() / mask.sum()
        loss.backward()

    # What Trainer's default optim ("adamw_torch_fused") builds; the unfused CPU loop is several times slower.
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, fused=True)
    teacher_s, teacher_all = timed(teacher_forward)
    student_s, student_all = timed(lambda: (student.zero_grad(set_to_none=True), student_forward_backward()))
    optimizer_s, optimizer_all = timed(optimizer.step)  # informational: not part of the floor
    floor = sample_s + teacher_s + student_s
    vllm = measure_vllm_parts(student_path(), student, prompts, args) if args.vllm_parts else {}
    if vllm:
        vllm["vllm_floor_seconds"] = (
            vllm["vllm_sampling_seconds"] + teacher_s + student_s + vllm["push_seconds"]
        )
    return vllm | {
        "batch_size": args.batch_size,
        "completion_tokens": int(completion_mask.sum()),
        "prompt_tokens": int(prompt_mask.sum()),
        "sampling_seconds": sample_s,
        "teacher_forward_seconds": teacher_s,
        "student_forward_backward_seconds": student_s,
        "optimizer_step_seconds": optimizer_s,
        "floor_seconds": floor,
        "floor_tokens_per_second": int(completion_mask.sum()) / floor,
        "all_seconds": {
            "sampling": sample_all,
            "teacher_forward": teacher_all,
            "student_forward_backward": student_all,
            "optimizer_step": optimizer_all,
        },
    }


def student_path() -> str:
    return model_paths()[1]


def measure_vllm_parts(path: str, student, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """The vLLM floor's own parts: sampling the step's prompts (exactly max_new_tokens each) through the
    colocated engine selftaught builds, and one weight push (in-place reload + tied head refresh)."""
    import vllm
    from vllm.inputs import TokensPrompt

    from selftaught.generation.vllm_engine import cpu_serving_threads, load_llm, refresh_tied_kernels

    llm = load_llm(path, dtype="float32", trust_remote_code=False, seed=SEED, kv_cache_gib=1.0)
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts * args.grad_accum]
    params = vllm.SamplingParams(
        max_tokens=args.max_new_tokens, min_tokens=args.max_new_tokens, temperature=TEMPERATURE, top_k=0
    )

    def sample() -> None:
        with cpu_serving_threads():
            llm.generate(inputs, params, use_tqdm=False)

    def push() -> None:
        weights = ((name, p.data) for name, p in student.named_parameters())
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        llm.apply_model(refresh_tied_kernels)
        llm.reset_prefix_cache()

    sample()  # warm-up
    sampling_s, sampling_all = timed(sample)
    push_s, push_all = timed(push)
    return {
        "vllm_prompts": len(inputs),
        "vllm_sampling_seconds": sampling_s,
        "push_seconds": push_s,
        "vllm_all_seconds": {"sampling": sampling_all, "push": push_all},
    }


# --- one subprocess per measurement -----------------------------------------------------------------


def worker(name: str, args: argparse.Namespace) -> None:
    """Run one measurement in this (fresh) interpreter and write it, with peak RSS, to --result-file."""
    import torch

    try:
        result = measure_parts(args) if name == PARTS else train_and_measure(name, args)
        result["ok"] = True
    except Exception:  # reported in the table rather than aborting the other runners
        traceback.print_exc()
        result = {"ok": False, "error": traceback.format_exc(limit=-3)}
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    result["torch_threads"] = torch.get_num_threads()
    Path(args.result_file).write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


def run_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    """Re-run this script as `--worker name`; its output streams through, its result comes back as JSON."""
    with tempfile.TemporaryDirectory(prefix="distill_bench_") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [
            sys.executable, str(Path(__file__).resolve()),
            "--worker", name, "--result-file", str(result_file),
            "--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens),
            "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
            *(["--vllm-parts"] if args.vllm_parts else []),
        ]  # fmt: skip
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRL_EXPERIMENTAL_SILENCE": "1",  # GKDTrainer lives in trl.experimental: we know
            "PYTHONWARNINGS": "ignore::FutureWarning",  # transformers' gradient_checkpointing renames
        }
        started = time.perf_counter()
        code = subprocess.run(command, env=env, cwd=ROOT).returncode
        if result_file.exists():
            result = json.loads(result_file.read_text())
        else:
            result = {"ok": False, "error": f"worker exited with code {code} and wrote no result"}
        result["wall_seconds"] = time.perf_counter() - started
        return result


# --- the drift's reference and the rounds -----------------------------------------------------------


def reference_forward() -> Callable[[], float]:
    """The drift's reference, timed in this process with the student (the smaller model)."""
    from selftaught.models import load_model

    return forward_reference(load_model(student_path(), "float32").eval())


def ratios(results: dict) -> dict:
    """selftaught against each TRL trainer and against the floor, where both sides ran (one round)."""
    ok = {name: r for name, r in results.items() if r.get("ok")}
    out: dict[str, float] = {}
    if "selftaught" not in ok:
        return out
    ours = ok["selftaught"]
    for other in ("gkd", "distillation"):
        if other in ok:
            out[f"tokens_per_second_vs_{other}"] = ours["tokens_per_second"] / ok[other]["tokens_per_second"]
            out[f"peak_rss_vs_{other}"] = ours["peak_rss_gib"] / ok[other]["peak_rss_gib"]
            out[f"peak_rss_minus_{other}_gib"] = ours["peak_rss_gib"] - ok[other]["peak_rss_gib"]
    if PARTS in ok:
        out["seconds_per_step_vs_floor"] = ours["seconds_per_step"] / ok[PARTS]["floor_seconds"]
        out["tokens_per_second_vs_floor"] = ours["tokens_per_second"] / ok[PARTS]["floor_tokens_per_second"]
    if "selftaught-async1" in ok:
        async1 = ok["selftaught-async1"]
        out["async1_tokens_per_second_vs_selftaught"] = (
            async1["tokens_per_second"] / ours["tokens_per_second"]
        )
        out["async1_peak_rss_vs_selftaught"] = async1["peak_rss_gib"] / ours["peak_rss_gib"]
    if "selftaught-served" in ok:
        served = ok["selftaught-served"]
        out["served_tokens_per_second_vs_selftaught"] = (
            served["tokens_per_second"] / ours["tokens_per_second"]
        )
        out["served_peak_rss_vs_selftaught"] = served["peak_rss_gib"] / ours["peak_rss_gib"]
    if "selftaught-vllm" in ok:
        vllm = ok["selftaught-vllm"]
        for other in ("distillation", "distillation-vllm", "selftaught"):
            if other in ok:
                out[f"vllm_tokens_per_second_vs_{other}"] = (
                    vllm["tokens_per_second"] / ok[other]["tokens_per_second"]
                )
        if PARTS in ok and "vllm_floor_seconds" in ok[PARTS]:
            out["vllm_seconds_per_step_vs_vllm_floor"] = (
                vllm["seconds_per_step"] / ok[PARTS]["vllm_floor_seconds"]
            )
    return out


# What is summarised over the rounds, per trainer and for the parts (each a median [range]).
TRAINER_MEASURES = ("tokens_per_second", "seconds_per_step", "trained_tokens_per_step", "peak_rss_gib")
PART_MEASURES = (
    "sampling_seconds", "teacher_forward_seconds", "student_forward_backward_seconds",
    "optimizer_step_seconds", "floor_seconds", "floor_tokens_per_second",
    "vllm_sampling_seconds", "push_seconds", "vllm_floor_seconds",
)  # fmt: skip
FIRST_ROUND_ONLY = (
    "first_loss", "first_loss_per_trained_token", "settings",
    "batch_size", "completion_tokens", "vllm_prompts",
)  # fmt: skip


def over_rounds(rounds: list[dict]) -> dict:
    """Per trainer (and the parts): each measure's median [range] over the rounds it succeeded in, how
    many rounds failed, and what does not change between rounds (settings, first loss) from its first."""
    summary = {}
    for name in dict.fromkeys(name for r in rounds for name in r["results"]):
        ran = [r["results"][name] for r in rounds if name in r["results"]]
        ok = [result for result in ran if result.get("ok")]
        entry: dict = {"ok": bool(ok), "rounds": len(ran), "failed_rounds": len(ran) - len(ok)}
        if not ok:
            summary[name] = entry | {"error": ran[-1].get("error", "")}
            continue
        measures = PART_MEASURES if name == PARTS else TRAINER_MEASURES
        entry |= spreads([{key: result[key] for key in measures if key in result} for result in ok])
        if any("step_parts_seconds" in result for result in ok):  # selftaught's rows: where a step goes
            entry["step_parts_seconds"] = spreads([result.get("step_parts_seconds", {}) for result in ok])
        first = ok[0]  # the same in every round: settings, the seeded first batch, the parts' shapes
        entry |= {key: first[key] for key in FIRST_ROUND_ONLY if key in first}
        summary[name] = entry
    return summary


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def print_report(report: dict, args: argparse.Namespace) -> None:
    rounds, summary = len(report["rounds"]), report["results"]
    warmup = "first step = warm-up, excluded" if args.steps > 1 else "one step: nothing excluded as warm-up"
    print(
        f"\nOn-policy distillation, {rounds} round(s) of {args.steps} step(s) per trainer x batch "
        f"{args.batch_size}, max_new_tokens {args.max_new_tokens}, float32 CPU ({warmup}); median [range] "
        "over the rounds\n"
    )
    header = (
        f"{'trainer':<19}{'tok/s':>20}{'s/step':>22}{'tok/step':>9}{'RSS GiB':>8}{'loss':>8}{'loss/tok':>9}"
        f"{'ckpt':>5}{'kv':>4}"
    )
    print(header)
    print("-" * len(header))
    for name in RUNNERS:
        if name not in summary:
            continue
        r = summary[name]
        failed = f" ({r['failed_rounds']} of {r['rounds']} rounds FAILED)" if r["failed_rounds"] else ""
        if not r["ok"]:
            print(f"{name:<19}FAILED: {r['error'].strip().splitlines()[-1:]}")
            continue
        print(
            f"{name:<19}{median_range(r['tokens_per_second'], 1):>20}"
            f"{median_range(r['seconds_per_step']):>22}"
            f"{r['trained_tokens_per_step']['median']:>9.1f}{r['peak_rss_gib']['max']:>8.2f}"
            f"{r['first_loss']:>8.4f}{r['first_loss_per_trained_token']:>9.4f}"
            f"{yes_no(r['settings']['gradient_checkpointing']):>5}"
            f"{yes_no(r['settings']['generation_use_cache']):>4}{failed}"
        )
    print_step_parts(summary)
    if PARTS in summary:
        p = summary[PARTS]
        if p["ok"]:
            print(
                f"\nParts of one step (batch {p['batch_size']}, {p['completion_tokens']} completion tokens, "
                "median of 3 per round; median [range] over the rounds):"
            )
            lines = [
                ("(a) student sampling, KV cache", "sampling_seconds"),
                ("(b) teacher forward, no grad", "teacher_forward_seconds"),
                ("(c) student forward + backward", "student_forward_backward_seconds"),
                ("    floor = a + b + c", "floor_seconds"),
                ("    (AdamW step, not in floor)", "optimizer_step_seconds"),
            ]
            if "vllm_floor_seconds" in p:
                lines += [
                    (f"(a') vLLM sampling, {p['vllm_prompts']} prompts", "vllm_sampling_seconds"),
                    ("(d) weight push to vLLM", "push_seconds"),
                    ("    vLLM floor = a' + b + c + d", "vllm_floor_seconds"),
                ]
            for label, key in lines:
                print(f"  {label:<32}{median_range(p[key], unit=' s'):>26}")
        else:
            print(f"\nparts: FAILED: {p['error'].strip().splitlines()[-1:]}")
    if report["selftaught_ratios"]:
        print(f"\nselftaught relative to (median [range] of the per-round ratios, {rounds} rounds):")
        for key, value in report["selftaught_ratios"].items():
            print(f"  {key:<38}{median_range(value):>20}")
    drifted = report["drift"]
    print(
        f"\nDrift: reference ({drifted['reference']}): {drifted['seconds'][0]:.3f} s before round 1, "
        f"{drifted['seconds'][-1]:.3f} s after round {rounds} (end / start {drifted['end_over_start']:.2f}); "
        f"range over the {drifted['n']} timings {drifted['min']:.3f}-{drifted['max']:.3f} s"
    )
    print(
        "\n(loss = first batch's loss as returned by compute_loss; loss/tok = loss x its denominator /"
        " trained tokens;\n ckpt = gradient checkpointing; kv = sampling uses the KV cache; RSS = the"
        " largest over the rounds)"
    )
    print(LOSS_NOTES)


def print_step_parts(summary: dict) -> None:
    """Where a step's time goes in selftaught's rows: the median over the rounds of each round's median
    seconds per step after the warm-up."""
    rows = {name: r for name, r in summary.items() if r.get("ok") and r.get("step_parts_seconds")}
    if not rows:
        return
    print("\nWhere a step's time goes (median seconds per step, median over the rounds):")
    print(f"  {'trainer':<19}{'step':>8}{'sampling':>10}{'teacher':>9}{'rest':>8}")
    for name, r in rows.items():
        parts = {part: spread["median"] for part, spread in r["step_parts_seconds"].items()}
        sampling, teacher = parts.get("student_sampling", 0.0), parts.get("teacher_scores", 0.0)
        step = r["seconds_per_step"]["median"]
        rest = step - sampling - teacher
        print(f"  {name:<19}{step:>8.2f}{sampling:>10.2f}{teacher:>9.2f}{rest:>8.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=3, help="optimizer steps per trainer and round (the first is warm-up)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each running every trainer once in turn (A B A B ...); ratios: median [range] of them",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest sampled completion")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="per-device train batch (prompts per micro-batch)"
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="micro-batches per optimizer step (prompts per step = batch x this)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*RUNNERS, PARTS],
        help="run only these (repeatable); default: all three trainers and the parts",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON results")
    parser.add_argument(
        "--vllm-parts", action="store_true", help="the parts also time vLLM sampling and one weight push"
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run's rounds to those already in --output (same settings): a long run in chunks",
    )
    parser.add_argument("--worker", choices=[*RUNNERS, PARTS], help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.steps, args.max_new_tokens, args.batch_size, args.grad_accum, args.rounds) < 1:
        parser.error("--steps, --max-new-tokens, --batch-size, --grad-accum and --rounds must be at least 1")
    return args


def earlier_rounds(args: argparse.Namespace, config: dict) -> tuple[list[dict], list[float], list[dict]]:
    """With --append: the rounds, reference timings and provenance of the runs already in --output (same
    configuration only)."""
    if not args.append or not args.output.exists():
        return [], [], []
    earlier = json.loads(args.output.read_text())
    if earlier.get("config") != config or "rounds" not in earlier:
        print(
            f"--append: {args.output} holds no rounds of this configuration; give the same --steps, "
            "--max-new-tokens, --batch-size and --grad-accum as its run, or another --output",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return earlier["rounds"], earlier["drift"]["seconds"], [*earlier["earlier_runs"], earlier["provenance"]]


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args.worker, args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = {
        "steps": args.steps, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum, "lmbda": LMBDA, "beta": BETA,
        "temperature": TEMPERATURE,
        "learning_rate": LEARNING_RATE, "seed": SEED, "dtype": "float32", "device": "cpu",
        "prompts": f"first {prompts_needed(args)} rows of {DATA.relative_to(ROOT)}",
    }  # fmt: skip
    rounds, timings, earlier_runs = earlier_rounds(args, config)
    print("preparing the embedded models (built and cached on first use) ...", flush=True)
    model_paths()  # built here once, so no worker times the build
    todo = [name for name in (*RUNNERS, PARTS) if not args.only or name in args.only]

    def run(name: str, round_index: int) -> dict:
        print(f"\n=== round {len(rounds) + round_index + 1}, {name}: in its own subprocess ===", flush=True)
        result = run_in_subprocess(name, args)
        status = "ok" if result.get("ok") else "FAILED"
        print(f"=== {name}: {status} in {result['wall_seconds']:.0f} s ===", flush=True)
        return result

    def report(new_rounds: list[dict], new_timings: list[float]) -> dict:
        """The run so far: the earlier rounds (--append) and this run's."""
        # Appended: the earlier run's last timing (its end) is followed by this run's first (its start).
        every_round = rounds + [{"results": results, "ratios": ratios(results)} for results in new_rounds]
        return {
            "config": config,
            "results": over_rounds(every_round),
            "selftaught_ratios": spreads([r["ratios"] for r in every_round]),
            "drift": drift(timings + new_timings) | {"reference": f"the student's {REFERENCE}"},
            "rounds": every_round,
            "earlier_runs": earlier_runs,  # --append: the provenance of the runs whose rounds come first
            "notes": LOSS_NOTES,
        }

    def save(new_rounds: list[dict], new_timings: list[float]) -> None:
        write_result(args.output, report(new_rounds, new_timings))
        print(f"\nround {len(rounds) + len(new_rounds)} done: wrote {args.output}", flush=True)

    new_rounds, new_timings = interleave(todo, args.rounds, run, reference_forward(), after_round=save)
    print_report(report(new_rounds, new_timings), args)


if __name__ == "__main__":
    main()
