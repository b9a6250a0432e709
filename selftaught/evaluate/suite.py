"""Several models of one run on the same evaluations: judge win rate against a baseline, curation AUC.

A recipe names its models by label ("base", "M0", "M1", ...) and hands over the judge prompts and the
labelled pairs; every answer set and every result is written once under `folder` and read back on a
rerun, so an interrupted evaluation resumes and a finished one costs nothing. Models run on the engine
their config names (`eval_engine`: hf unless the configs say otherwise).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from selftaught.data.shards import read_parquet, write_parquet
from selftaught.evaluate.common import eval_engine
from selftaught.evaluate.config import CurationEvalConfig, JudgeEvalConfig
from selftaught.evaluate.curation import evaluate_rater
from selftaught.evaluate.judge import chats, greedy_texts, judge_answers
from selftaught.evaluate.results import flat_metrics, read_result, write_result
from selftaught.generation.engines import GenerationEngine


class ModelSuite:
    """Judge every model against the `baseline` label (judged by `judge_config.judge`) on `requests`, and
    score raters on `labelled` (instruction, response, label) rows."""

    def __init__(
        self,
        folder: Path,
        models: dict[str, str],
        baseline: str,
        requests: list[str],
        labelled: list[dict],
        configs: tuple[JudgeEvalConfig, CurationEvalConfig],
    ) -> None:
        self.folder, self.models, self.requests, self.labelled = Path(folder), models, requests, labelled
        self.judge_config, self.curation_config = configs
        self.baseline = baseline
        self._answers: dict[str, tuple[list[str], list[int]]] = {}
        self._loaded: tuple[str, GenerationEngine] | None = None

    def engine(self, label: str) -> GenerationEngine:
        """`label`'s engine, kept until another label's is needed: a rater answers and rates with one
        load, and at most one evaluated model is in memory beside the judge. Built from the judge
        config's engine settings (the recipe gives both configs the same ones)."""
        if self._loaded is None or self._loaded[0] != label:
            self._loaded = None  # release the previous model before loading the next
            self._loaded = (label, eval_engine(self.models[label], self.judge_config))
        return self._loaded[1]

    def answers(self, label: str) -> tuple[list[str], list[int]]:
        """(texts, token counts) of a model's greedy answers to the requests, generated once."""
        if label not in self._answers:
            self._answers[label] = self._read_or_generate_answers(label)
        return self._answers[label]

    def _read_or_generate_answers(self, label: str) -> tuple[list[str], list[int]]:
        path = self.folder / f"answers_{label}.parquet"
        if path.exists():
            rows = read_parquet(path)
            return [r["answer"] for r in rows], [r["tokens"] for r in rows]
        engine = self.engine(label)
        texts, tokens = greedy_texts(
            engine, engine.tokenizer, chats(self.requests, self.judge_config.system_prompt), self.judge_config
        )
        write_parquet(
            path,
            [
                {"prompt": r, "answer": t, "tokens": n}
                for r, t, n in zip(self.requests, texts, tokens, strict=True)
            ],
        )
        return texts, tokens

    @cached_property
    def judge(self) -> GenerationEngine:
        return eval_engine(self.judge_config.judge, self.judge_config)

    def judged(self, label: str) -> dict:
        """The judge result of `label` against the baseline."""
        name = f"judge_{label}"
        if (result := read_result(self.folder / f"{name}.json")) is not None:
            return result
        metrics, rows = judge_answers(
            self.judge,
            self.judge.tokenizer,
            self.requests,
            self.answers(label),
            self.answers(self.baseline),
            self.judge_config,
        )
        write_parquet(self.folder / f"{name}.parquet", rows)
        models = {
            "model": self.models[label],
            "baseline": self.models[self.baseline],
            "judge": self.judge_config.judge,
        }
        return write_result(
            self.folder, "judge", metrics, self.judge_config, models, self.judge_config.prompts, name
        )

    def curated(self, label: str) -> dict:
        """The curation result of `label` as a rater of the labelled pairs."""
        name = f"curation_{label}"
        if (result := read_result(self.folder / f"{name}.json")) is not None:
            return result
        engine = self.engine(label)
        metrics, rows = evaluate_rater(engine, engine.tokenizer, self.labelled, self.curation_config)
        write_parquet(self.folder / f"{name}.parquet", rows)
        config = self.curation_config
        return write_result(
            self.folder, "curation", metrics, config, {"model": self.models[label]}, config.data, name
        )

    def lengths(self, label: str) -> dict:
        """Mean length of `label`'s answers to the requests, as a result (in tokens and characters)."""
        texts, tokens = self.answers(label)
        metrics = {"mean_tokens": sum(tokens) / len(tokens), "mean_chars": sum(map(len, texts)) / len(texts)}
        models = {"model": self.models[label]}
        return {"task": "answers", "dataset": self.judge_config.prompts, "models": models, "metrics": metrics}

    def run(self, raters: list[str]) -> dict[str, list[dict]]:
        """Results per label: answer lengths and judge (with requests; no judge for the baseline itself),
        curation (the raters, with labelled pairs)."""
        results: dict[str, list[dict]] = {label: [] for label in self.models}
        for label in self.models:  # label by label: each model is loaded once
            if self.requests:
                results[label].append(self.lengths(label))
                if label != self.baseline:
                    results[label].append(self.judged(label))
            if self.labelled and label in raters:
                results[label].append(self.curated(label))
        return results


# What a run's eval_results.json keeps of each result (one report panel each); the rest stays in the
# per-evaluation JSON files and on the model cards.
HEADLINE = {
    "answers": ("mean_tokens", "mean_chars"),
    "judge": ("win_rate", "wins", "ties", "losses", "mean_p_model_better"),
    "curation": ("auc", "argmax>=4.precision", "argmax>=4.recall"),
}


def summary_numbers(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """`eval_results.json`: {label: {"judge.win_rate": .., "curation.auc": .., "answers.mean_tokens": ..}}."""
    return {
        label: {
            f"{r['task']}.{name}": value
            for r in per_label
            for name, value in flat_metrics(r).items()
            if name in HEADLINE.get(r["task"], ())
        }
        for label, per_label in results.items()
    }
