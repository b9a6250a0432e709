"""Self-curation, speed and quality: selftaught's one-pass digit read against generate-then-parse.

Humpback's curation step rates every (instruction, response) pair on a 5-point rubric. The paper, and
the public re-implementations, let the model write brief reasoning and then "Score: <d>", and parse that
with a regex; peers found the regex failing on up to 45% of outputs and free generation the cost centre.
This benchmark rates the same labelled pairs (bench/data/curation_dev.jsonl, written by
scripts/make_curation_dev.py: real seed answers = 1, mismatched and promotional answers = 0) three ways,
with the same model, batch size and rubric:

  (a) probs        selftaught's default, `rate_pairs(mode="probs")`: one batched forward pass reads the
                   next-token distribution over "1".."5" after our own "Score: "; score = its expectation.
  (b) free+regex   the paper's and the peers' way: greedy free generation of the reasoning-then-score
                   reply (at most --max-reasoning-tokens new tokens) on the same "generate" prompts that
                   `rate_pairs(mode="generate")` uses, with selftaught's batched `generate_all`, then
                   `parse_generated_score` (the last "Score: d") on the text. A reply without one is
                   unparsed: no score, never kept, and ranked below every parsed reply for the AUC.
  (c) constrained  optional (--with-constrained), `rate_pairs(mode="generate")`: the same free reasoning,
                   cut before any rating line it wrote, then our "Score: " and the digit read as in (a).

Measured per mode:
- pairs/s: rows / wall seconds of the scoring call alone (prompt building, tokenisation, generation or
  forward passes, decoding, parsing); the model is loaded and warmed up (one small untimed call per
  mode) beforehand.
- parsed: share of rows with a usable score. (a) and (c): a finite distribution over the five digits
  with an argmax in 1..5 (always, by construction; measured anyway); (b): the regex found a score.
- ROC AUC against the labels, Mann-Whitney with ties counted as half: (a) and (c) rank by the expected
  score, (b) by the parsed digit with unparsed rows at the bottom (tied with each other).
- precision and recall of "keep" at the paper's threshold, score >= 4: (a) and (c) use the argmax digit;
  (a) also keeps expectation >= its median over the rows as a second operating point (keeps about half).
- a paired bootstrap (1,000 resamples of the rows) of AUC(a) - AUC(b), to tell a difference from noise.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/curation.py                       # all rows (210), CPU
    HF_HUB_OFFLINE=1 .venv/bin/python bench/curation.py --limit 24            # smoke
    ... --with-constrained --max-reasoning-tokens 128 --batch-size 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before selftaught's imports load huggingface_hub
from selftaught.evaluate.curation import KEEP_AT, precision_recall, roc_auc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "curation_dev.jsonl"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "curation.json"

MODES = ("probs", "free+regex", "constrained")
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 1000, 0
TARGET_SPEEDUP = 20.0


# --- data and model ----------------------------------------------------------------------------------


def load_dev_rows(path: Path, limit: int | None) -> list[dict]:
    """The first `limit` rows of the dev set (all when None); both labels must be present."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: write it with `python scripts/make_curation_dev.py`")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit is not None else rows
    if len({row["label"] for row in rows}) < 2:
        raise SystemExit(f"the first {len(rows)} rows of {path} hold one label only: raise --limit")
    return rows


def load_rater(device: str, dtype: str = "float32"):
    """(model, tokenizer, path) of the default rater, the embedded SmolLM2-135M-Instruct, in `dtype`."""
    from selftaught.models import load_model, load_tokenizer
    from selftaught.models.embedded import embedded_teacher

    path = embedded_teacher()
    model = load_model(str(path), dtype).to(device).eval()
    return model, load_tokenizer(str(path)), path


# --- the three ways to score -------------------------------------------------------------------------


def valid_distribution(rating: dict) -> bool:
    """A digit read that can be used: five finite probabilities summing to 1 and an argmax in 1..5."""
    probs = rating["score_probs"]
    return (
        len(probs) == 5
        and all(math.isfinite(p) for p in probs)
        and abs(sum(probs) - 1) < 1e-6
        and 1 <= rating["score_argmax"] <= 5
    )


def score_probs(model, tokenizer, pairs: list[tuple[str, str]], args: argparse.Namespace) -> list[dict]:
    """(a) selftaught's default: one forward pass per batch, the digit distribution after "Score: "."""
    from selftaught.scoring.ratings import rate_pairs

    ratings = rate_pairs(model, tokenizer, pairs, batch_size=args.batch_size, mode="probs")
    return [
        {"score": r["score_expectation"], "argmax": r["score_argmax"], "parsed": valid_distribution(r)}
        for r in ratings
    ]


def score_free_generation(
    model, tokenizer, pairs: list[tuple[str, str]], args: argparse.Namespace
) -> list[dict]:
    """(b) the peers' way: greedy reasoning-then-score reply, the last "Score: d" taken from the text."""
    from selftaught.generation.hf import SamplingParams, generate_all
    from selftaught.scoring.ratings import parse_generated_score, rating_chat_text

    # The prompt rate_pairs(mode="generate") writes, encoded as it does (the template wrote BOS already).
    chats = [rating_chat_text(tokenizer, i, r, "generate") for i, r in pairs]
    prompts = [tokenizer.encode(chat, add_special_tokens=False) for chat in chats]
    greedy = SamplingParams(max_new_tokens=args.max_reasoning_tokens, temperature=0)
    completions = generate_all(model, tokenizer, prompts, greedy, args.batch_size, desc="free generation")
    results = []
    for ids in completions:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        score = parse_generated_score(text)
        results.append(
            {"score": score, "parsed": score is not None, "new_tokens": len(ids), "generated": text}
        )
    return results


def score_constrained(model, tokenizer, pairs: list[tuple[str, str]], args: argparse.Namespace) -> list[dict]:
    """(c) selftaught's generate mode: the same free reasoning, then our "Score: " and the digit read."""
    from selftaught.scoring.ratings import rate_pairs

    ratings = rate_pairs(
        model,
        tokenizer,
        pairs,
        batch_size=args.batch_size,
        mode="generate",
        max_reasoning_tokens=args.max_reasoning_tokens,
    )
    return [
        {"score": r["score_expectation"], "argmax": r["score_argmax"], "parsed": valid_distribution(r),
         "regex_score": r["regex_score"], "generated": r["generated"]}
        for r in ratings
    ]  # fmt: skip


SCORERS: dict[str, Callable] = {
    "probs": score_probs,
    "free+regex": score_free_generation,
    "constrained": score_constrained,
}


def mean_prompt_tokens(tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Mean length in tokens of the "generate" rating prompts (the "probs" ones differ by a few tokens)."""
    from selftaught.scoring.ratings import rating_chat_text

    chats = (rating_chat_text(tokenizer, i, r, "generate") for i, r in pairs)
    return statistics.fmean(len(tokenizer.encode(chat, add_special_tokens=False)) for chat in chats)


def warm_up(model, tokenizer, pairs: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """One small untimed call of each code path, so no mode pays for first-call setup in its timing."""
    few = argparse.Namespace(**{**vars(args), "max_reasoning_tokens": 4})
    score_probs(model, tokenizer, pairs, few)
    score_free_generation(model, tokenizer, pairs, few)


def timed(fn: Callable[[], list[dict]]) -> tuple[list[dict], float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


# --- agreement with the labels -----------------------------------------------------------------------


def ranking_scores(results: list[dict]) -> list[float]:
    """The score each row is ranked by: unparsed rows get 0, below the lowest possible score (1)."""
    return [r["score"] if r["parsed"] else 0.0 for r in results]


def operating_points(mode: str, results: list[dict], labels: list[int]) -> dict[str, dict]:
    """Precision/recall at the paper's threshold, and for (a) at expectation >= median as well."""
    if mode == "free+regex":
        keep = [r["parsed"] and r["score"] >= KEEP_AT for r in results]
        return {f"score>={KEEP_AT}": precision_recall(keep, labels)}
    points = {f"argmax>={KEEP_AT}": precision_recall([r["argmax"] >= KEEP_AT for r in results], labels)}
    if mode == "probs":
        median = statistics.median(r["score"] for r in results)
        point = precision_recall([r["score"] >= median for r in results], labels)
        points["expectation>=median"] = {**point, "threshold": median}
    return points


def by_kind(results: list[dict], rows: list[dict]) -> dict[str, dict]:
    """Mean ranking score and share parsed for each kind of row (real, mismatched, promotional)."""
    out = {}
    for kind in sorted({row["kind"] for row in rows}):
        picked = [r for r, row in zip(results, rows, strict=True) if row["kind"] == kind]
        out[kind] = {
            "rows": len(picked),
            "mean_score": statistics.fmean(ranking_scores(picked)),
            "parsed": sum(r["parsed"] for r in picked) / len(picked),
        }
    return out


def summarise(mode: str, results: list[dict], seconds: float, rows: list[dict]) -> dict:
    labels = [row["label"] for row in rows]
    summary = {
        "seconds": seconds,
        "pairs_per_second": len(results) / seconds,
        "parsed": sum(r["parsed"] for r in results) / len(results),
        "auc": roc_auc(ranking_scores(results), labels),
        "auc_ranked_by": "parsed digit; unparsed rows lowest (tied)"
        if mode == "free+regex"
        else "expectation",
        "operating_points": operating_points(mode, results, labels),
        "by_kind": by_kind(results, rows),
    }
    if mode == "free+regex":
        parsed = [(r["score"], label) for r, label in zip(results, labels, strict=True) if r["parsed"]]
        summary["auc_parsed_rows_only"] = roc_auc([s for s, _ in parsed], [y for _, y in parsed])
        summary["score_counts"] = {str(d): sum(r["score"] == d for r in results) for d in range(1, 6)}
        summary["mean_new_tokens"] = statistics.fmean(r["new_tokens"] for r in results)
    if mode == "constrained":
        # the peers' regex on the very same reasoning text, for comparison with (b)
        regex_parsed = sum(r["regex_score"] is not None for r in results)
        summary["regex_parsed_on_its_reasoning"] = regex_parsed / len(results)
    return summary


def bootstrap_auc_difference(first: list[float], second: list[float], labels: list[int]) -> dict:
    """Paired bootstrap over rows of AUC(first) - AUC(second): mean and 95% percentile interval."""
    rng = random.Random(BOOTSTRAP_SEED)
    n, differences = len(labels), []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picks = [rng.randrange(n) for _ in range(n)]
        sample = [labels[i] for i in picks]
        a = roc_auc([first[i] for i in picks], sample)
        b = roc_auc([second[i] for i in picks], sample)
        if a is not None and b is not None:
            differences.append(a - b)
    differences.sort()
    low, high = differences[int(0.025 * len(differences))], differences[int(0.975 * len(differences)) - 1]
    return {"mean": statistics.fmean(differences), "ci95": [low, high], "resamples": len(differences)}


# --- the report --------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_report(summaries: dict[str, dict], comparison: dict, args: argparse.Namespace, n: int) -> None:
    print(
        f"\nCuration on {n} labelled pairs ({args.data.name}), "
        f"prompts of {comparison['mean_prompt_tokens']:.0f} tokens on average, batch {args.batch_size}, "
        f"max {args.max_reasoning_tokens} reasoning tokens, {args.device}, "
        f"{comparison['torch_threads']} torch threads\n"
    )
    header = (
        f"{'mode':<13}{'pairs/s':>9}{'seconds':>9}{'parsed':>8}{'AUC':>7}  {'keep rule':<21}"
        f"{'kept':>5}{'prec':>7}{'recall':>8}"
    )
    print(header)
    print("-" * len(header))
    for mode, s in summaries.items():
        speed = f"{s['pairs_per_second']:>9.2f}{s['seconds']:>9.1f}"
        first = f"{mode:<13}{speed}{s['parsed']:>8.0%}{fmt(s['auc']):>7}"
        for number, (rule, point) in enumerate(s["operating_points"].items()):
            lead = first if number == 0 else " " * len(first)
            print(
                f"{lead}  {rule:<21}{point['kept']:>5}{fmt(point['precision']):>7}{fmt(point['recall']):>8}"
            )
    print("\nmean score by kind (free+regex: unparsed = 0):")
    kinds = sorted({k for s in summaries.values() for k in s["by_kind"]})
    print(f"  {'mode':<13}" + "".join(f"{k:>13}" for k in kinds))
    for mode, s in summaries.items():
        print(f"  {mode:<13}" + "".join(f"{s['by_kind'][k]['mean_score']:>13.2f}" for k in kinds))
    free = summaries["free+regex"]
    print(
        f"\nfree+regex: {free['mean_new_tokens']:.1f} new tokens per reply on average; parsed digits "
        f"{free['score_counts']}; AUC on its parsed rows only {fmt(free['auc_parsed_rows_only'])}"
    )
    if "constrained" in summaries:
        share = summaries["constrained"]["regex_parsed_on_its_reasoning"]
        print(f"constrained: the peers' regex would have parsed {share:.0%} of its own reasoning texts")
    print(
        '(free+regex: a reply without "Score: d" is unparsed, never kept, and ranked below all parsed ones,'
        "\n tied; at 0% parsed every row ties and its AUC is 0.5 by construction)"
    )
    print("\nratios and targets:")
    for key, value in comparison["ratios"].items():
        print(f"  {key:<40}{value:8.2f}")
    d = comparison["auc_difference_probs_minus_free"]
    print(
        f"  AUC(probs) - AUC(free+regex): {fmt(d['point'])}, bootstrap mean {fmt(d['mean'])}, "
        f"95% CI [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}] ({d['resamples']} resamples)"
    )
    for target, met in comparison["targets"].items():
        print(f"  {target:<40}{'met' if met else 'NOT met'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the labelled dev set (JSONL)")
    parser.add_argument("--limit", type=int, help="score only the first N rows (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass / generate call")
    parser.add_argument(
        "--max-reasoning-tokens", type=int, default=64, help="new tokens allowed for the free reply"
    )
    parser.add_argument(
        "--with-constrained", action="store_true", help="also time rate_pairs(mode='generate')"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, ...)")
    parser.add_argument(
        "--dtype", default="float32", help="weights dtype for every mode (bfloat16 uses AMX on recent CPUs)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON results")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 2:
        parser.error("--limit must be at least 2 (one pair of each label)")
    if args.batch_size < 1 or args.max_reasoning_tokens < 1:
        parser.error("--batch-size and --max-reasoning-tokens must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = load_dev_rows(args.data, args.limit)
    pairs = [(row["instruction"], row["response"]) for row in rows]
    labels = [row["label"] for row in rows]
    print(f"loading the rater and warming up ({len(rows)} rows to score) ...", flush=True)
    model, tokenizer, model_path = load_rater(args.device, args.dtype)
    warm_up(model, tokenizer, pairs[: args.batch_size], args)
    prompt_tokens = mean_prompt_tokens(tokenizer, pairs)

    modes = [m for m in MODES if m != "constrained" or args.with_constrained]
    results: dict[str, list[dict]] = {}
    summaries: dict[str, dict] = {}
    for mode in modes:
        print(f"scoring: {mode} ...", flush=True)
        results[mode], seconds = timed(lambda m=mode: SCORERS[m](model, tokenizer, pairs, args))
        summaries[mode] = summarise(mode, results[mode], seconds, rows)
        print(f"  {seconds:.1f} s, {summaries[mode]['pairs_per_second']:.2f} pairs/s", flush=True)

    probs, free = summaries["probs"], summaries["free+regex"]
    ratios = {"pairs/s probs / free+regex": probs["pairs_per_second"] / free["pairs_per_second"]}
    if "constrained" in summaries:
        ratios["pairs/s probs / constrained"] = (
            probs["pairs_per_second"] / summaries["constrained"]["pairs_per_second"]
        )
    difference = bootstrap_auc_difference(
        ranking_scores(results["probs"]), ranking_scores(results["free+regex"]), labels
    )
    auc_point = None if probs["auc"] is None or free["auc"] is None else probs["auc"] - free["auc"]
    comparison = {
        "ratios": ratios,
        "auc_difference_probs_minus_free": {"point": auc_point, **difference},
        "targets": {
            f"pairs/s >= {TARGET_SPEEDUP:g}x free+regex": ratios["pairs/s probs / free+regex"]
            >= TARGET_SPEEDUP,
            "probs parsed 100%": probs["parsed"] == 1.0,
            "probs AUC >= free+regex AUC (point)": auc_point is not None and auc_point >= 0,
        },
        "torch_threads": torch.get_num_threads(),
        "mean_prompt_tokens": prompt_tokens,
    }
    print_report(summaries, comparison, args, len(rows))

    per_row = []
    for index, row in enumerate(rows):
        entry = {"id": row["id"], "kind": row["kind"], "label": row["label"]}
        for mode in modes:
            r = results[mode][index]
            entry[mode] = {k: r[k] for k in ("score", "argmax", "parsed", "generated") if k in r}
        per_row.append(entry)
    report = {
        "config": {
            "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
            "rows": len(rows), "limit": args.limit, "batch_size": args.batch_size,
            "max_reasoning_tokens": args.max_reasoning_tokens, "keep_at": KEEP_AT, "device": args.device,
            "dtype": args.dtype, "model": f"{model_path.name} (selftaught.models.embedded.embedded_teacher)",
            "modes": modes, "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        },
        "environment": {
            "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "results": summaries,
        "comparison": comparison,
        "rows": per_row,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
