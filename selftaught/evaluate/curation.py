"""`selftaught eval curation`: how well a curation score separates good pairs from bad ones, in any mode.

Humpback's Table 7 measure: precision and recall of the pairs a rater keeps, and ROC AUC of its scores,
against labelled (instruction, response) pairs (label 1: a pair to keep, 0: one to drop). The scores
come from `score_modes`, the same call the `curate` stage makes, on the engine of `--engine`, in any
curation mode (rubric, generate, pmi, ifd, backward), ranked by the mode's score or by any score `select`
ranks by (pmi_guarded, pmi_no_echo, argmax, a+b). Reported: the ROC AUC of the ranking score with a 95%
bootstrap interval, precision and recall at the modes' natural rules (and at --min_score or --select_top
when given), and, when the rows carry a `kind` column (the project's dev set does), the AUC of the
positives against each kind of negative on its own.

Every metric is over the pairs with a score: a pair left unscored (an empty text, a non-finite score: see
`scoring.curation`) is counted in `unscored`, with its row numbers and reasons, and left out. An AUC that
is undefined (one label class among the scored pairs) is None, and `auc_undefined` says why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from selftaught.data.formats import PAIR_SHAPES, pair_shape
from selftaught.data.loading import DataError
from selftaught.data.shards import write_parquet
from selftaught.evaluate.common import eval_engine, load_eval_rows, required, required_model
from selftaught.evaluate.config import CurationEvalConfig, EvalConfig
from selftaught.evaluate.intervals import bootstrap_interval
from selftaught.evaluate.results import write_result
from selftaught.scoring.curation import (
    RANKED_BY,
    RUBRIC_MODES,
    SelectionRule,
    average_ranks,
    score_modes,
    unscored_reason,
)

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
    ranks = average_ranks(scores)
    positive_rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label == 1)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auc_with_interval(scores: list[float | None], labels: list[int]) -> dict:
    """ROC AUC and its 95% bootstrap interval over the pairs with a score (None: left out); when there is
    none, `auc_undefined` says why."""
    scored = [(s, label) for s, label in zip(scores, labels, strict=True) if s is not None]
    values, classes = [s for s, _ in scored], [label for _, label in scored]

    def resampled(idx: list[int]) -> float | None:
        return roc_auc([values[i] for i in idx], [classes[i] for i in idx])

    result = {"auc": roc_auc(values, classes), "auc_ci95": bootstrap_interval(len(classes), resampled)}
    if result["auc"] is None:
        positives = sum(classes)
        result["auc_undefined"] = (
            f"only one label class among the {len(classes)} scored pairs ({positives} positive, "
            f"{len(classes) - positives} negative)"
        )
    return result


def precision_recall(keep: list[bool], labels: list[int]) -> dict:
    """Precision and recall of `keep` for label 1 (precision None when nothing is kept)."""
    kept = sum(keep)
    true_kept = sum(k and label == 1 for k, label in zip(keep, labels, strict=True))
    return {
        "kept": kept,
        "precision": true_kept / kept if kept else None,
        "recall": true_kept / sum(labels) if sum(labels) else None,
    }


def rules_for(config: CurationEvalConfig) -> list[SelectionRule]:
    """The keep rules reported: each scored mode's natural ones (the paper's argmax >= 4 for the rubric, and
    expectation >= --threshold; pmi, pmi_no_echo and pmi_guarded >= 0; ifd < 1), and the user's --min_score /
    --select_top on the ranked score."""
    rules = []
    if set(config.modes) & set(RUBRIC_MODES):
        rules += [SelectionRule("argmax"), SelectionRule("expectation", config.threshold)]
    if "pmi" in config.modes:
        rules += [SelectionRule("pmi"), SelectionRule("pmi_no_echo"), SelectionRule("pmi_guarded")]
    if "ifd" in config.modes:
        rules.append(SelectionRule("ifd"))
    if config.min_score is not None or config.select_top is not None:
        rules.append(SelectionRule(config.ranked_by, config.min_score, config.select_top))
    return rules


def curation_metrics(
    scored: list[dict],
    labels: list[int],
    mode: str,
    rules: list[SelectionRule],
    kinds=None,
    ranked_by: str | None = None,
) -> dict:
    """AUC of the mode's ranking score (or of `ranked_by`, another score its rows carry) with its interval,
    precision/recall at each rule, and the AUC of the positives against each kind of negative when the rows
    have kinds; all over the pairs with a score, the others counted in `unscored` (see the module
    docstring)."""
    score = ranked_by or RANKED_BY[mode]
    values = SelectionRule(score).values(scored)
    unscored = [i for i, v in enumerate(values) if v is None]
    metrics = {"mode": mode, "ranked_by": score, **auc_with_interval(values, labels)}
    kept = [i for i, v in enumerate(values) if v is not None]
    for rule in rules:
        keep = rule.keep([scored[i] for i in kept])
        metrics[rule.describe()] = precision_recall(keep, [labels[i] for i in kept])
    if kinds is not None:
        positives = [i for i, label in enumerate(labels) if label == 1]
        metrics["by_kind"] = {}
        for kind in sorted({k for k, label in zip(kinds, labels, strict=True) if label == 0}):
            idx = positives + [i for i, k in enumerate(kinds) if k == kind and labels[i] == 0]
            metrics["by_kind"][kind] = {
                "negatives": len(idx) - len(positives),
                **auc_with_interval([values[i] for i in idx], [labels[i] for i in idx]),
            }
    finite = [v for v in values if v is not None and v > float("-inf")]
    metrics |= {
        "pairs": len(labels),
        "positives": sum(labels),
        "mean_score": sum(finite) / len(finite) if finite else None,
        "unscored": len(unscored),
    }
    if unscored:
        reasons = Counter(unscored_reason(scored[i]) for i in unscored)
        metrics |= {"unscored_rows": [i + 1 for i in unscored[:20]], "unscored_reasons": dict(reasons)}
    return metrics


def read_labelled(source: str, config: EvalConfig) -> list[dict]:
    """Labelled pairs as {instruction, response, label (0/1)[, kind]}, from any pair shape `seed` reads
    ({instruction, response}, {instruction, output}, {prompt, completion}); a bad row is named."""
    rows = load_eval_rows(source, config, ("label",))
    shape = pair_shape(dict.fromkeys(rows.column_names, ""))
    if shape is None:
        raise DataError(
            f"{source}: no pair columns (the columns are {rows.column_names}); give each row one of "
            f"{[list(s) for s in PAIR_SHAPES]} and a `label`"
        )
    bad = [i for i, label in enumerate(rows["label"], start=1) if label not in (0, 1, True, False)]
    if bad:
        raise DataError(f"{source}: rows {bad[:10]} have a `label` other than 0 or 1; fix them")
    labelled = []
    for number, r in enumerate(rows, start=1):
        question, answer = r[shape[0]], r[shape[1]]
        if not isinstance(question, str) or not isinstance(answer, str):
            raise DataError(f"{source}: row {number}: {shape} must both be text")
        labelled.append({"instruction": question, "response": answer, "label": int(r["label"])})
        if "kind" in r:
            labelled[-1]["kind"] = r["kind"]
    return labelled


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


def evaluate_rater(engine, labelled: list[dict], config: CurationEvalConfig) -> tuple[dict, list]:
    """(metrics, one prediction row per labelled pair: the pair and its scores) for one scorer, an engine,
    in every mode of `config.mode`, ranked by `config.ranked_by`."""
    pairs = [(r["instruction"], r["response"]) for r in labelled]
    scored = score_modes(
        dict.fromkeys(config.modes, engine),
        pairs,
        config.modes,
        config.max_reasoning_tokens,
        config.max_scored_tokens,
        config.batch_size,
    )
    predictions = [row | values for row, values in zip(labelled, scored, strict=True)]
    labels = [r["label"] for r in labelled]
    kinds = [r["kind"] for r in labelled] if all("kind" in r for r in labelled) else None
    metrics = curation_metrics(predictions, labels, config.mode, rules_for(config), kinds, config.ranked_by)
    if len(config.modes) > 1:  # each mode's own score too
        metrics["by_score"] = {
            RANKED_BY[m]: auc_with_interval(SelectionRule(RANKED_BY[m]).values(predictions), labels)
            for m in config.modes
        }
    truncated = [i + 1 for i, row in enumerate(scored) if row["instruction_truncated"]]
    metrics["instructions_truncated"] = len(truncated)
    if truncated:  # scored on their first half-context of tokens (scoring.curation)
        metrics["instructions_truncated_rows"] = truncated[:20]
    return metrics, predictions


def run_curation(config: CurationEvalConfig) -> dict:
    """Score the labelled pairs, write `<output_dir>/curation.json` and the scores as Parquet."""
    model = required_model(config, "model", TASK)
    data = required(config.data, "--data", TASK)
    rows = read_labelled(data, config)
    engine = eval_engine(model, config)
    metrics, predictions = evaluate_rater(engine, rows, config)
    write_parquet(Path(config.output_dir) / f"{TASK}_predictions.parquet", predictions)
    return write_result(config.output_dir, TASK, metrics, config, {"model": engine.name}, data)
