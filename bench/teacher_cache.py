"""A cached teacher (`selftaught distill cache-teacher`, then `distill --teacher_cache`): disk and memory.

The embedded models (teacher SmolLM2-135M-Instruct, float32; the healed 24-layer student) on the first
--rows rows of the shipped math prompts, their reference solutions as completions, cut at --max-new-tokens.
Measured, each command in its own fresh interpreter:
- disk, per K in --ks: `selftaught distill cache-teacher --top_k K`; the Parquet shards' bytes per
  completion token (summary.json), beside the raw payload (8K + 8 bytes: int32 id and float32 log-prob per
  top-K slot, plus the token's own log-prob and id) and a dense float32 row of the vocabulary (4V bytes);
- training memory: peak RSS (`ru_maxrss`) of --steps optimizer steps of supervised KD (lmbda 0, batch 4)
  with the teacher read from the K = 32 cache, with the teacher in the process (`--teacher`), and of
  student-only training: supervised fine-tuning of the same student on the same rows for the same steps
  (TRL's SFTTrainer through `selftaught.training.sft.train_sft`), the footprint of training it alone.

    HF_HUB_OFFLINE=1 flock /tmp/selftaught-heavy.lock .venv/bin/python bench/teacher_cache.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/teacher_cache.py --rows 8 --steps 2 --ks 8   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_result  # bench/common.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
BUILTIN_TRAIN = ROOT / "selftaught" / "data" / "builtin" / "math_prompts" / "train.jsonl"
OUTPUT = ROOT / "bench" / "results" / "teacher_cache.json"

# Runs `selftaught <argv>` (or student-only SFT) in this fresh interpreter, then prints its peak RSS.
MEASURED = """
import json, resource, sys
argv = json.loads(sys.argv[1])
if argv[0] == "sft":
    from selftaught.training.sft import SFTSettings, sft_example, train_sft
    rows = [json.loads(line) for line in open(argv[2])]
    settings = SFTSettings(max_steps=int(argv[4]), per_device_train_batch_size=4, learning_rate=2e-5,
                           gradient_checkpointing=False, logging_steps=1, save_steps=10**6)
    train_sft(argv[1], [sft_example(r["problem"], r["solution"]) for r in rows], argv[3], settings)
else:
    from selftaught.cli import main
    main(argv)
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_measured(argv: list[str]) -> float:
    """Peak RSS in GiB of one command run in a fresh interpreter (its output goes to this one's stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, json.dumps(argv)], env=env, stdout=subprocess.PIPE, text=True
    )
    if done.returncode:
        raise SystemExit(f"{argv[:2]} failed with exit code {done.returncode}")
    [line] = [x for x in done.stdout.splitlines() if x.startswith("PEAK_RSS_KIB")]
    print(done.stdout, end="", file=sys.stderr)
    return int(line.split()[1]) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="training rows (the first of the math prompts)")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--max-new-tokens", type=int, default=96, help="completions are cut at this length")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of each training run")
    parser.add_argument("--only", choices=["disk", "memory"], help="one half of the benchmark")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    from selftaught.distill.student import healed_student
    from selftaught.models.embedded import embedded_teacher

    teacher, student = str(embedded_teacher()), str(healed_student())
    work = Path(tempfile.mkdtemp(prefix="teacher-cache-bench-"))
    data = work / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(BUILTIN_TRAIN.read_text().splitlines(True)[: args.rows]))
    lengths = ["--max_new_tokens", str(args.max_new_tokens), "--data", str(data), "--data_split", "train"]
    result: dict = {"settings": vars(args) | {"output": str(args.output.name)}, "disk": {}, "memory": {}}

    if args.only in (None, "disk"):
        for k in args.ks:
            cache = work / f"cache-k{k}"
            rss = run_measured(
                [
                    "distill",
                    "cache-teacher",
                    "--teacher",
                    teacher,
                    "--top_k",
                    str(k),
                    "--output_dir",
                    str(cache),
                    "--eval_size",
                    "0",
                ]
                + lengths
            )
            summary = json.loads((cache / "summary.json").read_text())
            result["disk"][f"k{k}"] = summary | {
                "raw_bytes_per_token": 8 * k + 8,
                "dense_float32_bytes_per_token": 4 * 49152,
                "cache_teacher_peak_rss_gib": rss,
            }
            print(f"K={k}: {summary['bytes_per_completion_token']:.1f} bytes per completion token on disk")

    if args.only in (None, "memory"):
        cache = work / "cache-k32"
        if not (cache / "summary.json").is_file():
            run_measured(
                [
                    "distill",
                    "cache-teacher",
                    "--teacher",
                    teacher,
                    "--top_k",
                    "32",
                    "--output_dir",
                    str(cache),
                    "--eval_size",
                    "0",
                ]
                + lengths
            )
        training = [
            "distill", "--student", student, "--lmbda", "0", "--max_steps", str(args.steps),
            "--per_device_train_batch_size", "4", "--eval_size", "0", "--save_steps", "1000000",
        ] + lengths  # fmt: skip
        runs = {
            "cached_teacher": training
            + ["--teacher_cache", str(cache), "--output_dir", str(work / "cached")],
            "in_process_teacher": training + ["--teacher", teacher, "--output_dir", str(work / "in-process")],
            "student_only_sft": [
                "sft",
                student,
                str(data / "train.jsonl"),
                str(work / "sft"),
                str(args.steps),
            ],
        }
        for name, argv in runs.items():
            result["memory"][f"{name}_peak_rss_gib"] = run_measured(argv)
            print(f"{name}: peak RSS {result['memory'][f'{name}_peak_rss_gib']:.2f} GiB")
        memory = result["memory"]
        memory["cached_vs_student_only"] = (
            memory["cached_teacher_peak_rss_gib"] / memory["student_only_sft_peak_rss_gib"]
        )
    write_result(args.output, result)
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
