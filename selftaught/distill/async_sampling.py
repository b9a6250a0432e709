"""Sampling the student beside training (`--max_staleness K`): the samples of steps t+1..t+K are drawn
while the trainer trains step t.

A step's time on one host is a decode (memory-bound: it reads all the weights per token and gains little
from a second core) followed by the teacher's forward and the student's forward and backward
(arithmetic-bound: they gain from every core). Run side by side, the decode of the next step fills what the
arithmetic leaves idle. The sampler is a thread with a copy of the student, not a process:
- torch releases the GIL inside its ops, so a thread decodes while the trainer computes;
- `torch.set_num_threads` is per thread (OpenMP), so each side is pinned on its own: the sampler gets one
  thread and the trainer the other cores (`trainer_threads`). On the 2-core CPU (embedded 10-layer
  student): a decode of 4 x 96 tokens took 5.3 s on 1 thread, 4.9 s on 2; the arithmetic (teacher forward
  + student forward and backward, 3 x 4 x 180 tokens) 17.9 s on 1, 9.9 s on 2. Side by side with 2 trainer
  threads (3 threads on 2 cores) the decode slowed 1.5x and the arithmetic 1.6x: no overlap left. With 1
  each, the decode kept its pace (5.5 s) and the arithmetic slowed 1.2x (21.7 s): the overlap pays where
  the decode is the larger part of a step, as in on-policy distillation (README, "Sampling beside
  training");
- the weights reach it as a state-dict copy in memory, and its errors come back through a `Future`;
  Ctrl-C always lands in the main thread, which then stops the sampler.

What each step trains on is fixed by the schedule, not by timing: step s is handed to the sampler, with a
snapshot of the weights, when the trainer is at step max(s - K, first step of its epoch), so it is sampled
from exactly those weights (its `version`); staleness = s - version <= K. Seeds come from (seed, step,
process) as at K = 0, and every draw from the global RNG happens under one lock, so a rerun with the same K
draws the same samples as long as training itself draws no random numbers (dropout: LoRA's does).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from selftaught.generation.base import SamplingParams
from selftaught.generation.policy import HFPolicyEngine

SAMPLER_THREADS = 1  # a decode barely gains from a second core; the arithmetic of training does
THREAD_NAME = "selftaught-sampler"


def trainer_threads(total: int) -> int:
    """The trainer's torch threads while the sampler runs: the cores the sampler does not take."""
    return max(1, total - SAMPLER_THREADS)


@dataclass
class SampledStep:
    """One step's on-policy completions and the optimizer step whose weights drew them."""

    completions: list[list[int]]
    version: int


class AsyncStudentSampler:
    """A copy of the student in a thread of its own, drawing the completions of the steps handed to it in
    order, each from the weights handed with it.

    `rng_lock` is held around every seeding and draw of the global RNG in this process (the trainer's own
    sampling takes it too): torch's default generator is one for all threads."""

    def __init__(
        self,
        student: torch.nn.Module,
        tokenizer,
        batch_size: int,
        sampling: SamplingParams,
        rng_lock: threading.Lock,
        forked_rng: Callable[[], AbstractContextManager],
    ) -> None:
        self.model = copy.deepcopy(student).eval().requires_grad_(False)
        self.engine = HFPolicyEngine(lambda: nullcontext(self.model), tokenizer, batch_size, "hf (sampler)")
        self.sampling, self.rng_lock, self.forked_rng = sampling, rng_lock, forked_rng
        self.pending: dict[int, Future[SampledStep]] = {}
        self._loaded_version: int | None = None
        self._executor = ThreadPoolExecutor(
            1, THREAD_NAME, initializer=torch.set_num_threads, initargs=(SAMPLER_THREADS,)
        )
        self._trainer_threads = torch.get_num_threads()  # restored by close()
        torch.set_num_threads(trainer_threads(self._trainer_threads))

    def submit(self, step: int, prompts: list[list[int]], seed: int, weights: dict, version: int) -> None:
        """Queue step `step`'s sampling from `weights` (a state-dict snapshot taken at optimizer step
        `version`), after every step queued before it."""
        self.pending[step] = self._executor.submit(self._sample, prompts, seed, weights, version)

    def result(self, step: int) -> SampledStep:
        """Step `step`'s completions, once drawn; the sampler's error, if it failed."""
        return self.pending.pop(step).result()

    def cancel_pending(self) -> None:
        """Drop the steps not started yet (an epoch stopped early: its steps read ahead are not trained)."""
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()

    def _sample(self, prompts: list[list[int]], seed: int, weights: dict, version: int) -> SampledStep:
        if self._loaded_version != version:
            self.model.load_state_dict(weights)
            self._loaded_version = version
        with self.rng_lock, self.forked_rng():
            torch.manual_seed(seed)
            completions = self.engine.generate(prompts, self.sampling)
        return SampledStep(completions, version)

    def close(self) -> None:
        """Drop the steps not yet started, wait for the one being drawn (one decode at most), end the
        thread and give the trainer its threads back."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
        torch.set_num_threads(self._trainer_threads)
