"""Humpback's two claims, measured: does curated backtranslation teach the corpus's domain, and does curation
beat using more, or random, augmented data at the same number of steps?

One backtranslation run (the demo's settings, `selftaught/backtranslate/default.yaml`, with a larger corpus:
`--segments`) makes the seed pairs, M0, Myx, the augmented pairs and M0's curation of them, through the
library's own stages. Corpus documents held out of that run (`backtranslate/new_domain.py`) are the new
domain's test set: a user's question about each (e.g. "What is the Python package <name> for?"), the
document's own text as the gold answer. Then, from the same M0 and the same augmented pairs, once per seed,
each arm fine-tunes M0 for the same `--steps` further steps (training/sft.py, as the recipe trains), on:

    curated     the seed pairs + the pairs M0's curation selected (what M1 learns)
    random      the seed pairs + as many augmented pairs, drawn at random
    all         the seed pairs + every augmented pair
    seed_only   the seed pairs only: "more steps" is not mistaken for "better data"

(The recipe trains M1 from the base; here every arm continues from M0 so that the four differ only in
data.) Each model's NLL per token of the new domain's gold answers and of the held-out oasst gold answers
(the seed's domain: forgetting shows there) is scored as `backtranslate run` scores it (`ModelSuite`).
Every difference gets a paired 95% bootstrap interval over the held-out examples, per seed and for the
mean over seeds (the same resample of examples for every seed), and the spread of the per-seed values.

Each piece (three setup chunks, the reference models, each arm x seed) runs under `--lock` when given,
held for at most `--lock_minutes` at a time (`Lease`); a rerun skips what the result JSON already holds
and says so, and resumes the setup where the run folder stopped.

Cost on the 2-core CPU of BENCHMARKS.md at the defaults: setup 5.2 min (M0 56 s, Myx 66 s, augment 128
segments 162 s, curation 26 s); an arm's optimizer step on seed + web pairs (batch 4, up to 320 tokens)
takes 30-35 s, so an arm of 4 steps about 2.5 min with its scoring, and 12 arms about 30 min.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/backtranslation_fidelity.py --lock /tmp/selftaught-heavy.lock
    ... --quick        # 1 seed, 40 segments, 4 steps: a smoke run into runs/bench-smoke
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

from common import portable, write_result  # bench/common.py

from selftaught.backtranslate import recipe
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.evaluation import evaluation_configs, held_out_seed_pairs, new_domain_gold
from selftaught.backtranslate.examples import seed_example, web_example
from selftaught.backtranslate.runfolder import RunFolder
from selftaught.cli import parse_configs
from selftaught.data.shards import read_parquet, read_shards
from selftaught.evaluate.intervals import paired_difference_interval, ratio
from selftaught.evaluate.suite import ModelSuite
from selftaught.training.sft import SFTSettings, train_sft

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "selftaught" / "backtranslate" / "default.yaml"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "backtranslation_fidelity.json"
ARMS = ("curated", "random", "all", "seed_only")
TASKS = {"new_domain_nll": "new domain (held-out corpus documents)", "heldout_nll": "oasst held-out gold"}
# model - against: M1 against M0 (does it teach?), each arm against more steps on the seed alone (data, not
# steps?), and curation against its two alternatives at equal steps.
CONTRASTS = (
    *((arm, "M0") for arm in ARMS),
    *((arm, "seed_only") for arm in ("curated", "random", "all")),
    ("curated", "random"),
    ("curated", "all"),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds per arm.")
    parser.add_argument("--segments", type=int, default=128, help="Corpus segments augmented (max_segments).")
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps each arm adds to M0.")
    parser.add_argument("--documents", type=int, default=40, help="Corpus documents held out (new domain).")
    parser.add_argument("--heldout", type=int, default=64, help="Held-out oasst gold pairs scored.")
    parser.add_argument("--run_dir", type=Path, default=ROOT / "runs" / "bench" / "backtranslation_fidelity")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--lock", type=Path, help="Run every piece under this file's lock (flock).")
    parser.add_argument("--lock_minutes", type=float, default=8, help="Longest hold of the lock at a time.")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 segments, 4 steps, 8 documents.")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.segments, args.steps, args.documents, args.heldout = 1, 40, 4, 8, 16
        args.run_dir = ROOT / "runs" / "bench-smoke" / "backtranslation_fidelity"
        args.output = ROOT / "runs" / "bench-smoke" / "backtranslation_fidelity.json"
    return args


class Lease:
    """Runs the bench's pieces under `lock` (flock) when given, holding it for at most `minutes` at a time:
    a piece starts under the held lock only if the last piece's duration still fits, else the lock is given
    back first and asked for again, so a shared machine is never held for long and each wait for the lock
    serves several short pieces."""

    def __init__(self, lock: Path | None, minutes: float) -> None:
        self.lock, self.budget = lock, minutes * 60
        self.handle, self.held_since, self.last = None, 0.0, 0.0

    @contextmanager
    def piece(self, name: str):
        now = time.perf_counter()
        if self.handle is not None and now - self.held_since + self.last > self.budget:
            self.release()
        if self.lock and self.handle is None:
            self.handle = open(self.lock, "a")  # noqa: SIM115  (held across pieces, closed by release)
            fcntl.flock(self.handle, fcntl.LOCK_EX)
            self.held_since = time.perf_counter()
            print(f"[lock] held after waiting {self.held_since - now:.0f} s", flush=True)
        started = time.perf_counter()
        print(f"[{name}] started", flush=True)
        yield
        self.last = time.perf_counter() - started
        print(f"[{name}] done in {self.last:.0f} s", flush=True)

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file gives the lock back
            self.handle = None
            print(f"[lock] given back after {time.perf_counter() - self.held_since:.0f} s", flush=True)


def configs(args: argparse.Namespace) -> tuple[BacktranslateConfig, SFTSettings]:
    """The demo's settings (default.yaml) with the bench's corpus size and held-out sets, parsed as
    `selftaught backtranslate` parses them."""
    flags = ["--config", str(PRESET), "--run_dir", str(args.run_dir), "--max_segments", str(args.segments)]
    flags += ["--eval_new_domain_documents", str(args.documents), "--eval_heldout_pairs", str(args.heldout)]
    return parse_configs((BacktranslateConfig, SFTSettings), flags, "bench/backtranslation_fidelity.py")


def setup(lease: Lease, config: BacktranslateConfig, settings: SFTSettings) -> dict:
    """Seed pairs, M0, Myx, segments, augmented pairs and M0's curation, through the recipe's stages: three
    chunks, each well under ten minutes at the defaults, skipped when the run folder holds their stages."""
    pieces = {
        "setup: seed, M0, Myx, segment": (
            ("seed", "train_M0", "train_Myx", "segment"),
            (recipe.stage_seed, recipe.stage_train_seed, recipe.stage_train_backward, recipe.stage_segment),
        ),
        "setup: augment": (("augment",), (recipe.stage_augment,)),
        "setup: curate and select (iteration 1)": (
            ("curate_1", "select_1"),
            (partial(recipe.stage_curate, k=1), partial(recipe.stage_select, k=1)),
        ),
    }
    run = RunFolder(config.run_dir)
    for name, (stages, functions) in pieces.items():
        if set(stages) <= set(run.read_summary()):
            print(f"[{name}] already in {portable(run.root)}: skipped")
            continue
        with lease.piece(name):
            for stage in functions:
                stage(config, settings)
    summary = run.read_summary()
    return {stage: {k: summary[stage][k] for k in ("rows_in", "rows_out", "seconds")} for stage in summary}


def arm_examples(arm: str, seed: int, run: RunFolder) -> list[dict]:
    """The training examples of one arm, tagged as the recipe tags them (examples.py)."""
    seed_pairs = [seed_example(p) for p in read_parquet(run.seed_pairs)]
    augmented = [p for p in read_shards(run.augment).to_list() if p["instruction"]]
    curated = read_parquet(run.selected(1))
    web = {
        "curated": curated,
        "random": random.Random(seed).sample(augmented, len(curated)),
        "all": augmented,
        "seed_only": [],
    }[arm]
    return seed_pairs + [web_example(p) for p in web]


def score(folder: Path, label: str, model: str, config: BacktranslateConfig, gold: dict) -> dict:
    """Per held-out example, {nll, tokens} under `model`, for each gold set, as `backtranslate run`'s
    evaluation scores it (the seed tag as system prompt)."""
    judge, _ = evaluation_configs(config, folder, config.base())
    suite = ModelSuite(
        folder, {label: model}, label, [], gold["heldout_nll"], [], (judge, []), None, gold["new_domain_nll"]
    )
    return {task: suite.nll(label, task) for task in TASKS}


def per_token(rows: list[dict], idx: list[int]) -> float | None:
    return ratio([r["nll"] for r in rows], [r["tokens"] for r in rows], idx)


def contrast(model_rows: list[dict], against_rows: list[dict], task: str) -> dict:
    """model - against over seeds: per seed with its paired interval, and the seed mean with one paired
    interval (the same resample of held-out examples for every seed)."""
    n = len(model_rows[0][task])

    def mean(rows: list[dict]) -> Callable[[list[int]], float | None]:
        return lambda idx: statistics.fmean(per_token(r[task], idx) for r in rows)

    everything = list(range(n))
    per_seed = [
        {
            "difference": per_token(m[task], everything) - per_token(a[task], everything),
            "ci95": paired_difference_interval(mean([m]), mean([a]), n),
        }
        for m, a in zip(model_rows, against_rows, strict=True)
    ]
    differences = [s["difference"] for s in per_seed]
    return {
        "difference": statistics.fmean(differences),
        "ci95": paired_difference_interval(mean(model_rows), mean(against_rows), n),
        "seed_min": min(differences),
        "seed_max": max(differences),
        "seed_std": statistics.stdev(differences) if len(differences) > 1 else 0.0,
        "per_seed": per_seed,
        "examples": n,
    }


def summarise(result: dict, seeds: list[int]) -> dict:
    """The table (mean per-token NLL per arm over seeds) and every contrast, from the runs present."""
    reference = result["reference"]
    rows = {label: [reference[label]] * len(seeds) for label in reference}
    rows |= {arm: [result["runs"].get(f"{arm}/seed{s}") for s in seeds] for arm in ARMS}
    present = {label: r for label, r in rows.items() if all(r)}
    table = {
        label: {
            task: statistics.fmean(per_token(x[task], list(range(len(x[task])))) for x in r) for task in TASKS
        }
        for label, r in present.items()
    }
    contrasts = [
        {
            "model": model,
            "against": against,
            "metric": task,
            **contrast(present[model], present[against], task),
        }
        for model, against in CONTRASTS
        if model in present and against in present
        for task in TASKS
    ]
    return {"table": table, "contrasts": contrasts}


def print_tables(summary: dict, seeds: int) -> None:
    """Markdown, as BENCHMARKS.md quotes it."""
    print("| model | " + " | ".join(f"{t} / token" for t in TASKS) + " |")
    print("|---|" + "---:|" * len(TASKS))
    for label, values in summary["table"].items():
        print(f"| {label} | " + " | ".join(f"{values[t]:.4f}" for t in TASKS) + " |")
    print(f"(arms: mean over {seeds} seed(s))\n")
    print("| difference | " + " | ".join(f"{t} [95% CI] (seed range)" for t in TASKS) + " |")
    print("|---|" + "---|" * len(TASKS))
    by_pair: dict[tuple[str, str], dict[str, dict]] = {}
    for c in summary["contrasts"]:
        by_pair.setdefault((c["model"], c["against"]), {})[c["metric"]] = c
    for (model, against), per_task in by_pair.items():
        cells = [
            f"{c['difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] "
            f"({c['seed_min']:+.4f} .. {c['seed_max']:+.4f})"
            for c in (per_task[t] for t in TASKS)
        ]
        print(f"| {model} - {against} | " + " | ".join(cells) + " |")


def main() -> None:
    args = parse_args()
    seeds = list(range(args.seeds))
    config, settings = configs(args)
    result = json.loads(args.output.read_text()) if args.output.is_file() else {}
    # what the kept runs depend on (more seeds may be added to a finished result)
    bench_settings = {k: getattr(args, k) for k in ("segments", "steps", "documents", "heldout")}
    if result and result["settings"]["bench"] != bench_settings:
        raise SystemExit(
            f"{portable(args.output)} holds runs made with {result['settings']['bench']}, not "
            f"{bench_settings}: give another --output, or the same settings to resume it"
        )
    result.setdefault("runs", {})
    run = RunFolder(config.run_dir)
    lease = Lease(args.lock, args.lock_minutes)
    result["setup"] = setup(lease, config, settings)
    base, m0 = config.base(), str(run.model("M0"))
    held_out = held_out_seed_pairs(config, settings)[: args.heldout]
    gold = {"heldout_nll": held_out, "new_domain_nll": new_domain_gold(config, settings, base)}
    extra = replace(settings, max_steps=args.steps)
    result["settings"] = {
        "bench": bench_settings,
        "training": {k: v for k, v in vars(extra).items() if k != "seed"},
        "held_out": {task: len(pairs) for task, pairs in gold.items()},
        "new_domain_instructions": [p["instruction"] for p in gold["new_domain_nll"]],
        "curated_pairs": len(read_parquet(run.selected(1))),
        "rule": config.selection_rule().describe(),
    }

    def save() -> None:
        write_result(args.output, result | summarise(result, seeds))

    reference = result.setdefault("reference", {})
    for label, model in (("base", base), ("M0", m0)):
        if label in reference:
            print(f"[evaluate {label}] already in {portable(args.output)}: skipped")
            continue
        with lease.piece(f"evaluate {label}"):
            reference[label] = score(run.root / "bench" / label, label, model, config, gold)
        save()
    for seed in seeds:
        for arm in ARMS:
            key = f"{arm}/seed{seed}"
            if key in result["runs"]:
                print(f"[{key}] already in {portable(args.output)}: skipped")
                continue
            with lease.piece(key):
                folder = run.root / "bench" / f"{arm}-seed{seed}"
                examples = arm_examples(arm, seed, run)
                started = time.perf_counter()
                model = train_sft(m0, examples, folder / "model", replace(extra, seed=seed))
                seconds = time.perf_counter() - started
                scores = score(folder, arm, str(model), config, gold)
                shutil.rmtree(model)  # its per-example scores are kept; 500 MB per arm are not
                result["runs"][key] = {"examples": len(examples), "train_seconds": seconds, **scores}
            save()
    lease.release()
    print_tables(summarise(result, seeds), len(seeds))
    print(f"results: {portable(args.output)}")


if __name__ == "__main__":
    main()
