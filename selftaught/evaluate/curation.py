"""`selftaught eval curation`: how well a rater's curation scores separate good pairs from bad ones.

Humpback's Table 7 measure: precision and recall of the pairs a rater keeps, and ROC AUC of its scores,
against labelled (instruction, response) pairs (label 1: a pair to keep, 0: one to drop). The scores
come from `rate_pairs`, the same call the `curate` stage makes, on the engine of `--engine`.
"""

from __future__ import annotations

from pathlib import Path

from selftaught.data.loading import DataError
from selftaught.data.shards import write_parquet
from selftaught.evaluate.common import eval_engine, load_eval_rows, required, required_model
from selftaught.evaluate.config import CurationEvalConfig, EvalConfig
from selftaught.evaluate.results import write_result
from selftaught.scoring.ratings import rate_pairs

TASK = "curation"
KEEP_AT = 4  # the paper's threshold: a pair whose score is 4 or 5 is kept


def roc_auc(scores: list[float], labels: list[int]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counted as 1/2 (Mann-Whitney U).

    From average ranks: U = (sum of the positives' ranks) - P(P+1)/2, AUC = U / (P N). None when one
    class is absent. Written here: a dozen lines, not worth scikit-learn as a dependency.
    """
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for k in range(start, end + 1):  # a tie group shares the mean of ranks start+1 .. end+1
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    positive_rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label == 1)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def precision_recall(keep: list[bool], labels: list[int]) -> dict:
    """Precision and recall of `keep` for label 1 (precision None when nothing is kept)."""
    kept = sum(keep)
    true_kept = sum(k and label == 1 for k, label in zip(keep, labels, strict=True))
    return {
        "kept": kept,
        "precision": true_kept / kept if kept else None,
        "recall": true_kept / sum(labels) if sum(labels) else None,
    }


def curation_metrics(ratings: list[dict], labels: list[int], threshold: float) -> dict:
    """AUC of the expected score; precision/recall at argmax >= 4 and at expectation >= `threshold`."""
    expectations = [r["score_expectation"] for r in ratings]
    return {
        "auc": roc_auc(expectations, labels),
        f"argmax>={KEEP_AT}": precision_recall([r["score_argmax"] >= KEEP_AT for r in ratings], labels),
        f"expectation>={threshold:g}": precision_recall([e >= threshold for e in expectations], labels),
        "pairs": len(labels),
        "positives": sum(labels),
        "mean_expectation": sum(expectations) / len(expectations),
    }


def read_labelled(source: str, config: EvalConfig) -> list[dict]:
    """Labelled pairs as {instruction, response, label} with label 0 or 1; a bad label names its row."""
    rows = load_eval_rows(source, config, ("instruction", "response", "label"))
    bad = [i for i, label in enumerate(rows["label"], start=1) if label not in (0, 1, True, False)]
    if bad:
        raise DataError(f"{source}: rows {bad[:10]} have a `label` other than 0 or 1; fix them")
    return [
        {"instruction": r["instruction"], "response": r["response"], "label": int(r["label"])} for r in rows
    ]


def mismatched_labels(pairs: list[dict]) -> list[dict]:
    """Gold pairs as positives, and each instruction with the next pair's response as a negative (an
    off-topic answer, a 1 on the rubric): a labelled set from any held-out {instruction, response} pairs."""
    if len(pairs) < 2:
        return []
    following = pairs[1:] + pairs[:1]
    return [{"instruction": p["instruction"], "response": p["response"], "label": 1} for p in pairs] + [
        {"instruction": p["instruction"], "response": q["response"], "label": 0}
        for p, q in zip(pairs, following, strict=True)
    ]


def evaluate_rater(model, tokenizer, labelled: list[dict], config: CurationEvalConfig) -> tuple[dict, list]:
    """(metrics, one prediction row per labelled pair: the pair and its rating) for one rater, an engine
    or a loaded model."""
    pairs = [(r["instruction"], r["response"]) for r in labelled]
    ratings = rate_pairs(model, tokenizer, pairs, config.batch_size, config.mode, config.max_reasoning_tokens)
    labels = [r["label"] for r in labelled]
    rows = [row | rating for row, rating in zip(labelled, ratings, strict=True)]
    return curation_metrics(ratings, labels, config.threshold), rows


def run_curation(config: CurationEvalConfig) -> dict:
    """Rate the labelled pairs, write `<output_dir>/curation.json` and the ratings as Parquet."""
    model = required_model(config, "model", TASK)
    data = required(config.data, "--data", TASK)
    rows = read_labelled(data, config)
    engine = eval_engine(model, config)
    metrics, predictions = evaluate_rater(engine, engine.tokenizer, rows, config)
    write_parquet(Path(config.output_dir) / f"{TASK}_predictions.parquet", predictions)
    return write_result(config.output_dir, TASK, metrics, config, {"model": engine.name}, data)
