"""A teacher with another tokenizer, asked about each of the student's batches.

What a batch becomes (`CrossTokenizerTeacher.score`): each student completion (its own tokens, sampled
on-policy or the data's) is turned into text and re-tokenised by the teacher after the teacher's own prompt
(its chat template; the `--teacher_context` prompt when there is one), the teacher scores that in one
forward pass, and its log-probabilities come back onto the student's tokens (`models.cross_tokenizer`):

- per student token, the teacher's log-probability of exactly its span of text (`CompletionAlignment.spread`;
  over a completion they sum to the teacher's log-probability of the whole text);
- where the student token starts where a teacher token starts (both models predict the next token from the
  same text), the teacher's next-token distribution over the strings both vocabularies hold, plus a tail bin.

The loss per completion token (`CrossTokenizerTeacher.per_token_loss`), with `loss` jsd:
- `shared_support`: the generalized JSD over the shared strings plus the tail bin, at tokens that start on a
  teacher boundary (97% of tokens on the shipped math answers, bench/results/cross_tokenizer.json);
- `fallback`, elsewhere (the token starts inside a teacher token, where the teacher has no distribution for
  that text): `sampled_kl` (default), the sampled-token signal log q(x) - log p(x) on the teacher's
  log-probability of the token's span, whose gradient is (log q - log p) d log q (the gradient of
  (log q - log p)^2 / 2, so it pulls log q(x) toward the teacher's value on any completion); or `uld`,
  the distance between the two sorted distributions at the teacher token holding the student token's first
  byte (it needs no correspondence, and sees only the distributions' shapes);
- `unaligned`: tokens past the longest valid UTF-8 prefix (a reply cut inside a character) get no loss.
With `loss` sampled_kl every aligned token takes the sampled-token signal (`sparse_losses.sampled_kl`).

With one tokenizer on both sides and completions the tokenizer itself would produce, every token is on a
boundary, the shared strings are the whole vocabulary with no tail, and the loss and its gradient are
today's dense generalized JSD (tests/test_cross_teacher.py). A sampled completion need not be the
tokenizer's own tokenisation of its text ('Ċ' 'Ċ' against 'ĊĊ'): the teacher then reads the canonical one,
the values still sum to its log-probability of the text, and the tokens inside one of its tokens take the
fallback (`models.cross_tokenizer`); each batch counts such completions (`ScoredBatch.non_canonical`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import trl.chat_template_utils
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from selftaught.arguments import ArgumentError
from selftaught.data.formats import Example
from selftaught.distill.teachers import CompletionBatch
from selftaught.generation.base import SamplingParams, left_pad, right_pad
from selftaught.generation.hf import eos_ids_of, generate_all
from selftaught.models.cross_tokenizer import CompletionAlignment, CrossTokenizer, chat_prompt_text
from selftaught.models.vocab import TokenizerMismatchError, check_same_vocabulary
from selftaught.scoring.logits import completion_logits, join_prompt_completion
from selftaught.training.cross_tokenizer_losses import (
    support_jsd,
    teacher_on_support,
    teacher_sorted_probs,
    uld_against,
)
from selftaught.training.losses import CHUNK_ROWS
from selftaught.training.sparse_losses import SparseTeacher, sampled_kl

FALLBACKS = ("sampled_kl", "uld")
PATHS = ("shared_support", "fallback", "unaligned")
TRL_TEMPLATES = Path(trl.chat_template_utils.__file__).parent / "chat_templates"


def known_chat_templates() -> list[str]:
    """The chat templates `--teacher_chat_template` knows by name: those TRL ships."""
    return sorted(path.stem for path in TRL_TEMPLATES.glob("*.jinja"))


def read_chat_template(value: str) -> str:
    """`--teacher_chat_template`: a Jinja file, or the name of a template TRL ships (`gemma3`)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    if value in known_chat_templates():
        return (TRL_TEMPLATES / f"{value}.jinja").read_text()
    raise ArgumentError(
        f"--teacher_chat_template {value!r} is neither a file nor a known template; name a Jinja file or one "
        f"of {', '.join(known_chat_templates())}"
    )


@dataclass(frozen=True)
class Alignment:
    """How the run compares teacher and student, and why (logged, and written to the card)."""

    cross: CrossTokenizer | None  # None: one shared tokenizer, token ids compared directly
    reason: str


def choose_alignment(
    student: PreTrainedTokenizerBase,
    teacher: PreTrainedTokenizerBase,
    chat_template: str | None,
    seq_kd: bool,
) -> Alignment:
    """Token ids when the two tokenizers map every token to the same id; byte offsets otherwise (the
    teacher's tokenizer then gets `chat_template`, required when it has none of its own)."""
    try:
        check_same_vocabulary(student, teacher)
    except TokenizerMismatchError:
        pass
    else:
        unused = "; --teacher_chat_template is not used: the teacher reads the student's prompt tokens"
        return Alignment(
            None,
            "token ids: student and teacher share one tokenizer (every token has the same id), so the "
            "teacher scores the student's own tokens and the loss is the dense generalized JSD"
            + (unused if chat_template else ""),
        )
    if chat_template is not None:
        teacher.chat_template = read_chat_template(chat_template)
    elif teacher.chat_template is None:
        raise ArgumentError(
            f"the teacher's tokenizer ({len(teacher)} tokens) differs from the student's and has no chat "
            "template, so it cannot read the student's prompts as a conversation; give it one with "
            "--teacher_chat_template (a Jinja file, or a name such as gemma3)"
        )
    if seq_kd:
        raise ArgumentError(
            "--seq_kd trains on the teacher's own samples, but this teacher's tokenizer differs from the "
            "student's; drop --seq_kd (the student's samples and the data's completions are aligned)"
        )
    cross = CrossTokenizer.between(student, teacher)
    shared = len(cross.support.student_ids)
    return Alignment(
        cross,
        f"byte offsets: the teacher's tokenizer ({len(teacher)} tokens) differs from the student's "
        f"({len(student)}), so each student completion is re-tokenised by the teacher after its own chat "
        "template and the teacher's log-probabilities are mapped back by byte spans; the loss is the "
        f"generalized JSD over the {shared} strings both vocabularies hold plus a tail bin where a student "
        "token starts on a teacher token boundary, and a fallback elsewhere",
    )


def teacher_prompt_ids(cross: CrossTokenizer, prompt: list[dict[str, str]], max_length: int) -> list[int]:
    """The teacher's prompt in its own tokens, as its chat template renders it (its last `max_length`)."""
    return cross.teacher.encode(chat_prompt_text(cross.teacher.tokenizer, prompt))[-max_length:]


def with_teacher_prompts(
    data: Dataset, examples: Sequence[Example], cross: CrossTokenizer, max_length: int
) -> Dataset:
    """A tokenised dataset whose `teacher_prompt_ids` are each row's teacher prompt (its `--teacher_context`
    one, if any) in the teacher's tokens: the trainer puts them before the student's completion tokens,
    and `CrossTokenizerTeacher.scores` reads the two blocks apart (they are never one model's input)."""
    if "teacher_prompt_ids" in data.column_names:
        data = data.remove_columns("teacher_prompt_ids")
    prompts = [teacher_prompt_ids(cross, e.teacher_prompt or e.prompt, max_length) for e in examples]
    return data.add_column("teacher_prompt_ids", prompts)


@dataclass(frozen=True)
class ScoredBatch:
    """What the loss needs of the teacher, per student completion token (in `completion_mask` order)."""

    student_ids: torch.Tensor  # [N] the completion's tokens
    token_log_probs: torch.Tensor  # [N] the teacher's log-probability of each token's span (0: unaligned)
    path: torch.Tensor  # [N] the index in PATHS of each token's loss path
    support: torch.Tensor  # [shared_support tokens, strings (+1)] the teacher's distribution there
    sorted_probs: torch.Tensor | None  # [fallback tokens, teacher vocabulary] with fallback uld
    completions: int
    non_canonical: int  # completions whose tokens are not the student tokenizer's own tokenisation of them

    def counts(self) -> dict[str, int]:
        """Completion tokens per loss path."""
        return {name: int((self.path == k).sum()) for k, name in enumerate(PATHS)}


@dataclass
class CrossTokenizerTeacher:
    """A frozen teacher in this process whose tokenizer differs from the student's: a `distill.teachers`
    source whose scores are per-token targets on the student's tokens (`ScoredBatch`)."""

    model: torch.nn.Module
    cross: CrossTokenizer
    vocab_size: int  # the teacher's tokenizer's tokens (its padded embedding rows dropped)
    fallback: str = "sampled_kl"  # the loss off teacher boundaries: FALLBACKS
    loss: str = "jsd"  # --loss: jsd (by path) or sampled_kl (every aligned token)
    batch_size: int = 8  # prompts per generate call
    alignment: str = ""  # how the run aligns the two tokenizers, and why (`choose_alignment`), for the card

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")

    @property
    def name(self) -> str:
        return getattr(self.model, "name_or_path", None) or type(self.model).__name__

    @property
    def eos_ids(self) -> list[int]:
        return eos_ids_of(self.model, self.cross.teacher.tokenizer)

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str | None) -> list[list[int]]:
        """Completions of prompts in the teacher's own tokens, in its tokens."""
        return generate_all(self.model, self.cross.teacher.tokenizer, prompts, params, self.batch_size, desc)

    @torch.no_grad()
    def scores(self, batch: CompletionBatch) -> ScoredBatch:
        """The teacher's targets for rows of [the teacher's prompt, in its tokens | the student's completion,
        in the student's tokens] (module docstring)."""
        pieces = self.cross.teacher.pieces
        prompt_texts = [b"".join(pieces[i] for i in ids).decode() for ids in batch.prompts()]
        student_ids = batch.completions()
        alignments = [
            self.cross.align_after(text, ids) for text, ids in zip(prompt_texts, student_ids, strict=True)
        ]
        logits = self._teacher_logits(alignments, batch.completion_mask.device)
        starts = torch.tensor([0] + [len(a.teacher_completion_ids) for a in alignments]).cumsum(0).tolist()
        teacher_tokens = torch.tensor(
            [i for a in alignments for i in a.teacher_completion_ids], dtype=torch.long, device=logits.device
        )
        token_log_probs = torch.cat(
            [
                F.log_softmax(rows.float(), dim=-1).gather(-1, ids[:, None])[:, 0]
                for rows, ids in zip(logits.split(CHUNK_ROWS), teacher_tokens.split(CHUNK_ROWS), strict=True)
            ]
        )
        spread = torch.cat(
            [a.spread(token_log_probs[start:]) for a, start in zip(alignments, starts, strict=False)]
        )
        path = torch.tensor(
            [
                PATHS.index("unaligned" if not aligned else "shared_support" if on_boundary else "fallback")
                for a in alignments
                for aligned, on_boundary in zip(a.aligned, a.on_boundary, strict=True)
            ],
            device=logits.device,
        )
        if self.loss == "sampled_kl":  # every aligned token takes the sampled-token signal
            path = torch.where(path == PATHS.index("shared_support"), PATHS.index("fallback"), path)
        rows = torch.tensor(
            [start + row for a, start in zip(alignments, starts, strict=False) for row in a.teacher_row],
            device=logits.device,
        )
        on_support = path == PATHS.index("shared_support")
        elsewhere = path == PATHS.index("fallback")
        return ScoredBatch(
            student_ids=batch.token_ids(),
            token_log_probs=spread,
            path=path,
            support=teacher_on_support(logits[rows[on_support]], self.cross.support),
            sorted_probs=teacher_sorted_probs(logits[rows[elsewhere]], self.vocab_size)
            if self.fallback == "uld" and self.loss == "jsd"
            else None,
            completions=len(alignments),
            non_canonical=sum(not a.canonical for a in alignments),
        )

    def _teacher_logits(
        self, alignments: Sequence[CompletionAlignment], device: torch.device
    ) -> torch.Tensor:
        """[teacher completion tokens, teacher vocabulary]: the teacher's logits predicting each token of
        every re-tokenised completion, in order."""
        pad = self.cross.teacher.tokenizer.pad_token_id or 0
        prompt_ids, prompt_mask = left_pad([a.teacher_prompt_ids for a in alignments], pad)
        completion_ids, completion_mask = right_pad([a.teacher_completion_ids for a in alignments], pad)
        inputs = join_prompt_completion(prompt_ids, prompt_mask, completion_ids, completion_mask)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return completion_logits(self.model, inputs, completion_mask.to(device), self.vocab_size)

    def per_token_loss(
        self, student_logits: torch.Tensor, scored: ScoredBatch, beta: float, estimator: str = "k3"
    ) -> torch.Tensor:
        """[N] the loss at each completion token (module docstring); 0 at unaligned tokens. The sampled-token
        signal's value is `estimator`'s (k3 by default: never negative, so the logged loss is a sum of
        divergence estimates); its gradient is the same for k1 and k3."""
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        loss = student_logits.new_zeros(len(scored.path), dtype=dtype)
        on_support = scored.path == PATHS.index("shared_support")
        elsewhere = scored.path == PATHS.index("fallback")
        if on_support.any():
            values = support_jsd(student_logits[on_support], scored.support, self.cross.support, beta)
            loss = loss.masked_scatter(on_support, values.to(dtype))
        if elsewhere.any():
            logits = student_logits[elsewhere]
            if scored.sorted_probs is not None:
                values = uld_against(logits, scored.sorted_probs, logits.shape[-1])
            else:
                teacher = SparseTeacher(
                    top_ids=scored.student_ids.new_zeros(len(logits), 0),
                    top_log_probs=scored.token_log_probs.new_zeros(len(logits), 0),
                    token_ids=scored.student_ids[elsewhere],
                    token_log_probs=scored.token_log_probs[elsewhere],
                )
                values = sampled_kl(logits, teacher, estimator)
            loss = loss.masked_scatter(elsewhere, values.to(dtype))
        return loss
