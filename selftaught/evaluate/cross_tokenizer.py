"""How close a student is to a teacher with another tokenizer, on held-out prompts.

Per-token distances (`evaluate.distance`) need one vocabulary on both sides; across tokenizers the measure
is the per-byte NLL of the teacher's greedy answers under the student (`evaluate.per_byte`): how likely the
student finds what the teacher says, per UTF-8 byte, so that a finer or coarser tokenizer changes nothing.
Before and after training it is compared on the same answers with a paired 95% interval; the teacher's own
per-byte NLL of its answers is the floor a student could reach. Everything else is as in
`HeldOutEvaluation`: each model's greedy answers saved for audit, math accuracy and boxed share for rows
with a gold answer, answer agreement with the teacher, and the degeneration measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel

from selftaught.data.formats import Example, tokenize_prompt
from selftaught.evaluate.common import answer_degeneration
from selftaught.evaluate.distance import (
    HeldOutSettings,
    answer_changes,
    answer_metrics,
    answers_agree,
    greedy_answer_rows,
)
from selftaught.evaluate.per_byte import answer_nll, per_byte_nll, per_byte_nll_change
from selftaught.generation.base import SamplingParams
from selftaught.generation.engines import HFEngine
from selftaught.generation.hf import eos_ids_of, generate_all
from selftaught.models.cross_tokenizer import ByteVocabulary, CrossTokenizer
from selftaught.scoring.degeneration import is_degenerate


class CrossTokenizerEvaluation:
    """Greedy answers and per-byte NLL of the teacher's answers: `selftaught distill` before and after
    training with a teacher whose tokenizer differs from the student's."""

    def __init__(
        self,
        teacher: PreTrainedModel,
        cross: CrossTokenizer,
        examples: Sequence[Example],
        folder: Path,
        settings: HeldOutSettings,
    ) -> None:
        self.teacher, self.cross, self.folder, self.settings = teacher, cross, Path(folder), settings
        self.gold = [e.answer for e in examples]
        self.prompts = [e.prompt for e in examples]
        self.teacher_prompts = [e.teacher_prompt or e.prompt for e in examples]
        self.teacher_ids, self.teacher_rows = self._answers(
            teacher, cross.teacher, self.teacher_prompts, "teacher"
        )
        self.teacher_answers = [r["completion"] for r in self.teacher_rows]
        teacher_ends = eos_ids_of(teacher, cross.teacher.tokenizer)
        self.ended = [bool(ids) and ids[-1] in teacher_ends for ids in self.teacher_ids]
        self.nll: dict[str, list[float]] = {}  # per model: the NLL of each teacher answer, in nats
        self.degenerate: dict[str, list[float]] = {}  # per student: 1.0 for each degenerate answer
        self.correct: dict[str, list[bool | None]] = {}  # per student: each answer's verdict (None: no gold)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"

    def _answers(
        self, model: PreTrainedModel, vocabulary: ByteVocabulary, prompts: list, name: str
    ) -> tuple[list[list[int]], list[dict]]:
        tokenizer, batch = vocabulary.tokenizer, self.settings.batch_size

        def generate(ids: list[list[int]], params: SamplingParams, desc: str) -> list[list[int]]:
            return generate_all(model, tokenizer, ids, params, batch, desc)

        ids = [tokenize_prompt(tokenizer, p)[-self.settings.max_prompt_length :] for p in prompts]
        questions = [p[-1]["content"] for p in prompts]
        return greedy_answer_rows(
            generate, tokenizer, ids, questions, self.gold, self.settings.max_new_tokens, self.path(name)
        )

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's accuracy, boxed share, degeneration measures and per-byte NLL of its own answers
        (the floor a student could reach)."""
        return self._metrics(self.teacher, "teacher", self.cross.teacher, self.teacher_ids, self.teacher_rows)

    def metrics(self, model: PreTrainedModel, name: str) -> dict[str, float]:
        """A student's accuracy, boxed share, degeneration measures, per-byte NLL of the teacher's answers
        and agreement with them."""
        ids, rows = self._answers(model, self.cross.student, self.prompts, name)
        results = self._metrics(model, name, self.cross.student, ids, rows)
        texts = [r["completion"] for r in rows]
        self.degenerate[name] = [float(is_degenerate(text)) for text in texts]
        self.correct[name] = [r.get("correct") for r in rows]
        agreeing = sum(answers_agree(t, s) for t, s in zip(self.teacher_answers, texts, strict=True))
        return results | {"answer_agreement": agreeing / len(rows)}

    def _metrics(
        self, model: PreTrainedModel, name: str, vocabulary: ByteVocabulary, ids: list, rows: list[dict]
    ) -> dict[str, float]:
        texts = [r["completion"] for r in rows]
        eos = eos_ids_of(model, vocabulary.tokenizer)
        results = answer_metrics(rows) | answer_degeneration(texts, ids, eos)
        engine = HFEngine(model, vocabulary.tokenizer, self.settings.batch_size, name)
        prompts = self.teacher_prompts if model is self.teacher else self.prompts
        self.nll[name] = answer_nll(engine, vocabulary, prompts, self.teacher_answers, self.ended)
        return results | {"nll_per_byte": per_byte_nll(self.nll[name], self.teacher_answers)["nll_per_byte"]}

    def changes(self, name: str, against: str) -> list[dict]:
        """How student `name` moved from student `against`: per-byte NLL of the teacher's answers, the
        degenerate share and the task's accuracy, with 95% paired intervals over the held-out prompts."""
        return [
            per_byte_nll_change(name, against, self.nll[name], self.nll[against], self.teacher_answers),
            *answer_changes(name, against, self.degenerate, self.correct),
        ]
