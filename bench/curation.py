"""Self-curation, every mode: speed and agreement with the labels on the project's labelled dev set.

Humpback's curation step scores every (instruction, response) pair. The paper lets the model write brief
reasoning and then "Score: <d>", parsed with a regex (peers found the regex failing on up to 45% of
outputs, and free generation the cost centre). A small rater cannot apply the rubric at all; likelihood
scores need only next-token predictions. This benchmark scores the same labelled pairs
(bench/data/curation_dev.jsonl, written by scripts/make_curation_dev.py) with the same model and batch
size in every mode:

  free+regex   the paper's and the peers' way: greedy reasoning-then-score reply (at most
               --max-reasoning-tokens new tokens) on the prompts `score_pairs(mode="generate")` uses,
               parsed with `parse_generated_score`; an unparsed reply ranks lowest and is never kept
  generate     (--with-generate) selftaught's generate mode: the same reasoning, then our "Score: " read
  rubric       selftaught's rubric mode: P("1".."5") after our "Score: ", one forward pass
  pmi@K        mean log P(y_t | x, y_<t) - log P(y_t | y_<t) over the first K response tokens
  pmi_no_echo@K  the same rows ranked by `pmi_no_echo`: a response that echoes its instruction (most of its
               word trigrams are the instruction's) ranked last; its pairs/s are pmi@K's (no model call)
  pmi_guarded@K  the same rows ranked by `pmi_guarded`, the demo's: pmi_no_echo, and a pair that speaks to
               its rater about its rating ranked last too (bench/injection.py measures why)
  ifd@K        Superfiltering's IFD over the first K response tokens, ranked as Superfiltering ranks it
  backward@K   mean log P(instruction | response), the response cut to K tokens; the backward model is
               the base model prompted with Myx's prompt (zero-shot), or --backward-model (a trained Myx)

Measured per mode:
- pairs/s: rows / wall seconds of the scoring call alone; the model is loaded and warmed up (one small
  untimed call per code path) beforehand; the same batch size everywhere;
- ROC AUC of the mode's ranking score (`scoring.curation.RANKED_BY`) against the labels, with a 95%
  bootstrap interval (1,000 resamples of the rows);
- the AUC of the real pairs against each kind of negative on its own, and against all the adversarial
  kinds together (restated, paraphrased, non_answer, keyword_stuffed): what each mode can be gamed by;
- precision and recall at the demo's rule (selftaught/backtranslate/default.yaml) for the mode the demo
  selects with, and at each mode's natural rule (rubric: argmax >= 4; pmi >= 0; ifd < 1).
Targets: pmi with the embedded base model (ranked with its guards, as the demo selects) at AUC >= 0.9
and >= 20x the pairs/s of free+regex.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/curation.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/curation.py --limit 40 --modes rubric,pmi      # smoke
    ... --tokens 32,256 (likelihood modes at several K) --with-generate --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml
from common import portable, write_result  # bench/common.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before selftaught's imports load huggingface_hub

from selftaught.evaluate.curation import KEEP_AT, auc_with_interval, curation_metrics, precision_recall  # noqa: E402
from selftaught.scoring.curation import RANKED_BY, SelectionRule, score_value  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "curation_dev.jsonl"
DEMO = ROOT / "selftaught" / "backtranslate" / "default.yaml"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "curation.json"
ADVERSARIAL = ("restated", "paraphrased", "non_answer", "keyword_stuffed")
TARGET_SPEEDUP, TARGET_AUC = 20.0, 0.9
GUARDED_PMI = ("pmi_no_echo", "pmi_guarded")  # PMI ranked with the echo guard, and with both guards


def load_dev_rows(path: Path, limit: int | None) -> list[dict]:
    """The first `limit` rows of the dev set (all when None); both labels must be present."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: write it with `python scripts/make_curation_dev.py`")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit is not None else rows
    if len({row["label"] for row in rows}) < 2:
        raise SystemExit(f"the first {len(rows)} rows of {path} hold one label only: raise --limit")
    return rows


def demo_rule() -> tuple[str, SelectionRule, int]:
    """(the demo's curation mode, its selection rule, the response tokens it scores), as `backtranslate
    run` reads default.yaml."""
    from selftaught.backtranslate.config import BacktranslateConfig

    values = yaml.safe_load(DEMO.read_text())
    keys = ("curation_mode", "select_by", "min_score", "select_top", "max_scored_tokens")
    config = BacktranslateConfig(**{k: values[k] for k in keys if k in values})
    return config.curation_modes[0], config.selection_rule(), config.max_scored_tokens


# --- the ways to score -------------------------------------------------------------------------------


def free_generation(engine, pairs: list[tuple[str, str]], args: argparse.Namespace) -> list[dict]:
    """The peers' way: greedy reasoning-then-score reply, the last "Score: d" taken from the text."""
    from selftaught.generation.base import SamplingParams
    from selftaught.scoring.ratings import parse_generated_score, rating_prompt_ids

    prompts = [rating_prompt_ids(engine.tokenizer, i, r, "generate") for i, r in pairs]
    greedy = SamplingParams(max_new_tokens=args.max_reasoning_tokens, temperature=0)
    completions = engine.generate(prompts, greedy, "free generation")
    results = []
    for ids in completions:
        text = engine.tokenizer.decode(ids, skip_special_tokens=True)
        score = parse_generated_score(text)
        # ranked by the parsed digit; an unparsed reply below every parsed one (as a digit of 0)
        results.append({"score_expectation": score or 0, "score_argmax": score or 0, "generated": text})
    return results


def scorer(mode: str, args: argparse.Namespace):
    """(selftaught mode, K) and the call that scores pairs in `mode` (e.g. "pmi@32")."""
    from selftaught.scoring.curation import score_pairs

    name, _, tokens = mode.partition("@")
    if name == "free+regex":
        return lambda engine, pairs: free_generation(engine, pairs, args)
    return lambda engine, pairs: score_pairs(
        engine, engine.tokenizer, pairs, name, args.max_reasoning_tokens, int(tokens or 256), args.batch_size
    )


def timed(fn, *fn_args) -> tuple[list[dict], float]:
    started = time.perf_counter()
    result = fn(*fn_args)
    return result, time.perf_counter() - started


# --- agreement with the labels -----------------------------------------------------------------------


def summarise(
    mode: str, scored: list[dict], seconds: float, rows: list[dict], demo, ranked_by: str | None = None
) -> dict:
    """`ranked_by`: rank by that score instead of the mode's own (pmi rows ranked by a guarded PMI)."""
    name = mode.partition("@")[0]
    ranked = "rubric" if name == "free+regex" else name  # the parsed digit sits in the rubric's fields
    labels, kinds = [r["label"] for r in rows], [r["kind"] for r in rows]
    demo_mode, rule, _ = demo
    rules = [rule] if name == demo_mode and (ranked_by or RANKED_BY[name]) == rule.score else []
    metrics = curation_metrics(scored, labels, ranked, rules, kinds, ranked_by)
    if name in ("rubric", "generate", "free+regex"):
        keep = [s["score_argmax"] >= KEEP_AT for s in scored]
        metrics[f"argmax >= {KEEP_AT}"] = precision_recall(keep, labels)
    elif name in ("pmi", "ifd"):
        natural = SelectionRule(ranked_by or name)
        metrics[natural.describe()] = precision_recall(natural.keep(scored), labels)
    values = [score_value(s, metrics["ranked_by"]) for s in scored]
    adversarial = [i for i, k in enumerate(kinds) if k == "real" or k in ADVERSARIAL]
    metrics["adversarial"] = auc_with_interval(
        [values[i] for i in adversarial], [labels[i] for i in adversarial]
    )
    metrics |= {"seconds": seconds, "pairs_per_second": len(scored) / seconds}
    if name == "free+regex":
        metrics["parsed"] = sum(s["score_argmax"] > 0 for s in scored) / len(scored)
    return metrics


# --- the report --------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def interval(metrics: dict) -> str:
    low, high = metrics.get("auc_ci95") or (None, None)
    return f"{fmt(metrics['auc'])} [{fmt(low)}, {fmt(high)}]"


def print_report(summaries: dict[str, dict], comparison: dict, args: argparse.Namespace, n: int) -> None:
    where = f"batch {args.batch_size}, {args.device}, {args.dtype}"
    print(f"\nCuration on {n} labelled pairs ({args.data.name}), {where}\n")
    header = f"{'mode':<16}{'pairs/s':>9}{'AUC [95% CI]':>26}{'adversarial AUC':>26}"
    print(header + "\n" + "-" * len(header))
    for mode, s in summaries.items():
        print(f"{mode:<16}{s['pairs_per_second']:>9.2f}{interval(s):>26}{interval(s['adversarial']):>26}")
    kinds = sorted({k for s in summaries.values() for k in s["by_kind"]})
    print("\nAUC of the real pairs against each kind of negative:")
    print(f"  {'mode':<16}" + "".join(f"{k:>17}" for k in kinds))
    for mode, s in summaries.items():
        print(f"  {mode:<16}" + "".join(f"{fmt(s['by_kind'][k]['auc']):>17}" for k in kinds))
    print("\nprecision / recall of the kept pairs:")
    for mode, s in summaries.items():
        for rule, point in s.items():
            if isinstance(point, dict) and "kept" in point:
                precision, recall = fmt(point["precision"]), fmt(point["recall"])
                print(
                    f"  {mode:<16}{rule:<34}kept {point['kept']:>4}  precision {precision}  recall {recall}"
                )
    print("\nratios and targets:")
    for key, value in comparison["ratios"].items():
        print(f"  {key:<44}{value:8.2f}")
    for target, met in comparison["targets"].items():
        print(f"  {target:<44}{'met' if met else 'NOT met'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the labelled dev set (JSONL)")
    parser.add_argument("--limit", type=int, help="score only the first N rows (default: all)")
    parser.add_argument(
        "--modes", default="free+regex,rubric,pmi,ifd,backward", help="comma-separated modes to run"
    )
    parser.add_argument("--tokens", default="256", help="K for the likelihood modes, comma-separated")
    parser.add_argument("--with-generate", action="store_true", help="also time selftaught's generate mode")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass / generate call")
    parser.add_argument("--max-reasoning-tokens", type=int, default=64, help="new tokens of a free reply")
    parser.add_argument("--backward-model", help="a trained backward model (default: the base, zero-shot)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, ...)")
    parser.add_argument("--dtype", default="float32", help="weights dtype for every mode")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON results")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 2:
        parser.error("--limit must be at least 2 (one pair of each label)")
    return args


def expand_modes(args: argparse.Namespace) -> list[str]:
    modes = []
    for mode in args.modes.split(","):
        if mode in ("pmi", "ifd", "backward"):
            modes += [f"{mode}@{k}" for k in args.tokens.split(",")]
        else:
            modes.append(mode)
    return modes + (["generate"] if args.with_generate else [])


def main() -> None:
    args = parse_args()
    import torch

    from selftaught.generation.engines import HFEngine
    from selftaught.models import load_model, load_tokenizer
    from selftaught.models.embedded import embedded_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = load_dev_rows(args.data, args.limit)
    pairs = [(row["instruction"], row["response"]) for row in rows]
    print(f"loading the rater and warming up ({len(rows)} rows to score) ...", flush=True)
    path = embedded_teacher()
    engine = HFEngine(
        load_model(str(path), args.dtype).to(args.device), load_tokenizer(str(path)), args.batch_size
    )
    backward = engine
    if args.backward_model:
        backward = HFEngine(
            load_model(args.backward_model, args.dtype).to(args.device), engine.tokenizer, args.batch_size
        )
    modes, demo = expand_modes(args), demo_rule()
    few = argparse.Namespace(**{**vars(args), "max_reasoning_tokens": 4})
    for mode in dict.fromkeys(m.partition("@")[0] for m in modes):  # first-call setup of each code path
        scorer(mode, few)(backward if mode == "backward" else engine, pairs[: args.batch_size])

    summaries, results = {}, {}
    for mode in modes:
        print(f"scoring: {mode} ...", flush=True)
        which = backward if mode.startswith("backward") else engine
        results[mode], seconds = timed(scorer(mode, args), which, pairs)
        summaries[mode] = summarise(mode, results[mode], seconds, rows, demo)
        speed = summaries[mode]["pairs_per_second"]
        print(f"  {seconds:.1f} s, {speed:.2f} pairs/s, AUC {interval(summaries[mode])}", flush=True)
        if mode.startswith("pmi@"):  # the same scores ranked with the guards: no second scoring
            for guard in GUARDED_PMI:
                guarded = mode.replace("pmi@", f"{guard}@")
                summaries[guarded] = summarise(mode, results[mode], seconds, rows, demo, guard)
                print(f"  {guarded}: AUC {interval(summaries[guarded])}", flush=True)

    # the target is the demo's score at the demo's K; else the last PMI ranked by the demo's score
    selected_by = demo[1].score
    guarded = [m for m in summaries if m.startswith(f"{selected_by}@")]
    pmi = f"{selected_by}@{demo[2]}" if f"{selected_by}@{demo[2]}" in guarded else (guarded or [None])[-1]
    ratios, targets = {}, {}
    if pmi and "free+regex" in summaries:
        ratio = summaries[pmi]["pairs_per_second"] / summaries["free+regex"]["pairs_per_second"]
        ratios[f"pairs/s {pmi} / free+regex"] = ratio
        targets[f"{pmi}: pairs/s >= {TARGET_SPEEDUP:g}x free+regex"] = ratio >= TARGET_SPEEDUP
    for mode in modes:
        if mode != "free+regex" and "free+regex" in summaries:
            ratios.setdefault(
                f"pairs/s {mode} / free+regex",
                summaries[mode]["pairs_per_second"] / summaries["free+regex"]["pairs_per_second"],
            )
    if pmi:
        targets[f"{pmi}: AUC >= {TARGET_AUC}"] = (summaries[pmi]["auc"] or 0) >= TARGET_AUC
    comparison = {
        "ratios": ratios,
        "targets": targets,
        "demo": {"mode": demo[0], "rule": demo[1].describe(), "max_scored_tokens": demo[2]},
    }
    print_report(summaries, comparison, args, len(rows))

    per_row = [
        {"id": row["id"], "kind": row["kind"], "label": row["label"]}
        | {
            mode: {k: v for k, v in results[mode][i].items() if isinstance(v, (int, float)) or v is None}
            for mode in modes
        }
        for i, row in enumerate(rows)
    ]
    report = {
        "config": {
            "data": portable(args.data),
            "rows": len(rows), "limit": args.limit, "batch_size": args.batch_size,
            "max_reasoning_tokens": args.max_reasoning_tokens, "device": args.device, "dtype": args.dtype,
            "model": f"{path.name} (selftaught.models.embedded.embedded_teacher)",
            "backward_model": Path(args.backward_model).name if args.backward_model else "base, zero-shot",
            "modes": modes,
        },
        "environment": {"torch_threads": torch.get_num_threads()},
        "results": summaries,
        "comparison": comparison,
        "rows": per_row,
    }  # fmt: skip
    write_result(args.output, report)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
