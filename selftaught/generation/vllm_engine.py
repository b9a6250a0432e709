"""The `vllm` engine: vLLM's offline `LLM` on the local GPUs, fed token ids (TokensPrompt).

vLLM batches continuously and pages the KV cache; with prefix caching, the rating rubric every
curation prompt begins with is computed once. Written against vLLM's documented offline API; the
test machine has no GPU, so this engine is not exercised by the test suite.
"""

from __future__ import annotations

import torch

from selftaught.generation.engines import EngineSettings, candidate_distribution
from selftaught.generation.hf import SamplingParams

TOP_LOGPROBS = 20  # vLLM's default max_logprobs


class VLLMEngine:
    """Generation and next-token scoring with `vllm.LLM`; the model is loaded once, here."""

    def __init__(self, settings: EngineSettings, model_path: str, tokenizer, trust_remote_code: bool) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError("engine=vllm needs vLLM (GPU machines): pip install selftaught[vllm]") from err
        self.vllm = vllm
        self.tokenizer = tokenizer
        self.name = f"vllm:{model_path}"
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
