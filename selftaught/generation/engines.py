"""One generation interface, three engines: transformers (`hf`), vLLM's offline engine (`vllm`) and any
OpenAI-compatible server (`openai`: vLLM serve, llama.cpp's server, TGI, SGLang).

Every engine speaks token ids, so the recipes build prompts once with the model's own tokenizer and
never care where the model runs:

- `generate(prompts, params, desc)`: completion ids per prompt, in the caller's order, through EOS
  or cut before a stop string;
- `next_token_probs(prompts, candidate_ids)`: [N, k] softmax over the candidates at the next position
  (curation ratings, judge verdicts);
- `completion_logprobs(prompts, completions)`: log P(token | prompt, earlier tokens) for every token of a
  given completion after its prompt (likelihood scores: PMI, IFD, backward, held-out NLL);
- `completion_top_logprobs(prompts, completions, k)`: at the same positions, the K most likely tokens
  and their log-probs, with each completion token's own (a distillation teacher that is not in
  training memory: a server's or a cache's answer).

`name` is what provenance records: the model folder for `hf`, "vllm:<folder>", "openai:<url>/<model>".
The protocol, the settings and what the engines share live in `base`; this module holds the hf engine
and `make_engine`, which picks one.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selftaught.generation.base import (
    TOP_LOGPROBS,
    EngineSettings,
    GenerationEngine,
    SamplingParams,
    TopLogprobs,
)
from selftaught.generation.hf import generate_all
from selftaught.generation.next_token import completion_logprobs, completion_top_logprobs, next_token_probs
from selftaught.models.loading import load_for_inference, load_tokenizer


class HFEngine:
    """transformers in this process: `generate_all` and the scoring passes of `next_token`, batched by
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

    def completion_top_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], k: int, desc: str = "scoring"
    ) -> list[TopLogprobs]:
        pad_id = self.tokenizer.pad_token_id
        return completion_top_logprobs(self.model, prompts, completions, k, pad_id, self.batch_size, desc)


def as_engine(
    model_or_engine: GenerationEngine | PreTrainedModel, tokenizer, batch_size: int = 8
) -> GenerationEngine:
    """An engine as it is, or a loaded transformers model wrapped in an `HFEngine`."""
    if isinstance(model_or_engine, PreTrainedModel):
        return HFEngine(model_or_engine, tokenizer, batch_size, model_or_engine.name_or_path)
    return model_or_engine


def make_engine(
    settings: EngineSettings,
    model_path: str,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    name: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_logprobs: int = TOP_LOGPROBS,
) -> GenerationEngine:
    """The engine `settings.engine` names for the model at `model_path` (which gives the tokenizer, unless
    the caller loaded it already); `dtype` is the weights dtype of hf (default: bfloat16 on an accelerator,
    float32 on a CPU; vLLM's is `settings.vllm_dtype`, a server's its own); `name` is how outputs name a
    local model (default: `model_path`); `max_logprobs`: the largest K of `completion_top_logprobs` a vllm
    engine takes (vLLM fixes it when the engine is built; a server's is its --max-logprobs)."""
    tokenizer = tokenizer or load_tokenizer(model_path, trust_remote_code)
    if settings.engine == "openai":
        from selftaught.generation.openai_engine import OpenAIEngine

        return OpenAIEngine(settings, tokenizer)
    if settings.engine == "vllm":
        from selftaught.generation.vllm_engine import VLLMEngine

        return VLLMEngine(settings, model_path, tokenizer, trust_remote_code, name, max_logprobs)
    model = load_for_inference(model_path, dtype, trust_remote_code)
    return HFEngine(model, tokenizer, batch_size, name or model_path)
