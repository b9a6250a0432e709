"""Where a distillation teacher's scores come from: the one interface the trainer and the held-out evaluation
ask, and its sources (issue 28).

A teacher is asked two things (`Teacher`):
- `scores(batch)`: its view of the N completion positions of a batch of [its prompt | completion] rows,
  in the completion mask's row-major order (as `scoring.logits.completion_logits` returns them). Either
  dense logits [N, vocabulary] (a model in this process: the losses are exact, `losses.generalized_jsd`)
  or a `SparseTeacher` (its top-K log-probabilities, the actual tokens' log-probabilities: a teacher that
  is not in training memory; the losses of `training.sparse_losses`).
- `generate(prompts, params)`: completions of its own prompts (the samples of seq_kd steps; the greedy
  answers of the held-out evaluation).

Sources:
- `InProcessTeacher`: a model loaded beside the student (`--teacher MODEL`, `--teacher self`); dense logits.
- `ServedTeacher`: an OpenAI-compatible server that returns prompt log-probabilities (`vllm serve`, at
  `--teacher_url`), through the openai engine's `completion_top_logprobs`; no teacher weights in this
  process. The server scores the teacher's own prompt (with `--teacher_context`) before the very same
  completion tokens as the student's.

A new source (a cache, a teacher with another tokenizer) implements `name`, `eos_ids`, `scores` and
`generate`; `CompletionBatch` gives it the rows as token lists (`prompts`, `completions`) or tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selftaught.generation.base import EngineSettings, SamplingParams
from selftaught.generation.hf import eos_ids_of, generate_all
from selftaught.generation.openai_engine import OpenAIEngine, TokenizerMismatchError
from selftaught.scoring.logits import completion_logits
from selftaught.training.sparse_losses import SparseTeacher

TeacherScores = torch.Tensor | SparseTeacher


@dataclass(frozen=True)
class CompletionBatch:
    """Rows of [the teacher's left-padded prompt block | the right-padded completion block].

    inputs: input_ids, attention_mask and position_ids [B, prompt width + C], as `join_prompt_completion`
        builds them; completion_mask [B, C]: which completion slots hold tokens.
    """

    inputs: dict[str, torch.Tensor]
    completion_mask: torch.Tensor

    @property
    def _prompt_width(self) -> int:
        return self.inputs["input_ids"].shape[1] - self.completion_mask.shape[1]

    def prompts(self) -> list[list[int]]:
        """Each row's prompt tokens, padding dropped."""
        width = self._prompt_width
        ids, mask = self.inputs["input_ids"][:, :width], self.inputs["attention_mask"][:, :width]
        return [row[row_mask.bool()].tolist() for row, row_mask in zip(ids, mask, strict=True)]

    def completions(self) -> list[list[int]]:
        """Each row's completion tokens, padding dropped."""
        ids = self.inputs["input_ids"][:, self._prompt_width :]
        return [
            row[row_mask.bool()].tolist() for row, row_mask in zip(ids, self.completion_mask, strict=True)
        ]

    def token_ids(self) -> torch.Tensor:
        """The N completion tokens [N], in the order of the scored positions."""
        return self.inputs["input_ids"][:, self._prompt_width :][self.completion_mask.bool()]


class Teacher(Protocol):
    """What distillation asks of a teacher, wherever it runs."""

    name: str  # how logs name it
    eos_ids: list[int]  # the tokens that end its answers (for the held-out EOS share)

    def scores(self, batch: CompletionBatch) -> TeacherScores:
        """Its view of the batch's N completion positions: logits [N, vocabulary] or a `SparseTeacher`
        over [N] positions, in `batch.completion_mask`'s row-major order."""

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str | None) -> list[list[int]]:
        """Completion ids (through EOS) of each of its prompts, in the given order; `params.seed`, when set,
        makes the draw repeatable."""


@dataclass
class InProcessTeacher:
    """A frozen model in this process (today's path): full logits over the shared vocabulary."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int  # the columns that mean the same token for student and teacher (`shared_vocab_size`)
    batch_size: int = 8  # prompts per generate call

    @property
    def name(self) -> str:
        return self.model.name_or_path or type(self.model).__name__

    @property
    def eos_ids(self) -> list[int]:
        return eos_ids_of(self.model, self.tokenizer)

    def scores(self, batch: CompletionBatch) -> torch.Tensor:
        return completion_logits(self.model, batch.inputs, batch.completion_mask, self.vocab_size)

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str | None) -> list[list[int]]:
        return generate_all(self.model, self.tokenizer, prompts, params, self.batch_size, desc)


STARTING = "; is the server running, and is --teacher_url right?"  # what to check when it never answered


class TeacherUnavailableError(ConnectionError):
    """The teacher's server stopped answering (after the client's retries with backoff)."""


class ServedTeacher:
    """A teacher behind vLLM's OpenAI-compatible server: top-K log-probabilities of each completion position
    (`SparseTeacher`), requested in batches over HTTP, retried with backoff by the openai client.

    `tokenizer` is this run's (the student's): token ids are sent as they are, and every scored token is
    checked against the server's decoding of it (`OpenAIEngine._check_token_string`); `check` does that,
    and asks for K log-probabilities, once before training.
    """

    def __init__(
        self, url: str, top_k: int, tokenizer: PreTrainedTokenizerBase, max_retries: int = 5
    ) -> None:
        self.url, self.top_k, self.max_retries = url, top_k, max_retries
        settings = EngineSettings(engine="openai", base_url=url, max_retries=max_retries)
        self.engine = self._answered(lambda: OpenAIEngine(settings, tokenizer), STARTING)
        self.name = self.engine.name
        self.eos_ids = [tokenizer.eos_token_id]

    def check(self, prompt: list[int], completion: list[int]) -> None:
        """Score one completion, so that a server without prompt log-probabilities, with a --max-logprobs
        below K or another tokenizer is named before any training."""
        try:
            self._answered(
                lambda: self.engine.completion_top_logprobs([prompt], [completion], self.top_k, None),
                STARTING,
            )
        except TokenizerMismatchError as err:  # byte alignment needs the teacher's full distribution
            raise TokenizerMismatchError(
                f"{err} To distil from a teacher with another tokenizer, load it in this process: "
                "--teacher MODEL without --teacher_url."
            ) from None

    def scores(self, batch: CompletionBatch) -> SparseTeacher:
        tops = self._answered(  # no progress bar: this runs inside every training step
            lambda: self.engine.completion_top_logprobs(
                batch.prompts(), batch.completions(), self.top_k, None
            )
        )
        device = batch.completion_mask.device
        return SparseTeacher(
            top_ids=torch.cat([t.top_ids for t in tops]).to(device),
            top_log_probs=torch.cat([t.top_logprobs for t in tops]).to(device),
            token_ids=batch.token_ids(),
            token_log_probs=torch.cat([t.token_logprobs for t in tops]).to(device),
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str | None) -> list[list[int]]:
        """The server's completions (vLLM returns text: re-encoded with this run's tokenizer, so a token
        split the tokenizer would not choose comes back re-split). vLLM takes a seed below 2**63. A progress
        bar named `desc`; none for `desc=None` (a training step's samples)."""
        seeded = replace(params, seed=None if params.seed is None else params.seed % 2**63)
        return self._answered(lambda: self.engine.generate(prompts, seeded, desc))

    def _answered(self, request, hint: str = ""):
        """`request()`; a server that does not answer after the client's retries raises one error naming it
        (the engine's own message advises the `eval` commands' --base_url)."""
        try:
            return request()
        except ConnectionError as err:
            raise TeacherUnavailableError(
                f"the served teacher does not answer: {self.url}: no answer after {self.max_retries} retries "
                f"({err.__cause__ or err}){hint}"
            ) from None
