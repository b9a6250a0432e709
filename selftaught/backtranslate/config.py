"""Every knob of `selftaught backtranslate`, one field each; the CLI flags and YAML keys are these names.

All stages read and write one run folder, so every stage subcommand takes the same config and uses
the fields it needs. Training knobs live in `SFTSettings` (shared with every SFT stage) and are
parsed alongside this class; its `seed` also seeds the seed-set sample and Myx's sampling.
Where augment and curate generate and score (`--engine hf|vllm|openai`, `--base_url` ...) comes from
`EngineSettings`, whose fields this class inherits, so they are flags of every stage too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selftaught.generation.engines import EngineSettings


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
        default="probs",
        metadata={
            "help": "probs: read P('1'..'5') at the score position in one forward pass; generate: "
            "brief reasoning first, then the constrained 'Score: d' (the paper's way)."
        },
    )
    max_reasoning_tokens: int = field(
        default=64, metadata={"help": "Reasoning length in curation_mode=generate."}
    )

    # --- select ----------------------------------------------------------------------------------
    select_by: str = field(
        default="argmax", metadata={"help": "Which score the threshold applies to: argmax or expectation."}
    )
    min_score: float = field(
        default=4.0,
        metadata={"help": "Keep pairs scoring at least this (paper: 5 for the final model, 4 gave 4x more)."},
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
    eval_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest greedy answer each model writes for the judge."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            "output_format": ("parquet", "jsonl"),
            "curation_mode": ("probs", "generate"),
            "select_by": ("argmax", "expectation"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 1 <= self.min_score <= 5:
            raise ValueError(f"min_score must lie in [1, 5], got {self.min_score}")
        if self.ray_actors < 1:
            raise ValueError(f"ray_actors must be >= 1, got {self.ray_actors}")
        if self.iterations < 1 or self.iteration < 1:
            raise ValueError("iterations and iteration start at 1")
        if not 0 < self.min_chars < self.max_chars:
            raise ValueError("need 0 < min_chars < max_chars")
