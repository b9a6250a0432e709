"""Gemma 3 270M (another tokenizer) teaching the embedded student: `selftaught distill`, demo settings.

Two runs of the CLI on the shipped math prompts, from the embedded healed student (SmolLM2's tokenizer),
with the demo preset (selftaught/distill/default.yaml: on-policy, beta 0.9, temperature 0.7, 4 prompts a
step, 96 new tokens, learning rate 2e-5, 32 held-out prompts):
- `cross`: the teacher is the packaged Gemma 3 270M base GGUF (262,144 tokens) with Gemma 3's chat template
  (`--teacher_chat_template gemma3`), for --steps steps (the demo's 40 by default). Its held-out evaluation
  is the per-byte NLL of Gemma's greedy answers under the student, before and after, with a paired 95%
  interval, and the degeneration measures.
- `same`: the demo's own same-tokenizer teacher (SmolLM2-135M-Instruct) for --timing-steps steps without
  evaluation, for the step time alone.
Measured: the cross run's held-out results, the share of its completion tokens on each loss path and its
non-canonical completions (sampled ids that are not the student tokenizer's own tokenisation), three
held-out answers side by side (Gemma, the student before, after), and the seconds per optimizer step of
both runs (from metrics.jsonl: completion tokens / tokens per second per logged step; median over steps,
with the sampling share).

A call trains for at most --budget seconds and stops the run as Ctrl-C does (checkpoints every 2 steps);
the next call resumes it. Rerun until it writes the result:
    HF_HUB_OFFLINE=1 flock /tmp/selftaught-heavy.lock .venv/bin/python bench/cross_tokenizer_distill.py
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_result  # bench/common.py

from selftaught.data.shards import read_parquet
from selftaught.models.embedded import packaged_gemma_gguf

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "selftaught" / "distill" / "default.yaml"
RESULTS = ROOT / "bench" / "results" / "cross_tokenizer_distill.json"
RUNS = ROOT / "runs" / "bench-cross-tokenizer"
PROMPTS_PER_STEP = (
    4  # the preset's per_device_train_batch_size x gradient_accumulation_steps, logged each step
)


def run_argv(name: str, steps: int, eval_size: int) -> list[str]:
    argv = ["--config", str(PRESET), "--output_dir", str(RUNS / name), "--max_steps", str(steps)]
    # a checkpoint of the student with its optimizer state is 1.3 GB: keep the newest two
    argv += ["--save_steps", "2", "--save_total_limit", "2", "--report_to", "none"]
    if name == "cross":
        gemma = ["--teacher", str(packaged_gemma_gguf()), "--teacher_chat_template", "gemma3"]
        return argv + gemma + ["--eval_size", str(eval_size)]
    return argv + ["--eval_size", "0"]


def finished(name: str) -> bool:
    folder = RUNS / name
    return (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()


def train(name: str, steps: int, eval_size: int, budget: float) -> bool:
    """Run (or resume) one run for at most `budget` seconds; whether it finished."""
    argv = run_argv(name, steps, eval_size)
    if any((RUNS / name).glob("checkpoint-*")):
        argv += ["--resume_from_checkpoint", "last"]
    command = [sys.executable, "-m", "selftaught.cli", "distill", *argv]
    print(" ".join(command), flush=True)
    # SIGINT as the default handler: a shell's background job (nohup ... &) starts with it ignored
    process = subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # stops as Ctrl-C does; the last complete checkpoint stays
        process.wait()
    return finished(name)


def step_seconds(name: str) -> dict:
    """Seconds per optimizer step and sampling seconds per step, medians over the logged steps."""
    rows = [json.loads(line) for line in (RUNS / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and r.get("tokens_per_second")]
    seconds = [r["completion_tokens"] / r["tokens_per_second"] for r in steps]
    return {
        "steps": len(steps),
        "seconds_per_step": statistics.median(seconds),
        "generation_seconds_per_step": statistics.median(r["generation_seconds"] for r in steps),
        "completion_tokens_per_step": statistics.median(r["completion_tokens"] for r in steps),
    }


def loss_paths(results: dict, prompts_per_step: int) -> dict:
    """The cross run's loss paths over all its steps, from metrics.jsonl (one line per step). The counts in
    eval_results.json start again at each resume, so a run made in several calls needs these."""
    rows = [json.loads(line) for line in (RUNS / "cross" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "shared_support_share" in r]
    tokens = sum(r["completion_tokens"] for r in steps)
    paths = {
        f"{name}_share": sum(r[f"{name}_share"] * r["completion_tokens"] for r in steps) / tokens
        for name in ("shared_support", "fallback", "unaligned")
    }
    return {
        "alignment": results["cross_tokenizer"]["alignment"],
        "fallback": results["cross_tokenizer"]["fallback"],
        "completion_tokens": tokens,
        **paths,
        "completions": len(steps) * prompts_per_step,
        "non_canonical_completions": round(sum(r["non_canonical_share"] for r in steps) * prompts_per_step),
    }


def side_by_side(count: int) -> list[dict]:
    """The first `count` held-out prompts with Gemma's answer and the student's before and after."""
    folder = RUNS / "cross" / "evaluation"
    answers = {
        name: read_parquet(folder / f"{name}.parquet")
        for name in ("teacher", "student_before", "student_after")
    }
    return [
        {"prompt": answers["teacher"][i]["prompt"]}
        | {name: rows[i]["completion"] for name, rows in answers.items()}
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the cross run (demo: 40)")
    parser.add_argument("--timing-steps", type=int, default=6, help="steps of the same-tokenizer run")
    parser.add_argument(
        "--eval-size", type=int, default=32, help="held-out prompts of the cross run (demo: 32)"
    )
    parser.add_argument("--budget", type=float, default=540, help="seconds of both runs in this call")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    for name, steps in (("same", args.timing_steps), ("cross", args.steps)):
        if not finished(name) and not train(name, steps, args.eval_size, deadline - time.monotonic()):
            print(f"{name}: not finished; rerun this command to resume it")
            return
    results = json.loads((RUNS / "cross" / "eval_results.json").read_text())
    write_result(
        RESULTS,
        {
            "settings": {
                "preset": "selftaught/distill/default.yaml",
                "steps": args.steps,
                "eval_size": args.eval_size,
                "timing_steps": args.timing_steps,
            },
            "held_out": {k: results[k] for k in ("teacher", "student_before", "student_after")},
            "comparisons": results["comparisons"],
            "loss_paths": loss_paths(results, PROMPTS_PER_STEP),
            "step_time": {"cross": step_seconds("cross"), "same": step_seconds("same")},
            "answers": side_by_side(3),
        },
    )
    print(json.dumps(json.loads(RESULTS.read_text()), indent=1)[:4000])


if __name__ == "__main__":
    main()
