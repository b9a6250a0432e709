"""Cross-tokenizer alignment on real text: SmolLM2 (student, 49,152 tokens) against Gemma 3 270M (teacher,
262,144 tokens), on the embedded teacher's shipped answers (selftaught/data/builtin/teacher_answers.jsonl:
160 math answers, 85 chat answers).

Measured per set of answers (`selftaught.models.cross_tokenizer`):
- tokens per byte on each side;
- the share of student tokens on each loss path: `shared_support` (the token starts where a teacher token
  starts: both models predict from the same text), `fallback` (ULD or the sampled-token signal), and
  `unaligned`; `whole_teacher_tokens`: the share whose span is a run of whole teacher tokens (both ends on
  teacher boundaries: the teacher's log-probability of exactly that text); `shared_string`: the share
  whose own string the teacher's vocabulary holds; `forced_boundary`: answers tokenised apart from their
  prompt;
- milliseconds of alignment per answer.
With --models, also on the real models (float32, CPU): the sequence identity (|sum of the spread values -
the teacher's log-probability of the whole answer|, largest over the answers), and each model's NLL per
byte of the answers with its 95% interval (`selftaught.evaluate.per_byte`), and the sampled student's
share of non-canonical completions (sampled ids that differ from the student tokenizer's own tokenisation
of their text: with one tokenizer on both sides, those are where the text path re-tokenises), at
temperature 0.7, 128 new tokens.

The packaged Gemma GGUF has no chat template; it gets Gemma 3's instruct template (TRL's copy).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/cross_tokenizer.py             # alignment only, ~1 min
    HF_HUB_OFFLINE=1 .venv/bin/python bench/cross_tokenizer.py --models    # + both real models, ~5 min
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import write_result  # bench/common.py
from trl.chat_template_utils import gemma3_chat_template

from selftaught.data.formats import tokenize_prompt
from selftaught.distill.student import TEACHER_ANSWERS
from selftaught.evaluate.per_byte import answer_nll, per_byte_nll
from selftaught.generation.base import SamplingParams
from selftaught.generation.engines import as_engine
from selftaught.generation.hf import generate_all
from selftaught.models import load_model, load_tokenizer
from selftaught.models.cross_tokenizer import CrossTokenizer, path_shares
from selftaught.models.embedded import embedded_teacher, packaged_gemma_gguf

RESULTS = Path(__file__).parent / "results" / "cross_tokenizer.json"


def answer_sets() -> dict[str, list[dict]]:
    rows = [json.loads(line) for line in TEACHER_ANSWERS.read_text().splitlines()]
    math = [r for r in rows if r["source"] == "math_train"]
    return {
        "math_32": math[:32],
        "math_160": math,
        "chat_85": [r for r in rows if r["source"] == "oasst_seed"],
    }


def student_completion(tokenizer, row: dict) -> list[int]:
    text = row["messages"][-1]["content"]
    return (
        tokenizer(text, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id] * row["ended_with_eos"]
    )


def whole_teacher_tokens(cross: CrossTokenizer, row: dict, completion: list[int], alignment) -> int:
    """Student tokens whose start and end are both teacher boundaries (an end token, paired with the
    teacher's, counts as one)."""
    ended = row["ended_with_eos"]
    text_ids = alignment.teacher_completion_ids[: len(alignment.teacher_completion_ids) - ended]
    boundaries = set(cross.teacher.spans(text_ids)[1]) | {0}
    starts, ends = cross.student.spans(completion[: len(completion) - ended])
    return ended + sum(
        start in boundaries and end in boundaries for start, end in zip(starts, ends, strict=True)
    )


def alignment_stats(cross: CrossTokenizer, rows: list[dict]) -> tuple[dict, list, list]:
    completions = [student_completion(cross.student.tokenizer, r) for r in rows]
    started = time.perf_counter()
    alignments = [cross.align(r["messages"][:-1], c) for r, c in zip(rows, completions, strict=True)]
    seconds = time.perf_counter() - started
    text_bytes = sum(len(r["messages"][-1]["content"].encode()) for r in rows)
    stats = path_shares(alignments, completions, cross.support)
    stats |= {
        "answers": len(rows),
        "bytes": text_bytes,
        "whole_teacher_tokens": sum(
            whole_teacher_tokens(cross, r, c, a)
            for r, c, a in zip(rows, completions, alignments, strict=True)
        )
        / stats["tokens"],
        "student_tokens_per_byte": sum(
            len(c) - r["ended_with_eos"] for c, r in zip(completions, rows, strict=True)
        )
        / text_bytes,
        "teacher_tokens_per_byte": sum(
            len(a.teacher_completion_ids) - r["ended_with_eos"] for a, r in zip(alignments, rows, strict=True)
        )
        / text_bytes,
        "align_ms_per_answer": 1000 * seconds / len(rows),
    }
    return stats, completions, alignments


def non_canonical(same: CrossTokenizer, prompts: list, sampled: list[list[int]]) -> dict:
    """Sampled completions against the tokenizer's own tokenisation of their text (the text path with one
    tokenizer on both sides): how many differ, the share of tokens that start off its boundaries, and the
    first differing tokens of a few."""
    alignments = [same.align(p, ids) for p, ids in zip(prompts, sampled, strict=True)]
    tokenizer = same.student.tokenizer
    differing = [
        (ids, a) for ids, a in zip(sampled, alignments, strict=True) if a.teacher_completion_ids != ids
    ]
    examples = []
    for ids, alignment in differing[:5]:
        at = next(
            k for k, (a, b) in enumerate(zip(ids, alignment.teacher_completion_ids, strict=False)) if a != b
        )
        examples.append(
            {
                "sampled": tokenizer.convert_ids_to_tokens(ids[at : at + 3]),
                "canonical": tokenizer.convert_ids_to_tokens(alignment.teacher_completion_ids[at : at + 3]),
            }
        )
    return {
        "completions": len(sampled),
        "non_canonical": len(differing),
        "tokens_off_canonical_boundaries": path_shares(alignments, sampled, same.support)["fallback"],
        "examples": examples,
    }


def model_stats(cross: CrossTokenizer, rows: list[dict], completions: list, alignments: list) -> dict:
    gemma = load_model(str(packaged_gemma_gguf()))
    smol = load_model(str(embedded_teacher()))
    teacher_tokenizer = cross.teacher.tokenizer
    scored = as_engine(gemma, teacher_tokenizer).completion_logprobs(
        [a.teacher_prompt_ids for a in alignments], [a.teacher_completion_ids for a in alignments]
    )
    gaps = [
        abs(a.spread(torch.tensor(lp, dtype=torch.float64)).sum().item() - sum(lp))
        for a, lp in zip(alignments, scored, strict=True)
    ]
    prompts = [r["messages"][:-1] for r in rows]
    answers = [r["messages"][-1]["content"] for r in rows]
    ended = [r["ended_with_eos"] for r in rows]
    nll = {
        name: per_byte_nll(
            answer_nll(as_engine(model, vocabulary.tokenizer), vocabulary, prompts, answers, ended), answers
        )
        for name, model, vocabulary in (
            ("gemma-3-270m", gemma, cross.teacher),
            ("SmolLM2-135M-Instruct", smol, cross.student),
        )
    }
    student_tokenizer = cross.student.tokenizer
    torch.manual_seed(0)
    sampled = generate_all(
        smol,
        student_tokenizer,
        [tokenize_prompt(student_tokenizer, p) for p in prompts],
        SamplingParams(max_new_tokens=128, temperature=0.7, top_p=1.0),
        desc=None,
    )
    return {
        "largest_sum_identity_gap": max(gaps),
        "nll_per_byte": nll,
        "sampled_student": non_canonical(
            CrossTokenizer.between(student_tokenizer, student_tokenizer), prompts, sampled
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", action="store_true", help="Also score with the real models (slower).")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    student = load_tokenizer(str(embedded_teacher()))
    teacher = load_tokenizer(str(packaged_gemma_gguf()))
    teacher.chat_template = gemma3_chat_template
    cross = CrossTokenizer.between(student, teacher)
    results = {"shared_strings": len(cross.support.student_ids), "sets": {}}
    for name, rows in answer_sets().items():
        stats, completions, alignments = alignment_stats(cross, rows)
        if args.models and name == "math_32":
            stats |= model_stats(cross, rows, completions, alignments)
        results["sets"][name] = stats
        print(name, json.dumps(stats, indent=1))
    write_result(args.output, results)


if __name__ == "__main__":
    main()
