"""`selftaught eval math`: greedy accuracy and pass@k on MATH-500-format data, every prediction saved.

The prompt is the row's problem plus the instruction to box the final answer (selftaught.data.formats);
the last \\boxed{} of the answer is checked against the gold answer by math-verify (evaluate/math.py).
Every gold answer is parsed once, before the model loads; one that cannot be read as a single
expression is listed (console and JSON) and scored apart as `unverifiable`, never as right or wrong.
Each prediction row carries the data's id, the gold's parse and the extracted answer's parse, so a
verdict can be checked from the predictions file alone.
The answers come from the engine of `--engine` (hf, vllm or a server); sample i of pass@k is drawn with
seed `--seed` + i on each of them, so a rerun draws the same samples.
"""

from __future__ import annotations

from pathlib import Path

from selftaught.data.formats import to_examples, tokenize_prompt
from selftaught.data.loading import DataError
from selftaught.data.shards import write_parquet
from selftaught.evaluate.common import eval_engine, load_eval_rows, required, required_model
from selftaught.evaluate.config import ID_COLUMNS, MathEvalConfig
from selftaught.evaluate.math import (
    GoldAnswer,
    boxes_an_answer,
    breakdown,
    math_accuracy,
    parse_gold,
    pass_at_k,
    score_math,
)
from selftaught.evaluate.results import write_result
from selftaught.generation.base import GenerationEngine, SamplingParams
from selftaught.models.loading import context_length, load_tokenizer
from selftaught.models.naming import model_label
from selftaught.scoring.degeneration import degeneration_metrics, ended_with_eos

TASK = "math"


def row_ids(rows, config: MathEvalConfig, source: str) -> list[str]:
    """Each row's id as the data names it (`--id_column`, else the first of ID_COLUMNS present), else its
    row number (from 1, as errors count rows)."""
    column = config.id_column or next((c for c in ID_COLUMNS if c in rows.column_names), None)
    if column is None:
        return [str(i) for i in range(1, len(rows) + 1)]
    if column not in rows.column_names:
        raise DataError(
            f"{source}: no id column {column!r} (the columns are {rows.column_names}); fix --id_column"
        )
    return [str(value) for value in rows[column]]


def read_golds(answers: list[str], ids: list[str]) -> tuple[list[GoldAnswer], list[dict]]:
    """Every gold answer parsed once, up front, and the unverifiable ones listed: {id, gold, reason}."""
    golds = [parse_gold(a) for a in answers]
    flagged = [
        {"id": i, "gold": g.text, "reason": g.reason}
        for i, g in zip(ids, golds, strict=True)
        if not g.verifiable
    ]
    return golds, flagged


def print_unverifiable(flagged: list[dict], total: int, show: int = 20) -> None:
    """Say, before any model runs, which gold answers cannot be verified and why: the data's to fix."""
    if not flagged:
        return
    print(
        f"eval math: {len(flagged)} of {total} gold answers cannot be verified; they are scored apart "
        "(`unverifiable`), neither right nor wrong. Write each as one mathematical expression to score it:"
    )
    for row in flagged[:show]:
        print(f"  {row['id']}: {row['gold']!r}: {row['reason']}")
    if len(flagged) > show:
        print(f"  ... {len(flagged) - show} more in math.json")


def fit_prompts(
    prompts: list[list[int]], ids: list[str], config: MathEvalConfig, context: int | None, source: str
) -> list[list[int]]:
    """The prompts cut to `--max_prompt_length` (their last tokens, as distill cuts them), with a notice;
    then any still longer than the model's `context` refused by row: such a prompt (a 20,000-word
    problem) ran for minutes on one batch, past what the model was trained to read."""
    limit = config.max_prompt_length
    if limit is not None and (cut := sum(len(p) > limit for p in prompts)):
        print(
            f"eval math: {cut} of {len(prompts)} prompts cut to their last {limit} tokens",
            "(--max_prompt_length)",
        )
        prompts = [p[-limit:] for p in prompts]
    too_long = [
        f"{i} ({len(p)} tokens)" for i, p in zip(ids, prompts, strict=True) if context and len(p) > context
    ]
    if too_long:
        raise DataError(
            f"{source}: {len(too_long)} prompt(s) longer than the model's context of {context} tokens, "
            f"rows {', '.join(too_long[:5])}{' ...' if len(too_long) > 5 else ''}; shorten or drop them, or "
            f"give --max_prompt_length (at most {context}) to keep each prompt's last tokens"
        )
    return prompts


def answer_rows(
    engine: GenerationEngine, prompts: list[list[int]], golds: list[GoldAnswer], params, sample: int
) -> list[dict]:
    """One prediction row per prompt: generated text, extracted answer and its parse, the gold's parse,
    verdict: all a person needs to redo a verdict from the predictions file alone."""
    ids = engine.generate(prompts, params, f"math ({sample=})")
    texts = engine.tokenizer.batch_decode(ids, skip_special_tokens=True)
    checked = score_math(texts, golds)
    eos_ids = [engine.tokenizer.eos_token_id]  # each engine returns a stopped completion through its EOS
    return [
        {"index": i, "sample": sample, "generated": texts[i], "gold": golds[i].text, "tokens": len(ids[i]),
         "ended_with_eos": ended_with_eos(ids[i], eos_ids)}
        | checked[i]
        for i in range(len(prompts))
    ]  # fmt: skip


def math_metrics(greedy: list[dict], sampled: list[dict], rows, ks: list[int], samples: int) -> dict:
    """Greedy accuracy and boxed share, pass@k over the samples, and the greedy breakdown by subject and
    level, all over the problems whose gold answer can be verified (the others are counted as
    `unverifiable`); and whether the greedy answers are still text (degenerate share, distinct-2, mean
    tokens, EOS share), over all of them."""
    scored = [r["index"] for r in greedy if r["correct"] is not None]
    metrics = {
        "accuracy": math_accuracy(greedy),
        "boxed_share": sum(boxes_an_answer(r["extracted"]) for r in greedy) / len(greedy),
        "problems": len(greedy),
        "scored": len(scored),
        "unverifiable": len(greedy) - len(scored),
    }
    metrics |= degeneration_metrics(
        [r["generated"] for r in greedy], [r["tokens"] for r in greedy], [r["ended_with_eos"] for r in greedy]
    )
    correct_counts = dict.fromkeys(scored, 0)
    for row in sampled:
        if row["index"] in correct_counts:
            correct_counts[row["index"]] += bool(row["correct"])
    for k in ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in correct_counts.values()) / max(
            len(scored), 1
        )
    for column, name in (("subject", "by_subject"), ("level", "by_level")):
        if column in rows.column_names:
            metrics[name] = breakdown(
                [rows[column][i] for i in scored], [greedy[i]["correct"] for i in scored]
            )
    return metrics


def run_math(config: MathEvalConfig) -> dict:
    """Evaluate, write `<output_dir>/math.json` and `math_predictions.parquet`; the result dict.

    A prediction's `sample` is -1 for the greedy answer and 0..samples-1 for the sampled ones.
    """
    model = required_model(config, "model", TASK)
    data = required(config.data, "--data", TASK)
    rows = load_eval_rows(data, config, ("problem", "answer"))
    examples = to_examples(rows, data)
    missing = [i for i, e in enumerate(examples, start=1) if e.answer is None]
    if missing:
        raise DataError(f"{data}: rows {missing[:10]} have no `answer`; fill them in or drop them")
    ids = row_ids(rows, config, data)
    golds, unverifiable = read_golds([e.answer for e in examples], ids)
    print_unverifiable(unverifiable, len(golds))
    tokenizer = load_tokenizer(model, config.trust_remote_code)
    # With engine=openai the local folder gives only the tokenizer; the server applies its own limit.
    model_context = None if config.engine == "openai" else context_length(model, config.trust_remote_code)
    prompts = [tokenize_prompt(tokenizer, e.prompt) for e in examples]
    prompts = fit_prompts(prompts, ids, config, model_context, data)
    engine = eval_engine(model, config, tokenizer)
    greedy = answer_rows(engine, prompts, golds, SamplingParams(config.max_new_tokens, 0), -1)
    sampled: list[dict] = []
    for sample in range(config.samples):
        seed = config.seed + sample
        params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p, seed=seed)
        sampled += answer_rows(engine, prompts, golds, params, sample)
    metrics = math_metrics(greedy, sampled, rows, config.pass_ks, config.samples)
    context = {"id": ids, "prompt": rows["problem"]} | {
        c: rows[c] for c in ("subject", "level") if c in rows.column_names
    }
    predictions = [
        r | {key: str(values[r["index"]]) for key, values in context.items()} for r in greedy + sampled
    ]
    write_parquet(Path(config.output_dir) / f"{TASK}_predictions.parquet", predictions)
    models = {"model": model_label(config.model)}
    if config.engine == "openai":  # the served model answered; the local one gave only its tokenizer
        models["served_by"] = engine.name
    audit = {"unverifiable": unverifiable}
    return write_result(config.output_dir, TASK, metrics, config, models, data, extra=audit)
