"""Does on-policy distillation teach a task better than supervised KD and SFT, at equal steps and equal time?

The GKD paper's claim is about task quality: from a student fine-tuned on the task, on-policy distillation
lifts its task score more than supervised KD or SFT does, for the same data and steps. That needs a teacher
that can do the task, which the embedded SmolLM2-135M-Instruct cannot (it adds no multi-digit numbers).
So this bench uses the shipped addition task (`selftaught/data/builtin/addition`, sums of two 3-digit
numbers worked column by column, scored by the math verifier) and the task's own models
(`selftaught.distill.task_models`): the embedded model fine-tuned on the task (the teacher) and a layer cut
of it briefly fine-tuned on the task (the student, clearly worse but not hopeless).

From that student, on the task's training problems, for the same optimizer steps and batch, once per seed:

    sft                 supervised fine-tuning on the worked answers (`training.sft`, TRL's SFTTrainer). The
                        student is itself an SFT checkpoint, so this is also the teacher-free control of the
                        same length: plain continued SFT.
    supervised_kd       forward KL to the teacher on the worked answers (lmbda 0, beta 0)
    seq_kd              forward KL on the teacher's own samples (lmbda 0, beta 0, seq_kd)
    on_policy_beta0.5   on-policy GKD (lmbda 1), JSD(0.5)
    on_policy_beta0.9   on-policy GKD (lmbda 1), JSD(0.9): `selftaught distill`'s demo setting
    on_policy_beta1     on-policy GKD (lmbda 1), reverse KL
    on_policy_beta0     on-policy with forward KL (lmbda 1, beta 0): the student's samples, scored as
                        supervised KD scores the worked answers. Reverse KL and JSD(beta) weight each
                        token's correction by the student's own probability of it, so they barely pull a
                        student toward a digit it thinks unlikely; forward KL pulls as cross-entropy does.
                        This separates "on-policy samples" from "mode-seeking divergence".
    mixed               lmbda 0.5, JSD(0.5): about half the steps on the student's samples
    sft_3x_steps, supervised_kd_2x_steps
                        the two cheapest methods run for 3 and 2 times the steps, so that their training
                        takes about as long as an on-policy run's (an on-policy step also samples its batch)

Every distillation run is `selftaught distill` itself (`distill.recipe.run_distillation`, the command's
function, with no held-out evaluation of its own); every trained student is then scored as `selftaught eval
math` scores (`task_models.task_accuracy`): greedy answers to the first `--eval-prompts` test problems.
Reported per method: mean accuracy over the seeds, its 95% bootstrap interval over the problems (each
problem's outcome averaged over the seeds), the share of the teacher-student gap closed (with a paired
interval), the seeds' spread, and the training wall time per run (the trainer's `train_runtime`).

The bench is resumable: every finished run is written to the output JSON at once, and a rerun skips the runs
already there (saying so). Seeds can run side by side (e.g. `--seeds 1 --output a.json` and `--seeds 2
--output b.json`, each `--threads 1`); `--merge a.json b.json` then folds their runs into the output, every
invocation's provenance kept in `earlier_runs`.
`--lock FILE` holds an exclusive lock on FILE while runs train and evaluate, and
releases it between two runs once it has held it `--lock-minutes`, so a shared machine's other jobs get turns
(do not also wrap the command in `flock` on the same file: it would wait for itself).

Usage (the teacher and student are built into the cache on first use, about 10 minutes on 2 cores):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/task_fidelity.py
    ... --methods sft,supervised_kd --seeds 0                     # a subset; the rest can follow later
    HF_HUB_OFFLINE=1 .venv/bin/python bench/task_fidelity.py --quick --output runs/task_fidelity_quick.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import portable, write_result  # bench/common.py

from selftaught.data.formats import to_examples
from selftaught.data.loading import load_rows
from selftaught.distill.config import DistillConfig
from selftaught.distill.recipe import run_distillation
from selftaught.distill.task_models import (
    TASK_STUDENT,
    json_settings,
    task_accuracy,
    task_data,
    task_student,
    task_teacher,
)
from selftaught.evaluate.distance import share_of
from selftaught.evaluate.intervals import bootstrap_interval, mean_interval, paired_comparison
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings, sft_example, train_sft

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "task_fidelity.json"
# Each method: its `selftaught distill` knobs (none for SFT), and how many times the common steps it runs.
METHODS: dict[str, tuple[dict | None, int]] = {
    "sft": (None, 1),
    "supervised_kd": ({"lmbda": 0.0, "beta": 0.0}, 1),
    "on_policy_beta0.5": ({"lmbda": 1.0, "beta": 0.5}, 1),
    "on_policy_beta1": ({"lmbda": 1.0, "beta": 1.0}, 1),
    "on_policy_beta0.9": ({"lmbda": 1.0, "beta": 0.9}, 1),
    "on_policy_beta0": ({"lmbda": 1.0, "beta": 0.0}, 1),
    "seq_kd": ({"lmbda": 0.0, "beta": 0.0, "seq_kd": True}, 1),
    "mixed": ({"lmbda": 0.5, "beta": 0.5}, 1),
    # Equal time: an on-policy step also samples its batch, so it takes about 3 SFT steps and 2 supervised KD
    # steps (measured in the runs above: see their train seconds).
    "sft_3x_steps": (None, 3),
    "supervised_kd_2x_steps": ({"lmbda": 0.0, "beta": 0.0}, 2),
}


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run per method and seed")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=4, help="problems per optimizer step")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="constant, for every method")
    parser.add_argument("--temperature", type=float, default=0.9, help="of the on-policy and seq_kd samples")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=96,
        help="longest sampled completion (answers: at most 82 tokens)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--lock", type=Path, help="hold an exclusive lock on this file while training")
    parser.add_argument(
        "--lock-minutes", type=float, default=9, help="release the lock after a run past this"
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 steps of 2: a smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="result files of other invocations with the same settings: their runs join the output's",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.batch_size = "0", 2, 2
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    return args


def run_settings(args: argparse.Namespace) -> dict:
    """What makes two runs comparable: a result file holds runs of one setting only."""
    keys = ("steps", "batch_size", "learning_rate", "temperature", "max_new_tokens")
    return {k: getattr(args, k) for k in keys} | {"student": json_settings(TASK_STUDENT)}


def steps_of(args: argparse.Namespace, method: str) -> int:
    return args.steps * METHODS[method][1]


def train_sft_run(args, student: Path, steps: int, seed: int, out: Path) -> float:
    """Fine-tune the student on the worked answers; the training seconds."""
    data = task_data(TASK_STUDENT.teacher)
    rows = to_examples(load_rows(str(data), "train"), str(data))
    settings = SFTSettings(
        learning_rate=args.learning_rate,
        final_learning_rate=args.learning_rate,  # constant, as the distillation runs
        weight_decay=0.0,
        dropout=0.0,  # the distillation runs have none either
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        max_length=512,
        seed=seed,
        save_steps=10**9,
    )
    train_sft(str(student), [sft_example(e.prompt[-1]["content"], e.completion) for e in rows], out, settings)
    return json.loads((out / COMPLETE_MARKER).read_text())["train"]["train_runtime"]


def distill_run(args, knobs: dict, student: Path, teacher: Path, steps: int, seed: int, out: Path) -> float:
    """`selftaught distill` with the method's knobs; the training seconds."""
    config = DistillConfig(
        output_dir=str(out),
        student=str(student),
        teacher=str(teacher),
        data=str(task_data(TASK_STUDENT.teacher)),
        eval_size=0,  # scored below, as every method is
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=seed,
        save_strategy="no",
        report_to="none",
        **knobs,
    )
    return run_distillation(config).train["train_runtime"]


class TakingTurns:
    """An exclusive lock on a shared file (`--lock`), held across runs for about `minutes` at a time: a run
    that ends past that releases it, so a shared machine's other jobs get a turn, and the next run takes it
    again. Without a file, nothing is locked."""

    def __init__(self, path: Path | None, minutes: float):
        self.file = path.open("a") if path else None
        self.seconds, self.since = minutes * 60, None

    def __enter__(self):
        if self.file and self.since is None:
            print(f"waiting for the lock on {portable(self.file.name)}", flush=True)
            fcntl.flock(self.file, fcntl.LOCK_EX)
            self.since = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.file and self.since is not None and (exc[0] or time.monotonic() - self.since > self.seconds):
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.since = None


def gap_closed(outcomes: list[float], student: list[int], teacher: list[int], idx: list[int]) -> float | None:
    """(method - student) / (teacher - student), accuracies over the problems `idx`."""
    gap = sum(teacher[i] - student[i] for i in idx)
    return sum(outcomes[i] - student[i] for i in idx) / gap if gap else None


def seed_mean_outcomes(runs: list[dict]) -> list[float]:
    """Each problem's outcome averaged over the seeds' runs."""
    return [statistics.fmean(r["outcomes"][i] for r in runs) for i in range(len(runs[0]["outcomes"]))]


def summarise(runs: list[dict], student: dict, teacher: dict) -> dict:
    """One method's row: mean accuracy over seeds, intervals over problems, gap closed, time."""
    accuracies = [r["accuracy"] for r in runs]
    outcomes = seed_mean_outcomes(runs)
    s, t = student["outcomes"], teacher["outcomes"]
    gap = gap_closed(outcomes, s, t, list(range(len(outcomes))))
    return {
        "seeds": len(runs),
        "steps": runs[0]["steps"],
        "accuracy": statistics.fmean(accuracies),
        "interval": mean_interval(outcomes),
        "seed_std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
        "gap_closed": gap,
        "gap_closed_interval": bootstrap_interval(len(outcomes), lambda idx: gap_closed(outcomes, s, t, idx)),
        "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
        "boxed_share": statistics.fmean(r["boxed_share"] for r in runs),
    }


def print_table(baseline: dict, table: dict) -> None:
    """Markdown, as BENCHMARKS.md quotes it."""
    print("| model | steps | accuracy | 95% interval | seed std | gap closed [95%] | train s/run | seeds |")
    print("|---|---:|---:|---|---:|---|---:|---:|")
    for name, a in baseline.items():
        print(
            f"| {name} | – | {a['accuracy']:.3f} | [{a['interval'][0]:.3f}, {a['interval'][1]:.3f}] "
            "| – | – | – | – |"
        )
    for method, m in table.items():
        low, high = m["interval"]
        gap = "–" if m["gap_closed"] is None else f"{m['gap_closed']:+.2f}"
        if m["gap_closed_interval"]:
            gap += f" [{m['gap_closed_interval'][0]:+.2f}, {m['gap_closed_interval'][1]:+.2f}]"
        print(
            f"| {method} | {m['steps']} | {m['accuracy']:.3f} | [{low:.3f}, {high:.3f}] "
            f"| {m['seed_std']:.3f} | {gap} | {m['train_seconds']:.0f} | {m['seeds']} |"
        )


def print_comparisons(rows: list[dict]) -> None:
    print("| model | against | seeds | accuracy difference | paired 95% interval |")
    print("|---|---|---:|---:|---|")
    for r in rows:
        low, high = r["ci95"]
        difference = f"{r['difference']:+.3f} | [{low:+.3f}, {high:+.3f}]"
        print(f"| {r['model']} | {r['against']} | {r['seeds']} | {difference} |")


def answers_to_read(baseline: dict, table: dict, runs: dict) -> dict:
    """The first held-out answers of the teacher, the student before training, and the most and least
    accurate methods' first seed after it: what the numbers mean, in the models' own words."""
    ranked = sorted(table, key=lambda m: table[m]["accuracy"])
    chosen = {"teacher": baseline["teacher"], "student_before": baseline["student"]}
    for role, method in (("best_after", ranked[-1]), ("worst_after", ranked[0])):
        chosen[role] = next(iter(runs[method].values())) | {"method": method}
    return {role: {"method": r.get("method"), "answers": r.get("answers", [])} for role, r in chosen.items()}


COMPETENT = 0.6  # held-out accuracy the task teacher must reach (issue 30)


def read_result(path: Path, settings: dict) -> dict:
    """A result file of the same settings: its runs and provenance (nothing when there is no file)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != settings:
        sys.exit(
            f"{portable(path)} holds runs of other settings ({earlier.get('settings')}); give another "
            "--output, or delete the file to start over"
        )
    return {k: earlier[k] for k in ("provenance", "earlier_runs", "runs") if k in earlier}


def merge_results(into: dict, path: Path, settings: dict) -> None:
    """Fold another invocation's runs (and its provenance) into `into`. A run both files hold must agree."""
    if not path.is_file():
        sys.exit(f"--merge {portable(path)}: no such file")
    other = read_result(path, settings)
    runs = into.setdefault("runs", {})
    for method, seeds in other.get("runs", {}).items():
        for seed, row in seeds.items():
            mine = runs.get(method, {}).get(seed)
            if mine is not None and mine["outcomes"] != row["outcomes"]:
                sys.exit(
                    f"--merge {portable(path)}: {method} seed {seed} differs from the run already in the "
                    "output; keep one of the two files"
                )
            runs.setdefault(method, {})[seed] = row
    known = into.setdefault("earlier_runs", [])
    theirs = [*other.get("earlier_runs", []), *([other["provenance"]] if "provenance" in other else [])]
    for invocation in theirs:
        if invocation not in known and invocation != into.get("provenance"):  # merged twice: named once
            known.append(invocation)


# The questions the issue asks, as paired differences over the same problems (seed-averaged outcomes):
# does on-policy distillation beat SFT and supervised KD at equal steps, and at equal training time?
COMPARISONS = [
    ("on_policy_beta0.9", "sft"),
    ("on_policy_beta0.9", "supervised_kd"),
    ("on_policy_beta1", "sft"),
    ("on_policy_beta1", "supervised_kd"),
    ("supervised_kd", "sft"),
    ("on_policy_beta0", "supervised_kd"),
    ("on_policy_beta0", "on_policy_beta0.9"),
    ("on_policy_beta0.9", "sft_3x_steps"),
    ("on_policy_beta0.9", "supervised_kd_2x_steps"),
]


def comparisons(runs: dict, student: dict) -> list[dict]:
    """Accuracy differences with paired 95% intervals over the problems: the pairs above whose methods have
    both run (over the seeds both have), and every method against the student before training."""
    rows = []
    for model, against in COMPARISONS + [(method, "student") for method in runs]:
        if model not in runs or (against != "student" and against not in runs):
            continue
        if against == "student":
            seeds, theirs = sorted(runs[model]), student["outcomes"]
        else:
            seeds = sorted(set(runs[model]) & set(runs[against]))
            if not seeds:  # merged runs of other seeds: nothing to pair
                continue
            theirs = seed_mean_outcomes([runs[against][s] for s in seeds])
        mine = seed_mean_outcomes([runs[model][s] for s in seeds])
        row = paired_comparison(model, against, "accuracy", share_of(mine), share_of(theirs), len(mine))
        rows.append(row | {"seeds": len(seeds)})
    return rows


def method_table(runs: dict, baseline: dict) -> dict:
    return {m: summarise(list(r.values()), baseline["student"], baseline["teacher"]) for m, r in runs.items()}


def save(path: Path, earlier: dict, settings: dict, baseline: dict, runs: dict) -> None:
    """Write the result, the earlier invocations' provenance kept."""
    table = method_table(runs, baseline)
    history = {k: earlier[k] for k in ("provenance", "earlier_runs") if k in earlier}
    write_result(path, history | {
        "settings": settings, "baseline": baseline, "methods": table,
        "comparisons": comparisons(runs, baseline["student"]), "runs": runs,
        "answers": answers_to_read(baseline, table, runs),
    })  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = run_settings(args)
    earlier = read_result(args.output, settings)
    for path in args.merge:
        merge_results(earlier, path, settings)
    runs = earlier.setdefault("runs", {})
    turns = TakingTurns(args.lock, args.lock_minutes)
    with turns:  # the cached models, built on first use
        teacher, student = task_teacher(TASK_STUDENT.teacher), task_student()
    held_out = {name: json.loads((folder / "task.json").read_text())["held_out"] for name, folder in
                (("teacher", teacher), ("student", student))}  # fmt: skip
    baseline = {"teacher": held_out["teacher"]["teacher"], "student": held_out["student"]["student"]}
    teacher_acc, student_acc = baseline["teacher"]["accuracy"], baseline["student"]["accuracy"]
    if not args.quick and (teacher_acc < COMPETENT or student_acc > teacher_acc / 2):
        # issue 30: on-policy distillation only helps when the teacher adds ability the student lacks;
        # a grid run from an incompetent teacher would measure closeness to it, not task skill
        sys.exit(
            f"the task teacher scores {teacher_acc:.3f} and the student {student_acc:.3f} held out: the grid "
            f"needs a teacher >= {COMPETENT} and a student <= half of it. Rebuild them with other settings "
            "(python -m selftaught.distill.task_models --help), or pass --quick for a smoke run"
        )
    if args.merge:
        save(args.output, earlier, settings, baseline, runs)
    for method in args.methods.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            if str(seed) in runs.get(method, {}):
                print(f"{method} seed {seed}: already in {portable(args.output)}, skipped")
                continue
            knobs, steps = METHODS[method][0], steps_of(args, method)
            with turns, tempfile.TemporaryDirectory() as scratch:
                out = Path(scratch) / "model"
                torch.manual_seed(seed)
                if knobs is None:
                    seconds = train_sft_run(args, student, steps, seed, out)
                else:
                    seconds = distill_run(args, knobs, student, teacher, steps, seed, out)
                row = task_accuracy(out, TASK_STUDENT.teacher, Path(scratch) / "evaluation")
            runs.setdefault(method, {})[str(seed)] = row | {"steps": steps, "train_seconds": seconds}
            print(f"{method} seed {seed}: {steps} steps in {seconds:.0f} s, accuracy {row['accuracy']:.3f}")
            save(args.output, earlier, settings, baseline, runs)
    print_table(baseline, method_table(runs, baseline))
    print_comparisons(comparisons(runs, baseline["student"]))
    print(f"results: {portable(args.output)}")


if __name__ == "__main__":
    main()
