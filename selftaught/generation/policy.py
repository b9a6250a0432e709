"""Sampling from a policy that is being trained (on-policy distillation), behind the engine interface.

The student changes at every optimizer step, so an engine that samples from it must see the new
weights before it samples. `sync_weights()` is that contract:
- `hf`: samples from the live model in this process; there is nothing to push.
- `vllm`: TRL's `VLLMGeneration`, colocated on the training GPUs or a `trl vllm-serve` server; the
  trainer calls `sync_weights()` once per optimizer step, before the step's first sample, and TRL
  streams the weights over (gathering ZeRO-3 / FSDP shards and merging LoRA adapters on the way).
An OpenAI-compatible server serves fixed weights, so it cannot sample on-policy. The frozen teacher
(sampling under seq_kd) goes through the same interface, with nothing to push.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from transformers import PreTrainedModel

from selftaught.generation.base import SamplingParams
from selftaught.generation.hf import generate_all

POLICY_ENGINES = ("hf", "vllm")
VLLM_MODES = ("colocate", "server")


class PolicyEngine(Protocol):
    """The sampling half of `GenerationEngine`, plus the weight push a changing policy needs."""

    name: str

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str | None = ...
    ) -> list[list[int]]:
        """Completion ids per prompt (through EOS), in the given order."""

    def sync_weights(self) -> None:
        """Make the next samples come from the policy's current weights."""


class HFPolicyEngine:
    """transformers on the live model: `unwrapped()` enters a context yielding the bare model to sample
    from (under DeepSpeed ZeRO-3 the trainer gathers the shards there)."""

    def __init__(
        self,
        unwrapped: Callable[[], AbstractContextManager[PreTrainedModel]],
        tokenizer,
        batch_size: int,
        name: str = "hf",
    ) -> None:
        self.unwrapped, self.tokenizer, self.batch_size, self.name = unwrapped, tokenizer, batch_size, name

    def sync_weights(self) -> None:
        """Nothing to push: samples come from the live weights."""

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str | None = None
    ) -> list[list[int]]:
        with self.unwrapped() as model:  # in the given order: a whole optimizer step, in one batch
            return generate_all(
                model, self.tokenizer, prompts, params, self.batch_size, desc, by_length=False
            )
