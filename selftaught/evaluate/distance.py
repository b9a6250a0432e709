"""How close a student is to its teacher on held-out prompts.

- forward / reverse KL per completion token, teacher-forced on the teacher's own greedy answers
  (what the student is being taught to say);
- top-1 agreement: how often the student's most likely next token is the teacher's;
- answer agreement: the share of prompts where the student's greedy answer matches the teacher's
  (the final \\boxed{} answer by math-verify for math rows, the whole text otherwise);
- for rows with a gold answer, greedy accuracy by \\boxed{} extraction and math-verify.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selftaught.data.formats import to_examples, tokenize_prompt
from selftaught.data.shards import read_parquet, write_parquet
from selftaught.evaluate.common import load_eval_rows, required, required_model
from selftaught.evaluate.config import DistanceEvalConfig
from selftaught.evaluate.math import answers_match, last_boxed, math_accuracy, score_math
from selftaught.evaluate.results import write_result
from selftaught.generation.hf import SamplingParams, generate_all, left_pad, right_pad
from selftaught.models import check_same_vocabulary, load_model, load_tokenizer, shared_vocab_size
from selftaught.scoring.logits import completion_logits, join_prompt_completion
from selftaught.training.losses import generalized_jsd

TASK = "distance"


@torch.no_grad()
def teacher_distance(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    vocab_size: int,
    pad_id: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean per-token forward KL, reverse KL, Jensen-Shannon divergence (beta 0.5, at most ln 2) and
    top-1 agreement over the given completions."""
    device = next(student.parameters()).device
    totals = {"forward_kl": 0.0, "reverse_kl": 0.0, "jsd": 0.0, "top1_agreement": 0.0}
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        prompt_ids, prompt_mask = left_pad(prompts[start : start + batch_size], pad_id)
        completion_ids, completion_mask = right_pad(completions[start : start + batch_size], pad_id)
        inputs = {
            k: v.to(device)
            for k, v in join_prompt_completion(
                prompt_ids, prompt_mask, completion_ids, completion_mask
            ).items()
        }
        mask = completion_mask.to(device)
        s = completion_logits(student, inputs, mask, vocab_size).float()
        t = completion_logits(teacher, inputs, mask, vocab_size).float()
        totals["forward_kl"] += generalized_jsd(s, t, beta=0.0).sum().item()
        totals["reverse_kl"] += generalized_jsd(s, t, beta=1.0).sum().item()
        totals["jsd"] += generalized_jsd(s, t, beta=0.5).sum().item()
        totals["top1_agreement"] += (s.argmax(-1) == t.argmax(-1)).sum().item()
        tokens += int(mask.sum())
    return {name: value / max(tokens, 1) for name, value in totals.items()} | {"tokens": tokens}


def answers_agree(reference: str, candidate: str) -> bool:
    """Same final answer: by math-verify when the reference has a \\boxed{}, else the same text."""
    reference_box, candidate_box = last_boxed(reference), last_boxed(candidate)
    if reference_box is not None:
        return candidate_box is not None and answers_match(reference_box, candidate_box)
    return reference.strip() == candidate.strip()


def answer_metrics(rows: list[dict]) -> dict[str, float]:
    """Greedy accuracy on the rows whose gold answer can be verified, and how many cannot (scored apart;
    none with a gold answer: empty dict)."""
    graded = [r for r in rows if r["gold_answer"] is not None]
    unverifiable = sum(r.get("verdict") == "unverifiable" for r in graded)
    return {"math_accuracy": math_accuracy(graded), "math_unverifiable": unverifiable} if graded else {}


class HeldOutEvaluation:
    """Greedy answers and distance to the teacher on held-out prompts: `selftaught distill` before and
    after training, and `selftaught eval distance`, share this one implementation.

    Every model's answers are saved (`<folder>/<name>.parquet`: text, ids, gold answer, extracted answer,
    verdict) for a person to audit; they are read back from there when present, so the teacher's are
    generated once, also across a resumed run.
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[list[int]],
        answers: list[str | None],
        folder: Path,
        settings: tuple[int, int, int],
    ) -> None:
        """`settings`: (max_new_tokens, batch_size, vocab_size shared by student and teacher)."""
        self.teacher, self.tokenizer, self.folder = teacher, tokenizer, Path(folder)
        self.prompts, self.answers = prompts, answers
        self.max_new_tokens, self.batch_size, self.vocab_size = settings
        self.teacher_ids, self.teacher_rows = self.greedy_answers(teacher, "teacher")

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"

    def greedy_answers(self, model: PreTrainedModel, name: str) -> tuple[list[list[int]], list[dict]]:
        """Greedy completion ids of `model` and one audit row per prompt, read back if saved."""
        if self.path(name).exists():
            rows = read_parquet(self.path(name))
            return [r["completion_ids"] for r in rows], rows
        params = SamplingParams(self.max_new_tokens, temperature=0.0)
        ids = generate_all(model, self.tokenizer, self.prompts, params, self.batch_size, f"{name} answers")
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rows = []
        for completion_ids, text, answer in zip(ids, texts, self.answers, strict=True):
            checked = score_math([text], [answer])[0]  # verdict None without a gold answer
            rows.append(
                {"completion": text, "completion_ids": completion_ids, "gold_answer": answer} | checked
            )
        write_parquet(self.path(name), rows)
        return ids, rows

    def metrics(self, model: PreTrainedModel, name: str) -> dict[str, float]:
        is_teacher = model is self.teacher
        ids, rows = (self.teacher_ids, self.teacher_rows) if is_teacher else self.greedy_answers(model, name)
        results = answer_metrics(rows) | {"mean_answer_tokens": sum(map(len, ids)) / len(ids)}
        if is_teacher:
            return results
        agreeing = sum(
            answers_agree(t["completion"], s["completion"])
            for t, s in zip(self.teacher_rows, rows, strict=True)
        )
        pad_id = self.tokenizer.pad_token_id
        distance = teacher_distance(
            model, self.teacher, self.prompts, self.teacher_ids, self.vocab_size, pad_id, self.batch_size
        )
        return results | distance | {"answer_agreement": agreeing / len(rows)}


def run_distance(config: DistanceEvalConfig) -> dict:
    """Teacher and student answer the held-out prompts; KL both ways on the teacher's answers, and
    agreement with them. Writes `<output_dir>/distance.json` and `<output_dir>/distance/<model>.parquet`."""
    names = {role: required_model(config, role, TASK) for role in ("student", "teacher")}
    data = required(config.data, "--data", TASK)
    examples = to_examples(load_eval_rows(data, config), data)
    tokenizer = load_tokenizer(names["student"], config.trust_remote_code)
    check_same_vocabulary(tokenizer, load_tokenizer(names["teacher"], config.trust_remote_code))
    student, teacher = (load_model(names[r], config.dtype, config.trust_remote_code).eval() for r in names)
    folder = Path(config.output_dir) / TASK
    shutil.rmtree(folder, ignore_errors=True)  # answers saved by an earlier run are not these models'
    evaluation = HeldOutEvaluation(
        teacher,
        tokenizer,
        [tokenize_prompt(tokenizer, e.prompt)[-config.max_prompt_length :] for e in examples],
        [e.answer for e in examples],
        folder,
        (config.max_new_tokens, config.batch_size, shared_vocab_size(tokenizer, student, teacher)),
    )
    metrics = evaluation.metrics(student, "student")
    metrics["teacher"] = evaluation.metrics(teacher, "teacher")
    return write_result(config.output_dir, TASK, metrics, config, names, data)
