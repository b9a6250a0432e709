"""Several models of one run on the same evaluations, each compared with the others with intervals.

A recipe names its models by label ("base", "M0", "M1", ...) and hands over held-out data: judge prompts,
gold (instruction, response) pairs and labelled pairs. Per model:
- `answers`: its greedy answers to the prompts, with the degeneration measures (degenerate share,
  distinct-2, length, EOS share; `scoring.degeneration`, shared with distillation's evaluation);
- `heldout_nll`: the negative log-likelihood per token of the gold answers, given their prompts;
- `new_domain_nll`: the same on a second gold set, when given: another domain's held-out data (in
  backtranslation, corpus documents no model saw, each asked about by a user's question);
- `relevance`: the PMI of its greedy answer given the prompt, scored by the judge model (the base);
- `judge`: the judge's verdicts against the baseline's answers, both orders (win rate and tie rate);
- `curation (<mode>)`: the curation AUC of the raters.
Each number comes with a 95% bootstrap interval over the evaluated items, and `comparisons` gives, for
each model against the one before it and against the baseline, the paired difference with its
interval: "no difference" reads as an interval around 0.

Everything is written once under `folder` and read back on a rerun, so an interrupted evaluation
resumes and a finished one costs nothing. Models run on the engine their config names.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from selftaught.data.formats import tokenize_completion, tokenize_prompt
from selftaught.data.shards import read_parquet, write_json, write_parquet
from selftaught.evaluate.common import eval_engine
from selftaught.evaluate.config import CurationEvalConfig, JudgeEvalConfig
from selftaught.evaluate.curation import evaluate_rater
from selftaught.evaluate.intervals import mean_interval, paired_comparison, ratio, ratio_interval
from selftaught.evaluate.judge import OUTCOME_SCORE, chats, greedy_answers, judge_answers
from selftaught.evaluate.results import flat_metrics, read_result, write_result
from selftaught.generation.base import GenerationEngine
from selftaught.models.naming import model_label
from selftaught.scoring.degeneration import degeneration_metrics, is_degenerate
from selftaught.scoring.likelihood import pmi_scores

# The gold sets whose answers' NLL is scored: task -> (file name prefix of the per-pair rows, dataset).
GOLD_SETS = {
    "heldout_nll": ("nll", "held-out gold answers"),
    "new_domain_nll": ("nll_new_domain", "held-out corpus documents"),
}


class ModelSuite:
    """Evaluate `models` ({label: path}) on `requests` (judge prompts), `heldout` (and `new_domain`) gold
    pairs and `labelled` pairs; the judge (`judge_config.judge`) compares each with `baseline` and scores
    relevance."""

    def __init__(
        self,
        folder: Path,
        models: dict[str, str],
        baseline: str,
        requests: list[str],
        heldout: list[dict],
        labelled: list[dict],
        configs: tuple[JudgeEvalConfig, list[CurationEvalConfig]],
        run_dir: Path | None = None,
        new_domain: list[dict] | None = None,
    ) -> None:
        self.folder, self.models, self.baseline = Path(folder), models, baseline
        self.requests, self.labelled = requests, labelled
        self.gold = {"heldout_nll": heldout, "new_domain_nll": new_domain or []}
        self.judge_config, self.curation_configs = configs
        self.names = {label: model_label(path, run_dir) for label, path in models.items()}
        self.judge_name = model_label(self.judge_config.judge, run_dir)
        self._loaded: tuple[str, GenerationEngine] | None = None

    # --- engines: one evaluated model in memory at a time, beside the judge ------------------------

    def engine(self, label: str) -> GenerationEngine:
        """`label`'s engine, kept until another label's is needed (the judge's own when it is the same)."""
        if self.models[label] == self.judge_config.judge:
            return self.judge
        if self._loaded is None or self._loaded[0] != label:
            self._loaded = None  # release the previous model before loading the next
            self._loaded = (label, eval_engine(self.models[label], self.judge_config))
        return self._loaded[1]

    @cached_property
    def judge(self) -> GenerationEngine:
        return eval_engine(self.judge_config.judge, self.judge_config)

    # --- per-item data, written once ----------------------------------------------------------------

    def cached(self, name: str, make) -> list[dict]:
        """Rows of `<folder>/<name>.parquet`, made by `make()` the first time."""
        path = self.folder / f"{name}.parquet"
        if path.exists():
            return read_parquet(path)
        rows = make()
        write_parquet(path, rows)
        return rows

    def answers(self, label: str) -> list[dict]:
        """A model's greedy answers to the requests: {prompt, answer, tokens, ended_with_eos}."""

        def make() -> list[dict]:
            engine = self.engine(label)
            conversations = chats(self.requests, self.judge_config.system_prompt)
            answers = greedy_answers(engine, engine.tokenizer, conversations, self.judge_config)
            return [{"prompt": r} | a for r, a in zip(self.requests, answers, strict=True)]

        return self.cached(f"answers_{label}", make)

    def nll(self, label: str, task: str = "heldout_nll") -> list[dict]:
        """Per gold pair of `task`'s set: the summed NLL of its answer tokens (through EOS), their count."""
        gold = self.gold[task]

        def make() -> list[dict]:
            engine = self.engine(label)
            tokenizer = engine.tokenizer
            conversations = chats([p["instruction"] for p in gold], self.judge_config.system_prompt)
            prompts = [tokenize_prompt(tokenizer, c) for c in conversations]
            answers = [
                tokenize_completion(tokenizer, c, p["response"], ids)
                for c, p, ids in zip(conversations, gold, prompts, strict=True)
            ]
            logprobs = engine.completion_logprobs(prompts, answers, GOLD_SETS[task][1])
            return [{"nll": -sum(lp), "tokens": len(lp)} for lp in logprobs]

        return self.cached(f"{GOLD_SETS[task][0]}_{label}", make)

    def relevance(self, label: str) -> list[dict]:
        """Per request: the PMI of the model's answer given it, under the judge model."""
        answers = self.answers(label)

        def make() -> list[dict]:
            pairs = [(a["prompt"], a["answer"]) for a in answers]
            return pmi_scores(self.judge, self.judge.tokenizer, pairs)

        return self.cached(f"relevance_{label}", make)

    # --- results ------------------------------------------------------------------------------------

    def result(self, name: str, task: str, make, dataset: str, config, models: dict) -> dict:
        """`<folder>/<name>.json`, computed by `make()` -> metrics the first time."""
        if (found := read_result(self.folder / f"{name}.json")) is not None:
            return found
        return write_result(self.folder, task, make(), config, models, dataset, name)

    def answer_result(self, label: str) -> dict:
        def make() -> dict:
            rows = self.answers(label)
            texts = [r["answer"] for r in rows]
            metrics = degeneration_metrics(
                texts, [r["tokens"] for r in rows], [r["ended_with_eos"] for r in rows]
            )
            metrics["degenerate_share_ci95"] = mean_interval([float(is_degenerate(t)) for t in texts])
            return metrics | {"mean_chars": sum(map(len, texts)) / len(texts), "answers": len(texts)}

        models = {"model": self.names[label]}
        return self.result(
            f"answers_{label}", "answers", make, self.judge_config.prompts, self.judge_config, models
        )

    def nll_result(self, label: str, task: str = "heldout_nll") -> dict:
        def make() -> dict:
            rows = self.nll(label, task)
            nll, tokens = [r["nll"] for r in rows], [r["tokens"] for r in rows]
            return {
                "per_token": sum(nll) / max(sum(tokens), 1),
                "per_token_ci95": ratio_interval(nll, tokens),
                "pairs": len(rows),
                "tokens": sum(tokens),
            }

        models = {"model": self.names[label]}
        return self.result(f"{task}_{label}", task, make, GOLD_SETS[task][1], self.judge_config, models)

    def relevance_result(self, label: str) -> dict:
        def make() -> dict:
            # an empty answer has no token to score: it counts as 0, no information about its prompt
            values = [r["pmi"] or 0.0 for r in self.relevance(label)]
            return {
                "pmi": sum(values) / len(values),
                "pmi_ci95": mean_interval(values),
                "answers": len(values),
            }

        models = {"model": self.names[label], "scorer": self.judge_name}
        return self.result(
            f"relevance_{label}", "relevance", make, self.judge_config.prompts, self.judge_config, models
        )

    def judged(self, label: str) -> dict:
        """The judge result of `label` against the baseline."""

        def make() -> dict:
            pair = [self.answers(x) for x in (label, self.baseline)]
            texts = [([r["answer"] for r in rows], [r["tokens"] for r in rows]) for rows in pair]
            metrics, rows = judge_answers(
                self.judge, self.judge.tokenizer, self.requests, *texts, self.judge_config
            )
            write_parquet(self.folder / f"judge_{label}.parquet", rows)
            return metrics

        models = {"model": self.names[label], "baseline": self.names[self.baseline], "judge": self.judge_name}
        return self.result(
            f"judge_{label}", "judge", make, self.judge_config.prompts, self.judge_config, models
        )

    def curated(self, label: str, config: CurationEvalConfig) -> dict:
        """The curation result of `label` as a rater of the labelled pairs, in `config.mode`."""

        def make() -> dict:
            engine = self.engine(label)
            metrics, rows = evaluate_rater(engine, self.labelled, config)
            write_parquet(self.folder / f"curation_{config.mode}_{label}.parquet", rows)
            return metrics

        name, task = f"curation_{config.mode}_{label}", f"curation ({config.mode})"
        return self.result(name, task, make, config.data, config, {"model": self.names[label]})

    def run(self, raters: list[str]) -> dict[str, list[dict]]:
        """Results per label; a model's own data first (one load), then what the judge scores."""
        results: dict[str, list[dict]] = {label: [] for label in self.models}
        for label in self.models:
            if self.requests:
                self.answers(label)
            results[label] += [self.nll_result(label, task) for task, gold in self.gold.items() if gold]
            if self.labelled and label in raters:
                results[label] += [self.curated(label, c) for c in self.curation_configs]
        for label in self.models:
            if self.requests:
                results[label] += [self.answer_result(label), self.relevance_result(label)]
                if label != self.baseline:
                    results[label].append(self.judged(label))
        return results

    # --- comparisons ----------------------------------------------------------------------------------

    def item_statistics(self, label: str) -> dict:
        """Per metric: (value of a resample of the items, number of items), for paired comparisons."""
        stats = {}
        for task in (task for task, gold in self.gold.items() if gold):
            rows = self.nll(label, task)
            nll, tokens = [r["nll"] for r in rows], [r["tokens"] for r in rows]
            stats[f"{task}.per_token"] = (lambda idx, a=nll, b=tokens: ratio(a, b, idx), len(rows))
        if self.requests:
            pmi = [r["pmi"] or 0.0 for r in self.relevance(label)]
            stats["relevance.pmi"] = (lambda idx, v=pmi: sum(v[i] for i in idx) / len(idx), len(pmi))
            flags = [float(is_degenerate(r["answer"])) for r in self.answers(label)]
            stats["answers.degenerate_share"] = (
                lambda idx, v=flags: sum(v[i] for i in idx) / len(idx),
                len(flags),
            )
            if label != self.baseline:
                judged = read_parquet(self.folder / f"judge_{label}.parquet")
                won = [OUTCOME_SCORE[r["outcome"]] for r in judged]
                stats["judge.win_rate"] = (lambda idx, v=won: sum(v[i] for i in idx) / len(idx), len(won))
        return stats

    def comparisons(self, order: list[str]) -> list[dict]:
        """Each model against the one before it in `order` and against the baseline: every shared metric's
        difference (model - other) with its paired 95% interval. Written to comparisons.json."""
        stats = {label: self.item_statistics(label) for label in order}
        found = []
        for position, label in enumerate(order):
            others = {self.baseline, order[position - 1] if position else self.baseline} - {label}
            for other in sorted(others, key=order.index):
                for metric, (mine, n) in stats[label].items():
                    if metric not in stats[other]:
                        continue
                    theirs = stats[other][metric][0]
                    found.append(paired_comparison(label, other, metric, mine, theirs, n))
        written = self.folder / "comparisons.json"
        fresh = json.loads(json.dumps({"comparisons": found}))  # as JSON holds it: tuples as lists
        if not written.is_file() or json.loads(written.read_text()) != fresh:
            write_json(written, {"comparisons": found})  # a rerun that computes the same rewrites nothing
        return found


# What a run's eval_results.json keeps of each result (one report panel each); the rest stays in the
# per-evaluation JSON files and on the model cards.
HEADLINE = {
    "answers": ("degenerate_share", "distinct_2", "mean_tokens", "eos_share"),
    "heldout_nll": ("per_token",),
    "new_domain_nll": ("per_token",),
    "relevance": ("pmi",),
    "judge": ("win_rate", "tie_rate"),
    "curation": ("auc",),
}


def summary_numbers(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{label: {"judge.win_rate": .., "heldout_nll.per_token": .., "curation (pmi).auc": ..}}."""
    return {
        label: {
            f"{r['task']}.{name}": value
            for r in per_label
            for name, value in flat_metrics(r).items()
            if name in HEADLINE.get(r["task"].split(" ")[0], ())
        }
        for label, per_label in results.items()
    }


def summary_intervals(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """{label: {metric: [low, high]}} for the headline numbers that carry an interval (`<name>_ci95`)."""
    intervals: dict[str, dict[str, list[float]]] = {}
    for label, per_label in results.items():
        for r in per_label:
            for name in HEADLINE.get(r["task"].split(" ")[0], ()):
                interval = r["metrics"].get(f"{name}_ci95") or (
                    r["metrics"].get("auc_ci95") if name == "auc" else None
                )
                if interval:
                    intervals.setdefault(label, {})[f"{r['task']}.{name}"] = interval
    return intervals


def read_comparisons(folder: Path) -> list[dict]:
    path = Path(folder) / "comparisons.json"
    return json.loads(path.read_text())["comparisons"] if path.is_file() else []
