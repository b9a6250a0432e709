"""How close a student is to its teacher on held-out prompts.

- forward / reverse KL per completion token, teacher-forced on the teacher's own greedy answers
  (what the student is being taught to say);
- top-1 agreement: how often the student's most likely next token is the teacher's;
- nll: the student's negative log-likelihood per token of the teacher's greedy answers;
- answer agreement: the share of prompts where the student's greedy answer matches the teacher's
  (the final \\boxed{} answer by math-verify for math rows, the whole text otherwise);
- for rows with a gold answer, greedy accuracy by \\boxed{} extraction and math-verify, and the share of
  answers that box an answer at all;
- whether each model still writes text (`scoring.degeneration`): degenerate share, distinct-2, mean
  length in tokens and EOS share, for the teacher as for the student, so a collapse is never silent;
- how a student moved from another (`HeldOutEvaluation.changes`): each distance's change, and the
  degenerate share's, with a 95% paired bootstrap interval over the prompts, so "no change" reads as an
  interval across 0, not as a sign (on 32 prompts one more looping answer is 3 points of share).

When the teacher sees privileged context (`Example.teacher_prompt`, see `distill.context`), it answers and
scores under its own prompt, as in training: the student's distance is to that teacher.

The teacher is any `distill.teachers.Teacher`. One with dense logits (a model in this process) gives exact
distances; one with top-K log-probabilities only (a served or cached teacher) gives the divergences on its
top-K plus the actual token plus one tail bin (`training.sparse_losses`), named `forward_kl_sparse`,
`reverse_kl_sparse` and `jsd_sparse`: lower bounds of the dense ones, tighter as K grows, never reported
under the dense names. Top-1 agreement (up to ties at the top) and nll are exact from either.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selftaught.data.formats import Example, to_examples, tokenize_prompt
from selftaught.data.shards import read_parquet, write_parquet
from selftaught.distill.teachers import CompletionBatch, InProcessTeacher, Teacher
from selftaught.evaluate.common import answer_degeneration, load_eval_rows, required, required_model
from selftaught.evaluate.config import DistanceEvalConfig
from selftaught.evaluate.intervals import paired_comparison, ratio
from selftaught.evaluate.math import answers_match, boxes_an_answer, last_boxed, math_accuracy, score_math
from selftaught.evaluate.results import write_result
from selftaught.generation.base import SamplingParams, left_pad, right_pad
from selftaught.generation.hf import eos_ids_of, generate_all
from selftaught.models import check_same_vocabulary, load_for_inference, load_tokenizer, shared_vocab_size
from selftaught.models.naming import model_label
from selftaught.scoring.degeneration import is_degenerate
from selftaught.scoring.logits import completion_logits, join_prompt_completion
from selftaught.training.losses import generalized_jsd
from selftaught.training.sparse_losses import SparseTeacher, sparse_generalized_jsd

TASK = "distance"


def _completion_inputs(
    prompts, completions, pad_id: int, device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for [left-padded prompts | right-padded completions] and the completion mask."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    completion_ids, completion_mask = right_pad(completions, pad_id)
    inputs = join_prompt_completion(prompt_ids, prompt_mask, completion_ids, completion_mask)
    return {k: v.to(device) for k, v in inputs.items()}, completion_mask.to(device)


DISTANCE_NAMES = ("forward_kl", "reverse_kl", "jsd", "top1_agreement", "nll")
# a teacher's top-K only: the divergences on its support plus a tail bin, named apart as the lower bounds
# of `DISTANCE_NAMES`' first three they are (coarse-graining never raises a KL or JS divergence)
SPARSE_DIVERGENCES = ("forward_kl_sparse", "reverse_kl_sparse", "jsd_sparse")


def held_out_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]], max_length: int
) -> list[int]:
    """A held-out prompt's ids as the evaluation gives them to a model: its last `max_length` tokens (a
    teacher cache stores its teacher's answers to these very ids)."""
    return tokenize_prompt(tokenizer, prompt)[-max_length:]


@torch.no_grad()
def teacher_distance(
    student: PreTrainedModel,
    teacher: Teacher,
    prompts: list[list[int]],
    completions: list[list[int]],
    vocab_size: int,
    pad_id: int,
    batch_size: int = 8,
    teacher_prompts: list[list[int]] | None = None,
) -> dict[str, list[float]]:
    """Per prompt: the sums over its completion's tokens of forward KL, reverse KL, Jensen-Shannon
    divergence (beta 0.5, at most ln 2), top-1 agreement and the student's negative log-likelihood of the
    completion (`token_distances`), and its token count (`tokens`); the teacher
    reads the completions after `teacher_prompts` (default: the student's `prompts`). Sums, not means, so
    that a resample of prompts gives the per-token mean over its tokens (`per_token`, `distance_changes`)."""
    device = next(student.parameters()).device
    teacher_prompts = teacher_prompts or prompts
    sums: dict[str, list[float]] = {}
    for start in range(0, len(prompts), batch_size):
        batch = slice(start, start + batch_size)
        inputs, mask = _completion_inputs(prompts[batch], completions[batch], pad_id, device)
        teacher_inputs, _ = _completion_inputs(teacher_prompts[batch], completions[batch], pad_id, device)
        s = completion_logits(student, inputs, mask, vocab_size).float()
        row = mask.bool().nonzero()[:, 0]  # the prompt of each completion token, in the logits' order
        tokens = inputs["input_ids"][:, -mask.shape[1] :][mask.bool()]
        token_values = token_distances(s, teacher.scores(CompletionBatch(teacher_inputs, mask)), tokens) | {
            "tokens": torch.ones_like(row, dtype=torch.float32)
        }
        for name, values in token_values.items():
            per_prompt = torch.zeros(mask.shape[0], device=device).index_add_(0, row, values).tolist()
            sums.setdefault(name, []).extend(per_prompt)
    return sums


def token_distances(
    student_logits: torch.Tensor, teacher: torch.Tensor | SparseTeacher, tokens: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each distance at each position, where the teacher wrote `tokens`: exact from the teacher's logits;
    from a `SparseTeacher`, the divergences on its top-K (+ the actual token and a tail bin), named as
    `SPARSE_DIVERGENCES`. Top-1 agreement and the student's NLL of the token are exact from either."""
    if isinstance(teacher, SparseTeacher):
        divergence, top1 = partial(sparse_generalized_jsd, student_logits, teacher), teacher.top_ids[:, 0]
        names = SPARSE_DIVERGENCES
    else:
        logits = teacher.float()
        divergence, top1 = partial(generalized_jsd, student_logits, logits), logits.argmax(-1)
        names = DISTANCE_NAMES[:3]
    log_probs = student_logits.log_softmax(-1)
    return dict(zip(names, (divergence(0.0), divergence(1.0), divergence(0.5)), strict=True)) | {
        "top1_agreement": (student_logits.argmax(-1) == top1).float(),
        "nll": -log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1),
    }


def per_token(sums: dict[str, list[float]]) -> dict[str, float]:
    """The means per completion token over all prompts, and the token count."""
    tokens = sum(sums["tokens"])
    return {name: sum(values) / max(tokens, 1) for name, values in sums.items() if name != "tokens"} | {
        "tokens": int(tokens)
    }


def per_token_mean(sums: dict[str, list[float]], name: str) -> Callable[[list[int]], float | None]:
    """`name`'s mean per completion token over a list of prompt indices."""
    return lambda idx: ratio(sums[name], sums["tokens"], idx)


def distance_changes(
    after: dict[str, list[float]], before: dict[str, list[float]], model: str, against: str
) -> list[dict]:
    """`model` minus `against` on every distance, both measured on the same teacher answers: the change in
    the per-token mean with its 95% paired bootstrap interval over the prompts (an interval across 0: the
    held-out set cannot tell the two apart). Entries as `evaluate.suite` writes its comparisons."""
    n = len(after["tokens"])
    return [
        paired_comparison(model, against, name, per_token_mean(after, name), per_token_mean(before, name), n)
        for name in after
        if name != "tokens"
    ]


def answers_agree(reference: str, candidate: str) -> bool:
    """Same final answer: by math-verify when the reference has a \\boxed{}, else the same text."""
    reference_box, candidate_box = last_boxed(reference), last_boxed(candidate)
    if reference_box is not None:
        return candidate_box is not None and answers_match(reference_box, candidate_box)
    return reference.strip() == candidate.strip()


def answer_metrics(rows: list[dict]) -> dict[str, float]:
    """Greedy accuracy on the rows whose gold answer can be verified, how many cannot (scored apart), and
    the share of answers with a \\boxed{} answer (no row with a gold answer: empty dict)."""
    graded = [r for r in rows if r["gold_answer"] is not None]
    if not graded:
        return {}
    return {
        "math_accuracy": math_accuracy(graded),
        "math_unverifiable": sum(r.get("verdict") == "unverifiable" for r in graded),
        "boxed_share": sum(boxes_an_answer(r["extracted"]) for r in graded) / len(graded),
    }


@dataclass(frozen=True)
class HeldOutSettings:
    """How the held-out answers are made and scored."""

    max_new_tokens: int  # longest greedy answer
    batch_size: int  # prompts per generation / scoring batch
    vocab_size: int  # the vocabulary student and teacher share (padded embedding rows excluded)
    max_prompt_length: int  # prompts keep their last this many tokens


def greedy_answer_rows(
    generate: Callable,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    questions: list[str],
    gold_answers: list[str | None],
    max_new_tokens: int,
    path: Path,
) -> tuple[list[list[int]], list[dict]]:
    """Greedy completion ids from `generate` (as `Teacher.generate`) of `prompts` (ids of `tokenizer`, which
    decodes the answers) and one audit row per prompt (the question as the model saw it, text, ids, gold
    answer, extracted answer, verdict), saved to `path` (`<name>.parquet`); read back when present."""
    if path.exists():
        rows = read_parquet(path)
        return [r["completion_ids"] for r in rows], rows
    ids = generate(prompts, SamplingParams(max_new_tokens, temperature=0.0), f"{path.stem} answers")
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    rows = []
    for question, completion_ids, text, answer in zip(questions, ids, texts, gold_answers, strict=True):
        checked = score_math([text], [answer])[0]  # verdict None without a gold answer
        rows.append(
            {"prompt": question, "completion": text, "completion_ids": completion_ids, "gold_answer": answer}
            | checked
        )
    write_parquet(path, rows)
    return ids, rows


class HeldOutEvaluation:
    """Greedy answers and distance to the teacher on held-out prompts: `selftaught distill` before and
    after training, and `selftaught eval distance`, share this one implementation.

    Every model's answers are saved (`<folder>/<name>.parquet`: the prompt's last user turn as that model
    saw it, text, ids, gold answer, extracted answer, verdict) for a person to audit; they are read back
    from there when present, so the teacher's are generated once, also across a resumed run.
    """

    def __init__(
        self,
        teacher: Teacher | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        examples: list[Example],
        folder: Path,
        settings: HeldOutSettings,
    ) -> None:
        """`teacher`: a `Teacher`, or a model in this process (an `InProcessTeacher` is made of it)."""
        if isinstance(teacher, PreTrainedModel):
            teacher = InProcessTeacher(teacher, tokenizer, settings.vocab_size, settings.batch_size)
        self.teacher, self.tokenizer, self.folder, self.settings = teacher, tokenizer, Path(folder), settings
        self.answers = [e.answer for e in examples]
        self.prompts = [self._ids(e.prompt) for e in examples]
        self.teacher_prompts = [self._ids(e.teacher_prompt or e.prompt) for e in examples]
        self.questions = [e.prompt[-1]["content"] for e in examples]
        self.teacher_questions = [(e.teacher_prompt or e.prompt)[-1]["content"] for e in examples]
        self.teacher_ids, self.teacher_rows = self.greedy_answers(
            teacher.generate, "teacher", as_teacher=True
        )
        self.distance_sums: dict[str, dict[str, list[float]]] = {}  # per student: `teacher_distance`
        self.degenerate: dict[str, list[float]] = {}  # per student: 1.0 for each degenerate answer
        self.correct: dict[str, list[bool | None]] = {}  # per student: each answer's verdict (None: no gold)

    def _ids(self, prompt: list[dict[str, str]]) -> list[int]:
        return held_out_prompt_ids(self.tokenizer, prompt, self.settings.max_prompt_length)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"

    def greedy_answers(
        self, generate: Callable, name: str, as_teacher: bool = False
    ) -> tuple[list[list[int]], list[dict]]:
        """Greedy completion ids from `generate` (as `Teacher.generate`) of the student's prompts, or of the
        teacher's own `as_teacher`, and one audit row per prompt; read back if saved."""
        return greedy_answer_rows(
            generate,
            self.tokenizer,
            self.teacher_prompts if as_teacher else self.prompts,
            self.teacher_questions if as_teacher else self.questions,
            self.answers,
            self.settings.max_new_tokens,
            self.path(name),
        )

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's accuracy, boxed share and degeneration measures."""
        texts = [r["completion"] for r in self.teacher_rows]
        return answer_metrics(self.teacher_rows) | answer_degeneration(
            texts, self.teacher_ids, self.teacher.eos_ids
        )

    def metrics(self, model: PreTrainedModel, name: str) -> dict[str, float]:
        """A student's accuracy, boxed share, degeneration measures and distance to the teacher."""

        def answers(prompts: list[list[int]], params: SamplingParams, desc: str) -> list[list[int]]:
            return generate_all(model, self.tokenizer, prompts, params, self.settings.batch_size, desc)

        ids, rows = self.greedy_answers(answers, name)
        texts = [r["completion"] for r in rows]
        results = answer_metrics(rows) | answer_degeneration(texts, ids, eos_ids_of(model, self.tokenizer))
        self.degenerate[name] = [float(is_degenerate(text)) for text in texts]
        self.correct[name] = [r.get("correct") for r in rows]
        agreeing = sum(
            answers_agree(t["completion"], s["completion"])
            for t, s in zip(self.teacher_rows, rows, strict=True)
        )
        self.distance_sums[name] = teacher_distance(
            model,
            self.teacher,
            self.prompts,
            self.teacher_ids,
            self.settings.vocab_size,
            self.tokenizer.pad_token_id,
            self.settings.batch_size,
            self.teacher_prompts,
        )
        distance = per_token(self.distance_sums[name])
        return results | distance | {"answer_agreement": agreeing / len(rows)}

    def changes(self, name: str, against: str) -> list[dict]:
        """How student `name` moved from student `against` (both measured by `metrics`) on every distance,
        the degenerate share and the task's accuracy, with 95% paired intervals over the held-out prompts."""
        return [
            *distance_changes(self.distance_sums[name], self.distance_sums[against], name, against),
            *answer_changes(name, against, self.degenerate, self.correct),
        ]


def share_of(flags: list[float]) -> Callable[[list[int]], float]:
    """The mean of 0/1 `flags` over a list of prompt indices."""
    return lambda idx: sum(flags[i] for i in idx) / len(idx)


def answer_changes(
    name: str, against: str, degenerate: dict[str, list[float]], correct: dict[str, list[bool | None]]
) -> list[dict]:
    """`name` minus `against` on what their own greedy answers show: the degenerate share, and, where the
    held-out rows have verifiable gold answers, the accuracy on those (the task itself, which closeness
    to a teacher is not), each with its 95% paired interval over the prompts."""
    mine, theirs = degenerate[name], degenerate[against]
    loops = paired_comparison(name, against, "degenerate_share", share_of(mine), share_of(theirs), len(mine))
    changes = [loops]
    verdicts = zip(correct[name], correct[against], strict=True)
    scored = [i for i, (a, b) in enumerate(verdicts) if a is not None and b is not None]
    if scored:
        right = {model: [float(bool(correct[model][i])) for i in scored] for model in (name, against)}
        changes.append(
            paired_comparison(
                name, against, "math_accuracy", share_of(right[name]), share_of(right[against]), len(scored)
            )
        )
    return changes


# (name, True when smaller is closer to the teacher) of the distances a distillation is meant to shrink
DISTANCES = (("forward_kl", True), ("reverse_kl", True), ("top1_agreement", False))


def drift_warning(before: dict, after: dict) -> str | None:
    """The sentence a distillation ends with (and its card carries) when training moved the student away
    from its teacher on every distance: a run that made things worse says so instead of reporting numbers
    a reader must compare by eye."""

    def value(metrics: dict, name: str) -> float | None:  # a sparse teacher's bound stands for a divergence
        return metrics.get(name, metrics.get(f"{name}_sparse"))

    moved = [(name, value(before, name), value(after, name), smaller) for name, smaller in DISTANCES]
    if any(start is None or end is None for _, start, end, _ in moved):
        return None
    if not all((end > start) if smaller else (end < start) for _, start, end, smaller in moved):
        return None
    changes = ", ".join(f"{name} {start:.3g} -> {end:.3g}" for name, start, end, _ in moved)
    return (
        f"Warning: training moved the student away from its teacher on every held-out distance ({changes}). "
        "Try a lower learning rate, a larger batch or more steps; a student already close to its teacher "
        "needs a much lower learning rate than one far from it."
    )


def run_distance(config: DistanceEvalConfig) -> dict:
    """Teacher and student answer the held-out prompts; KL both ways on the teacher's answers, and
    agreement with them. Writes `<output_dir>/distance.json` and `<output_dir>/distance/<model>.parquet`."""
    names = {role: required_model(config, role, TASK) for role in ("student", "teacher")}
    data = required(config.data, "--data", TASK)
    examples = to_examples(load_eval_rows(data, config), data)
    tokenizer = load_tokenizer(names["student"], config.trust_remote_code)
    check_same_vocabulary(tokenizer, load_tokenizer(names["teacher"], config.trust_remote_code))
    student, teacher = (load_for_inference(names[r], config.dtype, config.trust_remote_code) for r in names)
    folder = Path(config.output_dir) / TASK
    shutil.rmtree(folder, ignore_errors=True)  # answers saved by an earlier run are not these models'
    settings = HeldOutSettings(
        config.max_new_tokens,
        config.batch_size,
        shared_vocab_size(tokenizer, student, teacher),
        config.max_prompt_length,
    )
    evaluation = HeldOutEvaluation(teacher, tokenizer, examples, folder, settings)
    metrics = evaluation.metrics(student, "student")
    metrics["teacher"] = evaluation.teacher_metrics()
    labels = {role: model_label(name) for role, name in names.items()}
    return write_result(config.output_dir, TASK, metrics, config, labels, data)
