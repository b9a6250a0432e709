"""Every knob of `selftaught backtranslate`, one field each; the CLI flags and YAML keys are these names.

All stages read and write one run folder, so every stage subcommand takes the same config and uses
the fields it needs. Training knobs live in `SFTSettings` (shared with every SFT stage) and are
parsed alongside this class; its `seed` also seeds the seed-set sample and Myx's sampling.
Where augment and curate generate and score (`--engine hf|vllm|openai`, `--base_url` ...) comes from
`EngineSettings`, whose fields this class inherits, so they are flags of every stage too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selftaught.arguments import ArgumentError, check_at_least, check_fraction, check_output_folder
from selftaught.generation.base import EngineSettings
from selftaught.models.check import check_model_argument
from selftaught.scoring.curation import SELECTED_BY, SelectionRule, parse_modes


@dataclass
class BacktranslateConfig(EngineSettings):
    # --- where -----------------------------------------------------------------------------------
    run_dir: str = field(
        default="runs/backtranslate",
        metadata={"help": "Run folder: every stage reads the previous stage's output from here."},
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Model every stage fine-tunes from (M0, Myx, M1, M2): Hub id, folder or .gguf. "
            "Default: the embedded SmolLM2-135M-Instruct."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})
    output_format: str = field(
        default="parquet", metadata={"help": "Format of the datasets a stage exports: parquet or jsonl."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Redo this stage from scratch, and discard the output of every stage that depends on "
            "it (they run again with `run` or their own command). With `run`: every stage."
        },
    )

    # --- seed ------------------------------------------------------------------------------------
    seed_data: str | None = field(
        default=None,
        metadata={
            "help": "oasst1-format rows (file, folder or Hub name) or a file of {instruction, "
            "response}. Default: the shipped seed set in oasst1's schema."
        },
    )
    seed_split: str = field(default="train", metadata={"help": "Split of seed_data."})
    seed_size: int = field(
        default=3200, metadata={"help": "Seed pairs kept (a seeded sample), as in the paper."}
    )

    # --- segment ---------------------------------------------------------------------------------
    corpus: str | None = field(
        default=None,
        metadata={
            "help": "Unlabelled corpus: a folder or file of text/markdown, JSONL/Parquet with a text "
            "column, or a Hub dataset (streamed). Default: installed packages' descriptions."
        },
    )
    corpus_split: str = field(default="train", metadata={"help": "Split of a Hub corpus."})
    corpus_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub corpus."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in tabular corpora."})
    min_chars: int = field(default=600, metadata={"help": "Shortest segment kept (characters)."})
    max_chars: int = field(default=3000, metadata={"help": "Longest segment (characters)."})
    max_segments: int | None = field(
        default=None, metadata={"help": "Keep at most this many segments (the paper sampled 502k)."}
    )

    # --- augment ---------------------------------------------------------------------------------
    temperature: float = field(default=0.7, metadata={"help": "Myx's sampling temperature (paper: 0.7)."})
    top_p: float = field(default=0.9, metadata={"help": "Myx's nucleus sampling threshold (paper: 0.9)."})
    max_instruction_tokens: int = field(
        default=96, metadata={"help": "Longest instruction Myx writes for a segment."}
    )
    generation_batch_size: int = field(
        default=8, metadata={"help": "Prompts per generation / scoring batch."}
    )
    shard_size: int = field(
        default=64, metadata={"help": "Rows per committed shard in augment and curate (the resume unit)."}
    )

    # --- curate ----------------------------------------------------------------------------------
    curation_mode: str = field(
        default="rubric",
        metadata={
            "help": "How M(k-1) scores each pair; several may be joined by commas (e.g. pmi,backward), each "
            "adding its own fields. rubric (old name: probs): the paper's 5-point rubric, P('1'..'5') read "
            "in one forward pass; generate: the rater's brief reasoning first, then the digit (the paper's "
            "way); pmi: mean log P(response | instruction) - log P(response) per token; ifd: perplexity of "
            "the response with / without the instruction (Superfiltering); backward: Myx's mean log-prob "
            "of the instruction given the response. A small rater (the 135M default): pmi, whose rubric "
            "reading is at chance; a capable one: rubric, or both (see the README)."
        },
    )
    max_reasoning_tokens: int = field(
        default=64, metadata={"help": "Reasoning length in curation_mode=generate."}
    )
    max_scored_tokens: int = field(
        default=256,
        metadata={
            "help": "Response tokens (the first ones) the likelihood modes pmi, ifd and backward read."
        },
    )

    # --- select ----------------------------------------------------------------------------------
    select_by: str = field(
        default="auto",
        metadata={
            "help": "The score the rule ranks by: argmax or expectation (rubric / generate), pmi, "
            "pmi_no_echo (PMI, a response that mostly repeats its instruction last), pmi_guarded "
            "(pmi_no_echo, and a pair that speaks to its rater about its rating last), ifd (Superfiltering's "
            "order: IFD < 1 first, highest first), backward, or a combination a+b (the mean of their "
            "percentile ranks). auto: the first curation mode's (argmax for the rubric, pmi_guarded for pmi)."
        },
    )
    min_score: float | None = field(
        default=None,
        metadata={
            "help": "Keep pairs whose score is at least this. Default, when --select_top is not given "
            "either: 4 on the rubric (the paper: 5 for the final model, 4 gave 4x more), 0 for pmi, "
            "IFD < 1 for ifd."
        },
    )
    select_top: float | None = field(
        default=None, metadata={"help": "Keep this fraction of the pairs, best first (e.g. 0.1), instead."}
    )

    # --- scale-out (Ray) -------------------------------------------------------------------------
    ray: bool = field(
        default=False,
        metadata={
            "help": "Run segment, augment and curate as Ray Data pipelines (pip install selftaught[ray]): "
            "shards mapped over an actor pool, one model per actor, committed as in a single-process run."
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster to join (e.g. ray://head:10001 or auto); default: a local instance."},
    )
    ray_actors: int = field(default=2, metadata={"help": "Actors in the pool, each holding one model."})
    ray_gpus_per_actor: float = field(
        default=0.0, metadata={"help": "GPUs reserved per actor (1 on a GPU cluster: one model per GPU)."}
    )

    # --- iterate ---------------------------------------------------------------------------------
    iterations: int = field(
        default=2, metadata={"help": "Curate-and-train rounds: 2 gives M0 -> M1 -> M2, as in the paper."}
    )
    iteration: int = field(
        default=1, metadata={"help": "For the curate / select / train subcommands: which round (k -> M_k)."}
    )

    # --- evaluate (end of `run`; results in <run_dir>/evaluation and <run_dir>/eval_results.json) ---
    eval_prompts: str | None = field(
        default=None,
        metadata={
            "help": "Prompts for the judge (rows with prompt, instruction, problem or messages). Default: "
            "first turns of the seed trees that the seed sample left out (never trained on)."
        },
    )
    eval_prompt_count: int = field(
        default=16, metadata={"help": "Prompts judged: each model vs the base, judged by the base (0: none)."}
    )
    eval_curation_data: str | None = field(
        default=None,
        metadata={
            "help": "Labelled pairs (instruction, response, label 1/0) to score each rater on. Default: "
            "left-out seed pairs (label 1) and the same instructions given another pair's answer (label 0)."
        },
    )
    eval_curation_pairs: int = field(
        default=64, metadata={"help": "Labelled pairs each rater (M0, M1, ...) scores (0: none)."}
    )
    eval_heldout_pairs: int = field(
        default=256,
        metadata={"help": "Held-out gold pairs whose answers' NLL each model is scored on (0: none)."},
    )
    eval_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest greedy answer each model writes for the judge."}
    )
    eval_new_domain_documents: int = field(
        default=24,
        metadata={
            "help": "Corpus documents held out of `segment` (chosen by --seed) and asked about in the "
            "evaluation: each model's NLL of their text, the new domain the run should teach (0: none)."
        },
    )
    eval_new_domain_tokens: int = field(
        default=128,
        metadata={"help": "Tokens of each held-out document's text scored as its gold answer."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {"output_format": ("parquet", "jsonl")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self.curation_mode = ",".join(parse_modes(self.curation_mode))  # "probs" is read as "rubric"
        self.selection_rule().check(self.curation_modes)
        if self.iterations < 1 or self.iteration < 1:
            raise ArgumentError("--iterations and --iteration start at 1")
        if not 0 < self.min_chars < self.max_chars:
            raise ArgumentError("need 0 < --min_chars < --max_chars")
        check_at_least(
            self,
            {
                "ray_actors": 1,
                "seed_size": 1,
                "max_segments": 1,
                "temperature": 0,
                "max_instruction_tokens": 1,
                "generation_batch_size": 1,
                "shard_size": 1,
                "max_reasoning_tokens": 1,
                "max_scored_tokens": 1,
                "eval_prompt_count": 0,
                "eval_curation_pairs": 0,
                "eval_heldout_pairs": 0,
                "eval_max_new_tokens": 1,
                "eval_new_domain_documents": 0,
                "eval_new_domain_tokens": 1,
            },
        )
        check_fraction(self, "top_p")
        check_output_folder(self.run_dir, "--run_dir")

    def base(self) -> str:
        """The base model: `--base_model`, checked before anything loads (a path that is not a model stops
        the command with what was expected), or the embedded default, built on first use."""
        if self.base_model is None:
            from selftaught.models.embedded import embedded_teacher

            self.base_model = str(embedded_teacher())
        else:
            check_model_argument(self.base_model, "--base_model")
        return self.base_model

    @property
    def curation_modes(self) -> list[str]:
        return self.curation_mode.split(",")

    def selection_rule(self) -> SelectionRule:
        """The `select` stage's rule: `select_by` (auto: the first mode's score) with its threshold."""
        score = SELECTED_BY[self.curation_modes[0]] if self.select_by == "auto" else self.select_by
        return SelectionRule(score, self.min_score, self.select_top)
