"""`selftaught eval math`: greedy accuracy and pass@k on MATH-500-format data, every prediction saved.

The prompt is the row's problem plus the instruction to box the final answer (selftaught.data.formats);
the last \\boxed{} of the answer is checked against the gold answer by math-verify (evaluate/math.py).
The answers come from the engine of `--engine` (hf, vllm or a server); sample i of pass@k is drawn with
seed `--seed` + i on each of them, so a rerun draws the same samples.
"""

from __future__ import annotations

from pathlib import Path

from selftaught.data.formats import to_examples, tokenize_prompt
from selftaught.data.loading import DataError
from selftaught.data.shards import write_parquet
from selftaught.evaluate.common import eval_engine, load_eval_rows, required
from selftaught.evaluate.config import MathEvalConfig
from selftaught.evaluate.math import breakdown, math_accuracy, pass_at_k, score_math
from selftaught.evaluate.results import write_result
from selftaught.generation.engines import GenerationEngine
from selftaught.generation.hf import SamplingParams
from selftaught.models.naming import model_label
from selftaught.scoring.degeneration import degeneration_metrics, ended_with_eos

TASK = "math"


def parse_ks(config: MathEvalConfig) -> list[int]:
    """The k of pass@k that `samples` can estimate."""
    ks = sorted({int(k) for k in config.pass_k.split(",") if k.strip()})
    if any(k < 1 for k in ks):
        raise ValueError(f"--pass_k takes positive integers, got {config.pass_k!r}")
    return [k for k in ks if k <= config.samples]


def answer_rows(
    engine: GenerationEngine, prompts: list[list[int]], answers: list[str], params, sample: int
) -> list[dict]:
    """One prediction row per prompt: generated text, extracted answer, verdict."""
    ids = engine.generate(prompts, params, f"math ({sample=})")
    texts = engine.tokenizer.batch_decode(ids, skip_special_tokens=True)
    checked = score_math(texts, answers)
    eos_ids = [engine.tokenizer.eos_token_id]  # each engine returns a stopped completion through its EOS
    return [
        {"index": i, "sample": sample, "generated": texts[i], "extracted": checked[i]["extracted"],
         "gold": answers[i], "correct": checked[i]["correct"], "tokens": len(ids[i]),
         "ended_with_eos": ended_with_eos(ids[i], eos_ids)}
        for i in range(len(prompts))
    ]  # fmt: skip


def math_metrics(greedy: list[dict], sampled: list[dict], rows, ks: list[int], samples: int) -> dict:
    """Greedy accuracy and boxed share, pass@k over the samples, whether the greedy answers are still text
    (degenerate share, distinct-2, mean tokens, EOS share), and the greedy breakdown by subject and level."""
    metrics = {
        "accuracy": math_accuracy(greedy),
        "boxed_share": sum(r["extracted"] is not None for r in greedy) / len(greedy),
        "problems": len(greedy),
    }
    metrics |= degeneration_metrics(
        [r["generated"] for r in greedy], [r["tokens"] for r in greedy], [r["ended_with_eos"] for r in greedy]
    )
    correct_counts = [0] * len(greedy)
    for row in sampled:
        correct_counts[row["index"]] += bool(row["correct"])
    for k in ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in correct_counts) / len(greedy)
    for column, name in (("subject", "by_subject"), ("level", "by_level")):
        if column in rows.column_names:
            metrics[name] = breakdown(rows[column], [r["correct"] for r in greedy])
    return metrics


def run_math(config: MathEvalConfig) -> dict:
    """Evaluate, write `<output_dir>/math.json` and `math_predictions.parquet`; the result dict.

    A prediction's `sample` is -1 for the greedy answer and 0..samples-1 for the sampled ones.
    """
    data = required(config.data, "--data", TASK)
    rows = load_eval_rows(data, config, ("problem", "answer"))
    examples = to_examples(rows, data)
    missing = [i for i, e in enumerate(examples, start=1) if e.answer is None]
    if missing:
        raise DataError(f"{data}: rows {missing[:10]} have no `answer`; fill them in or drop them")
    ks = parse_ks(config)
    engine = eval_engine(required(config.model, "--model", TASK), config)
    prompts = [tokenize_prompt(engine.tokenizer, e.prompt) for e in examples]
    answers = [e.answer for e in examples]
    greedy = answer_rows(engine, prompts, answers, SamplingParams(config.max_new_tokens, 0), -1)
    sampled: list[dict] = []
    for sample in range(config.samples):
        seed = config.seed + sample
        params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p, seed=seed)
        sampled += answer_rows(engine, prompts, answers, params, sample)
    metrics = math_metrics(greedy, sampled, rows, ks, config.samples)
    context = {"prompt": rows["problem"]} | {
        c: rows[c] for c in ("subject", "level") if c in rows.column_names
    }
    predictions = [
        r | {key: str(values[r["index"]]) for key, values in context.items()} for r in greedy + sampled
    ]
    write_parquet(Path(config.output_dir) / f"{TASK}_predictions.parquet", predictions)
    models = {"model": model_label(config.model)}
    if config.engine == "openai":  # the served model answered; the local one gave only its tokenizer
        models["served_by"] = engine.name
    return write_result(config.output_dir, TASK, metrics, config, models, data)
