"""What one step of staleness costs: `selftaught distill` at --max_staleness 1 against 0, held-out.

Two runs of the distill demo's defaults (the healed embedded student, the embedded teacher, the shipped math
prompts, on-policy: lmbda 1, beta 0.9, seed 0), identical but for --max_staleness and shortened to --steps
optimizer steps, each in its own subprocess (--only k0 / --only k1 / --only evaluate: chunks that fit a
shared host's lock).
Then one held-out evaluation, the recipe's (`HeldOutEvaluation`), on the same --eval-size prompts of the
math test split with the same teacher answers: the student before training and both trained students get
the demo's distances to the teacher (forward KL, reverse KL, JSD, top-1 agreement per token) and degenerate
share, and K = 1 is compared with K = 0 prompt by prompt (95% paired bootstrap intervals: an interval across
0 means the held-out set cannot tell them apart). One seed: the intervals cover the prompts, not the runs.

Usage (each chunk locked on a shared host):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_staleness_quality.py --only k0
    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_staleness_quality.py --only k1
    HF_HUB_OFFLINE=1 .venv/bin/python bench/distill_staleness_quality.py --only evaluate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import write_result  # bench/common.py

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "distill_staleness_quality.json"
DEFAULT_WORK = ROOT / "runs" / "bench_staleness"
PRESET = ROOT / "selftaught" / "distill" / "default.yaml"
STALENESS = {"k0": 0, "k1": 1}


def distill_flags(args: argparse.Namespace, staleness: int, output_dir: Path) -> list[str]:
    """The demo's preset (no model or data flag given), shortened; the held-out evaluation is done once
    for both runs (`evaluate`)."""
    return [
        "--max_steps", str(args.steps), "--eval_size", "0", "--save_strategy", "no", "--report_to", "none",
        "--max_staleness", str(staleness), "--output_dir", str(output_dir),
    ]  # fmt: skip


def train(name: str, args: argparse.Namespace) -> None:
    """One `selftaught distill` run in a fresh interpreter; its training metrics kept beside its model."""
    out = args.work / name
    command = [
        sys.executable, "-c", "from selftaught.cli import main; main()",
        "distill", *distill_flags(args, STALENESS[name], out),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, env=os.environ | {"HF_HUB_OFFLINE": "1"}, cwd=ROOT, check=True)
    results = json.loads((out / "eval_results.json").read_text())
    (args.work / f"{name}.json").write_text(
        json.dumps({"train": results.get("train", {}), "wall_seconds": time.perf_counter() - started})
    )


def evaluate(args: argparse.Namespace) -> dict:
    """The recipe's held-out evaluation of the start and of both trained students, and K=1 against K=0."""
    from selftaught.distill.config import DistillConfig
    from selftaught.distill.recipe import load_examples, load_models, resolve_defaults
    from selftaught.evaluate.distance import HeldOutEvaluation, HeldOutSettings
    from selftaught.models import load_model
    from selftaught.models.vocab import shared_vocab_size

    demo = yaml.safe_load(PRESET.read_text())  # what `selftaught distill` with no model or data flag runs
    held_out = {"eval_size": args.eval_size, "eval_max_new_tokens": args.eval_max_new_tokens}
    config = resolve_defaults(DistillConfig(**demo | held_out | {"output_dir": str(args.work / "evaluate")}))
    train_examples, prompts = load_examples(config)
    tokenizer, start, teacher = load_models(config, train_examples[0], prompts)
    settings = HeldOutSettings(
        config.eval_max_new_tokens,
        config.per_device_eval_batch_size,
        shared_vocab_size(tokenizer, start, teacher.model),
        config.max_prompt_length,
    )
    evaluation = HeldOutEvaluation(teacher, tokenizer, prompts, args.work / "evaluation", settings)
    metrics = {
        "teacher": evaluation.teacher_metrics(),
        "student_before": evaluation.metrics(start, "student_before"),
    }
    for name in STALENESS:
        trained = load_model(str(args.work / name), config.student_dtype)
        metrics[name] = evaluation.metrics(trained, name)
    return {
        "metrics": metrics,
        "k1_vs_k0": evaluation.changes("k1", "k0"),
        "k0_vs_before": evaluation.changes("k0", "student_before"),
        "k1_vs_before": evaluation.changes("k1", "student_before"),
        "training": {name: json.loads((args.work / f"{name}.json").read_text()) for name in STALENESS},
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=[*STALENESS, "evaluate"], required=True, help="the chunk to run")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each run (the demo: 40)")
    parser.add_argument("--eval-size", type=int, default=32, help="held-out prompts (math test split)")
    parser.add_argument("--eval-max-new-tokens", type=int, default=128, help="longest greedy held-out answer")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the runs' models go")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.only != "evaluate":
        train(args.only, args)
        return
    report = evaluate(args)
    report["config"] = {
        "steps": args.steps,
        "eval_size": args.eval_size,
        "eval_max_new_tokens": args.eval_max_new_tokens,
        "runs": "selftaught distill " + " ".join(distill_flags(args, 0, Path("OUT"))[:-2]) + " (K = 0 and 1)",
    }
    write_result(args.output, report)
    for entry in report["k1_vs_k0"]:
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
