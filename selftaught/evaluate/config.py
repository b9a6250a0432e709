"""The knobs of `selftaught eval <task>`, one dataclass per task; CLI flags and YAML keys are these names.

math, judge and curation generate and score through a generation engine, so their configs inherit
`EngineSettings` (`--engine hf|vllm|openai`, `--base_url` ...) as the backtranslate stages do; distance
compares both models' full logits, which only hf gives, so it has no engine flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from selftaught.arguments import ArgumentError, check_at_least, check_fraction, check_output_folder
from selftaught.generation.base import EngineSettings
from selftaught.scoring.curation import SCORES, SelectionRule, modes_and_ranking


@dataclass
class EvalConfig:
    """Settings every evaluation shares."""

    output_dir: str = field(
        default="runs/eval", metadata={"help": "Folder for <task>.json and the per-row Parquet file."}
    )
    split: str = field(
        default="test", metadata={"help": "Split of the data (a single file is its own split)."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N rows (default: every row)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation / forward batch."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype (hf): float32, bfloat16, float16, auto. Default: bfloat16 on an "
            "accelerator (a 7B model's float32 copy alone takes 28 GB), float32 on a CPU."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ArgumentError(
                f"--limit {self.limit} would evaluate no row: give at least 1, or leave --limit out to "
                "evaluate every row"
            )
        check_at_least(self, {"batch_size": 1})
        check_output_folder(self.output_dir, "--output_dir")


@dataclass
class EngineEvalConfig(EngineSettings, EvalConfig):
    """An evaluation run on any engine. A model path is the model itself for hf and vllm; for openai it
    gives only the tokenizer (the server's model answers). `batch_size` and `dtype` apply to hf."""

    def __post_init__(self) -> None:
        EngineSettings.__post_init__(self)
        EvalConfig.__post_init__(self)


# Columns that hold a math problem's own id, tried in order (MATH-500: unique_id).
ID_COLUMNS = ("unique_id", "id", "problem_id", "question_id", "idx")


@dataclass
class MathEvalConfig(EngineEvalConfig):
    model: str | None = field(default=None, metadata={"help": "Model to evaluate: Hub id, folder or .gguf."})
    data: str | None = field(
        default=None,
        metadata={"help": "MATH-500-format rows (`problem`, `answer`, optional `subject`, `level`)."},
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer generated per prompt."})
    samples: int = field(
        default=0, metadata={"help": "Sampled answers per problem for pass@k (0: greedy accuracy only)."}
    )
    pass_k: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated k for pass@k (the unbiased estimator), each at most --samples. "
            "Default: 1 and --samples."
        },
    )
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature for the pass@k samples."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus threshold for the pass@k samples."})
    seed: int = field(
        default=0, metadata={"help": "Random seed of the samples: sample i is drawn with seed + i."}
    )
    id_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding each problem's id, copied into the predictions and the list of "
            f"unverifiable answers. Default: the first of {', '.join(ID_COLUMNS)} present, else the row "
            "number."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Prompts longer than this many tokens keep their last tokens (a notice counts them). "
            "Default: none is cut, and a prompt longer than the model's context is refused, naming its row."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, {"max_new_tokens": 1, "samples": 0, "max_prompt_length": 1})
        check_fraction(self, "top_p")
        if self.samples and self.temperature <= 0:
            raise ArgumentError(
                f"--samples {self.samples} at --temperature {self.temperature} would draw the greedy answer "
                "every time: give a temperature above 0, or --samples 0 for greedy accuracy alone"
            )
        beyond = [k for k in self.pass_ks if k > self.samples]
        if self.pass_k is not None and beyond:
            raise ArgumentError(
                f"--pass_k {self.pass_k}: pass@k needs k <= --samples, and --samples is {self.samples}: "
                f"raise --samples to {max(beyond)}, or drop {beyond} from --pass_k"
            )

    @property
    def pass_ks(self) -> list[int]:
        """The k of pass@k: `pass_k`, else 1 and `samples` (none without samples)."""
        if self.pass_k is None:
            return sorted({1, self.samples}) if self.samples else []
        ks = [k.strip() for k in self.pass_k.split(",") if k.strip()]
        if not ks or not all(k.isdigit() and int(k) >= 1 for k in ks):
            raise ArgumentError(f"--pass_k takes positive integers joined by commas, got {self.pass_k!r}")
        return sorted({int(k) for k in ks})


@dataclass
class JudgeEvalConfig(EngineEvalConfig):
    """The one engine setting serves A, B and J alike: with engine=openai all three are the model that
    --base_url serves (--served_model), each local path giving only its tokenizer and chat template."""

    model: str | None = field(default=None, metadata={"help": "Model A, whose win rate is reported."})
    baseline: str | None = field(default=None, metadata={"help": "Model B, the one A is compared with."})
    judge: str | None = field(
        default=None,
        metadata={
            "help": "Judge model J (reads both answers). One --engine runs A, B and J: with engine=openai "
            "all three are the served model, each path giving only its tokenizer."
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={"help": "Prompts: rows with `prompt`, `instruction`, `problem` or chat `messages`."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt both A and B answer under (none by default)."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Longest greedy answer from A and B."})
    max_answer_chars: int = field(
        default=4000, metadata={"help": "Each answer is cut to this many characters in the judge's prompt."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, {"max_new_tokens": 1, "max_answer_chars": 1})


@dataclass
class DistanceEvalConfig(EvalConfig):
    refused_flags: ClassVar[dict[str, str]] = dict.fromkeys(
        (f.name for f in fields(EngineSettings)),
        "eval distance has no engine flags: it compares both models' full logits, which only transformers "
        "in this process returns, so it always runs on hf.",
    )

    student: str | None = field(
        default=None,
        metadata={
            "help": "Student model: Hub id, folder or .gguf. Both models run on hf in this process: "
            "the distance needs their full logits, which the vllm and openai engines do not return."
        },
    )
    teacher: str | None = field(default=None, metadata={"help": "Teacher model (same tokenizer)."})
    data: str | None = field(
        default=None,
        metadata={"help": "Held-out prompts (any shape selftaught reads: problem, prompt, chat)."},
    )
    max_prompt_length: int = field(default=512, metadata={"help": "Prompts are cut to their last N tokens."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest greedy answer of either model."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, {"max_prompt_length": 1, "max_new_tokens": 1})


@dataclass
class CurationEvalConfig(EngineEvalConfig):
    model: str | None = field(
        default=None,
        metadata={
            "help": "Scoring model: Hub id, folder or .gguf (for mode=backward, a backward model). It scores "
            "every mode --mode names."
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "Labelled pairs: {instruction, response}, {instruction, output} or {prompt, completion}, "
            "and `label` (1 keep, 0 drop); an optional `kind` column gets an AUC per kind of negative."
        },
    )
    mode: str = field(
        default="rubric",
        metadata={
            "help": "What to score and rank the pairs by: curation modes as `backtranslate curate` takes "
            "them (rubric (old name: probs), generate, pmi, ifd, backward; several joined by commas, "
            "ranked by the first one's score), or a score as `backtranslate select` takes it (e.g. "
            "pmi_guarded, the demo's; pmi_no_echo; argmax; pmi+expectation): the modes it needs are scored "
            "and the pairs ranked by it."
        },
    )
    threshold: float = field(
        default=4.0,
        metadata={"help": "Rubric modes: also report expectation >= this (argmax >= 4 always)."},
    )
    min_score: float | None = field(
        default=None, metadata={"help": "Also report the rule: the mode's score >= this."}
    )
    select_top: float | None = field(
        default=None,
        metadata={"help": "Also report the rule: the best this fraction of pairs by the mode's score."},
    )
    max_reasoning_tokens: int = field(default=64, metadata={"help": "Reasoning length in mode=generate."})
    max_scored_tokens: int = field(
        default=256, metadata={"help": "Response tokens the likelihood modes read (the first ones)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        modes, score = modes_and_ranking(self.mode)
        if any(part.strip() not in SCORES for part in self.mode.split("+")):  # modes: "probs" is "rubric"
            self.mode = ",".join(modes)
        # the AUC needs no threshold; one is needed only for a rule on the ranked score
        wants_rule = self.min_score is not None or self.select_top is not None
        SelectionRule(score, self.min_score, self.select_top).check(modes, needs_threshold=wants_rule)

    @property
    def modes(self) -> list[str]:
        """The curation modes to score."""
        return modes_and_ranking(self.mode)[0]

    @property
    def ranked_by(self) -> str:
        """The score the pairs are ranked by (its AUC is the one reported first)."""
        return modes_and_ranking(self.mode)[1]
