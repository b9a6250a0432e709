"""Does a teacher outside training memory teach as well? The held-out distance of students trained from the
served teacher (top-K over HTTP) and from the teacher cache (top-K on disk), against a student trained from
the teacher in the process (full vocabulary), all else equal (issue 28, section 4).

The embedded models (teacher SmolLM2-135M-Instruct, float32; the healed 24-layer student). Three
`selftaught distill` runs, each in its own interpreter, with identical flags and seed, on the first --rows
shipped math training rows: supervised KD on their reference solutions (`--lmbda 0`, the one mode all
three sources serve: a cache holds no scores of the student's own samples) at the demo's beta (0.9),
learning rate, schedule and batch (4), for --steps optimizer steps; only the teacher's source differs:
- in-process: `--teacher` (dense generalized JSD);
- served: `--teacher_url` to vLLM's OpenAI-compatible server on the embedded teacher (tests/servers.py,
  on this machine's CPU), `--teacher_top_k` --top-k (sparse JSD: top-K + the actual token + a tail bin);
- cached: `selftaught distill cache-teacher --top_k` --top-k, then `--teacher_cache` (the same sparse loss).

All students (and the untrained start) are measured by one full-vocabulary evaluator, so the numbers
compare: the in-process teacher's greedy answers (`--eval-max-new-tokens`) to the 32 shipped test prompts,
generated once, and each student's forward KL, reverse KL, JSD, top-1 agreement and NLL per token on them
against the teacher's full logits (`evaluate.distance.teacher_distance`). Each sparse-taught student minus
the in-process-taught one is paired over the same prompts, with a 95% bootstrap interval
(`distance_changes`).

    HF_HUB_OFFLINE=1 flock /tmp/selftaught-heavy.lock .venv/bin/python bench/teacher_quality.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/teacher_quality.py --rows 8 --steps 2   # smoke

A run is resumable: students already trained in --work are kept (delete it to start over); `--sources`
splits the training over several calls (each shorter than a hold of the shared lock).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import write_result  # bench/common.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "selftaught" / "data" / "builtin" / "math_prompts"
OUTPUT = ROOT / "bench" / "results" / "teacher_quality.json"
sys.path.insert(0, str(ROOT / "tests"))  # the vLLM server launcher the tests use
SOURCES = ("in_process", "served", "cached")


def selftaught(argv: list[str]) -> float:
    """Run `selftaught <argv>` in a fresh interpreter; its wall seconds."""
    started = time.perf_counter()
    code = f"from selftaught.cli import main; main({argv!r})"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode:
        raise SystemExit(f"selftaught {' '.join(argv[:2])} failed with exit code {done.returncode}")
    return round(time.perf_counter() - started, 1)


def train_students(args, teacher: str, student: str, data: Path, work: Path) -> dict[str, float]:
    """The three runs (those not already in `work`); their wall seconds."""
    shared = [
        "--student", student, "--data", str(data), "--data_split", "train", "--eval_size", "0",
        "--lmbda", "0", "--beta", "0.9", "--max_new_tokens", str(args.max_new_tokens),
        "--per_device_train_batch_size", "4", "--max_steps", str(args.steps), "--learning_rate", "2e-5",
        "--lr_scheduler_type", "cosine", "--warmup_steps", "2", "--seed", "0", "--logging_steps", "1",
        "--save_steps", "1000000",
    ]  # fmt: skip
    todo = [s for s in args.sources if not (work / s / "model.safetensors").is_file()]
    seconds = {}
    if "in_process" in todo:
        seconds["in_process"] = selftaught(
            ["distill", *shared, "--teacher", teacher, "--output_dir", str(work / "in_process")]
        )
    if "cached" in todo:
        cache = work / "cache"
        seconds["cache_teacher"] = selftaught(
            ["distill", "cache-teacher", "--teacher", teacher, "--data", str(data), "--data_split", "train"]
            + ["--top_k", str(args.top_k), "--max_new_tokens", str(args.max_new_tokens), "--eval_size", "0"]
            + ["--output_dir", str(cache)]
        )
        seconds["cached"] = selftaught(
            ["distill", *shared, "--teacher_cache", str(cache), "--output_dir", str(work / "cached")]
        )
    if "served" in todo:
        from servers import vllm_server

        with vllm_server(Path(teacher), "teacher", max_logprobs=args.top_k) as server:
            served = ["--teacher_url", server.base_url, "--teacher_top_k", str(args.top_k)]
            seconds["served"] = selftaught(
                ["distill", *shared, *served, "--output_dir", str(work / "served")]
            )
    return seconds


def evaluate(args, teacher_path: str, student_path: str, work: Path) -> dict:
    """Every student's dense distances to the in-process teacher on its greedy test answers, and each
    sparse-taught student minus the in-process-taught one, paired over the prompts."""
    from selftaught.data.formats import to_examples
    from selftaught.data.loading import load_rows
    from selftaught.distill.teachers import InProcessTeacher
    from selftaught.evaluate.distance import (
        HeldOutEvaluation,
        HeldOutSettings,
        distance_changes,
        per_token,
        teacher_distance,
    )
    from selftaught.models import load_model, load_tokenizer, shared_vocab_size

    tokenizer = load_tokenizer(student_path)
    teacher_model = load_model(teacher_path, "float32")
    examples = to_examples(load_rows(str(BUILTIN), "test"), str(BUILTIN))
    vocab = shared_vocab_size(tokenizer, teacher_model)
    settings = HeldOutSettings(args.eval_max_new_tokens, 16, vocab, 512)
    evaluation = HeldOutEvaluation(teacher_model, tokenizer, examples, work / "evaluation", settings)
    teacher = InProcessTeacher(teacher_model, tokenizer, vocab)
    sums = {}
    for name, path in ({"start": student_path} | {s: str(work / s) for s in SOURCES}).items():
        model = load_model(path, "float32")
        sums[name] = teacher_distance(
            model,
            teacher,
            evaluation.prompts,
            evaluation.teacher_ids,
            vocab,
            tokenizer.pad_token_id,
            8,
            evaluation.teacher_prompts,
        )
        print(name, per_token(sums[name]), flush=True)
    return {
        "students": {name: per_token(s) for name, s in sums.items()},
        "against_in_process": [
            change
            for source in ("served", "cached")
            for change in distance_changes(sums[source], sums["in_process"], source, "in_process")
        ],
        "trained_against_start": [
            change
            for source in SOURCES
            for change in distance_changes(sums[source], sums["start"], source, "start")
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="training rows (the first of the math prompts)")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps of each run (batch 4)")
    parser.add_argument("--top-k", type=int, default=32, help="K of the served and cached teachers")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="training completions are cut here")
    parser.add_argument("--eval-max-new-tokens", type=int, default=128, help="the teacher's test answers")
    parser.add_argument(
        "--sources",
        type=lambda text: text.split(","),
        default=list(SOURCES),
        help="the students to train in this call (comma-separated); the evaluation runs once all three are",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "teacher_quality")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    from selftaught.distill.student import healed_student
    from selftaught.models.embedded import embedded_teacher

    teacher, student = str(embedded_teacher()), str(healed_student())
    data = args.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = (BUILTIN / "train.jsonl").read_text().splitlines(True)[: args.rows]
    (data / "train.jsonl").write_text("".join(rows))
    record = args.work / "train_seconds.json"  # of every call, for the result
    earlier = json.loads(record.read_text()) if record.is_file() else {}
    seconds = earlier | train_students(args, teacher, student, data, args.work)
    record.write_text(json.dumps(seconds))
    if missing := [s for s in SOURCES if not (args.work / s / "model.safetensors").is_file()]:
        print(f"trained {seconds}; still to train: {', '.join(missing)} (rerun with --sources)")
        return
    result = evaluate(args, teacher, student, args.work)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings |= {"work": "runs/bench/teacher_quality", "output": args.output.name}
    write_result(args.output, {"settings": settings, "train_seconds": seconds} | result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
