"""The `vllm` engines: vLLM's offline `LLM` on the local GPUs, fed token ids (TokensPrompt).

`VLLMEngine` serves a fixed model (augment, curate, eval). vLLM batches continuously and pages the KV
cache; with prefix caching, the rating rubric every curation prompt begins with is computed once.
`VLLMPolicyEngine` samples a model under training (distillation), through TRL's vLLM backend.
Written against vLLM's and TRL's documented APIs; the test machine has no GPU, so neither is exercised
by the test suite.
"""

from __future__ import annotations

import importlib.util

import torch

from selftaught.generation.engines import TOP_LOGPROBS, EngineSettings, candidate_distribution
from selftaught.generation.hf import SamplingParams, padded_rows


def require_vllm() -> None:
    """Fail before any model is loaded when vLLM is missing, with the command that installs it."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("engine=vllm needs vLLM (GPU machines): pip install selftaught[vllm]")


class VLLMEngine:
    """Generation and next-token scoring with `vllm.LLM`; the model is loaded once, here."""

    def __init__(
        self,
        settings: EngineSettings,
        model_path: str,
        tokenizer,
        trust_remote_code: bool,
        name: str | None = None,
    ) -> None:
        require_vllm()
        import vllm

        self.vllm = vllm
        self.tokenizer = tokenizer
        self.name = f"vllm:{name or model_path}"
        self.llm = vllm.LLM(
            model=model_path,
            dtype=settings.vllm_dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            enable_prefix_caching=settings.enable_prefix_caching,
            trust_remote_code=trust_remote_code,
            max_logprobs=TOP_LOGPROBS,
            generation_config="vllm",  # sample from the model itself, not a checkpoint's default knobs
        )

    def _run(self, prompts: list[list[int]], params) -> list:
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        return [out.outputs[0] for out in self.llm.generate(inputs, params, use_tqdm=True)]

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str = "generating"
    ) -> list[list[int]]:
        sampling = self.vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            seed=params.seed,
            stop=list(params.stop) or None,
        )
        # token_ids run through EOS; at a stop string they run past it, while the text is cut before it
        return [
            self.tokenizer.encode(c.text, add_special_tokens=False)
            if isinstance(c.stop_reason, str)
            else list(c.token_ids)
            for c in self._run(prompts, sampling)
        ]

    def next_token_probs(
        self, prompts: list[list[int]], candidate_ids: list[int], desc: str = "scoring"
    ) -> torch.Tensor:
        """Read from the top log-probs of one generated token; candidates are matched by id."""
        sampling = self.vllm.SamplingParams(max_tokens=1, temperature=0, logprobs=TOP_LOGPROBS)
        tops = [{i: lp.logprob for i, lp in c.logprobs[0].items()} for c in self._run(prompts, sampling)]
        return torch.stack([candidate_distribution(top, candidate_ids) for top in tops])

    def completion_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], desc: str = "scoring"
    ) -> list[list[float]]:
        """vLLM's `prompt_logprobs` over [prompt | completion]: each position's dict always holds the
        prompt token's own log-prob (0 extra candidates asked for), read at the completion's positions."""
        from vllm.inputs import TokensPrompt

        sampling = self.vllm.SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        inputs = [TokensPrompt(prompt_token_ids=p + c) for p, c in zip(prompts, completions, strict=True)]
        outputs = self.llm.generate(inputs, sampling, use_tqdm=True)
        return [
            [out.prompt_logprobs[len(p) + i][token].logprob for i, token in enumerate(c)]
            for out, p, c in zip(outputs, prompts, completions, strict=True)
        ]


class VLLMPolicyEngine:
    """A policy under training sampled through TRL's `VLLMGeneration`: colocated with the trainer (one vLLM
    per process, sharing its GPU) or a `trl vllm-serve` server; `sync_weights` pushes the current weights.

    TRL owns the hard parts (weight streaming under ZeRO-3 / FSDP, LoRA merging, tensor-parallel groups);
    this adapter speaks our engine interface. Its sampling knobs are fixed when it is built, as TRL's are.
    """

    def __init__(
        self,
        model,
        accelerator,
        tokenizer,
        params: SamplingParams,
        *,
        mode: str,
        server_url: str | None,
        gpu_memory_utilization: float,
        tensor_parallel_size: int,
        max_model_length: int,
        max_num_seqs: int,
        enable_sleep_mode: bool,
        trust_remote_code: bool,
    ) -> None:
        require_vllm()
        from trl.generation.vllm_generation import VLLMGeneration

        tokens = len(tokenizer)  # never sample padded embedding rows, as the hf engine never does
        allowed = {"allowed_token_ids": list(range(tokens))} if padded_rows(model, tokens) else {}
        self.params, self.name = params, f"vllm-{mode}:{model.name_or_path}"
        self.backend = VLLMGeneration(
            model=model,
            accelerator=accelerator,
            processing_class=tokenizer,
            mode=mode,
            server_base_url=server_url,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_length=max_model_length,
            max_num_seqs=max_num_seqs,
            enable_sleep_mode=enable_sleep_mode,
            trust_remote_code=trust_remote_code,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,  # the model's own distribution, as GKD assumes (same as the hf engine)
            max_completion_length=params.max_new_tokens,
            logprobs=None,  # the loss uses both models' full logits, not vLLM's log-probs
            generation_kwargs=allowed,
        )

    def sync_weights(self) -> None:
        self.backend.sync_weights()

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str | None = None
    ) -> list[list[int]]:
        if params != self.params:
            raise ValueError(f"this vLLM policy engine samples with {self.params}, not {params}")
        _, completion_ids, _, _ = self.backend.generate(prompts, images=None, num_generations=1)
        return [list(ids) for ids in completion_ids]
