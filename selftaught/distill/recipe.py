"""`selftaught distill`: on-policy distillation (GKD) from data to an evaluated, documented model.

The whole run, top to bottom:
  1. resolve the models (the embedded SmolLM2 pair by default) and choose how to align them: token ids
     when they share a tokenizer, byte offsets when they do not (`distill.cross_teacher`);
  2. read the data, turn rows into chat prompts (+ completions), hold out an evaluation split;
  3. evaluate the teacher once and the student before training, on the held-out prompts (across
     tokenizers: the per-byte NLL of the teacher's answers, `evaluate.cross_tokenizer`);
  4. train with `GKDistillTrainer` (resumable from the last checkpoint);
  5. save the student in Hugging Face format, evaluate it again, write metrics and the model card, and
     end with a warning when training made the student's answers degenerate.

`--teacher self` makes the teacher a frozen copy of the student's starting weights, which reads the
privileged `--teacher_context` that the student never sees (self-distillation, `distill.context`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from selftaught.data.folder_lock import writing_to
from selftaught.data.formats import Example, rename_columns, to_examples, tokenize_examples
from selftaught.data.loading import DataError, available_splits, load_rows
from selftaught.data.shards import StageMismatchError
from selftaught.distill.card import distillation_card
from selftaught.distill.config import SELF_TEACHER, DistillConfig
from selftaught.distill.context import add_teacher_context
from selftaught.distill.cross_teacher import PATHS, Alignment, choose_alignment, with_teacher_prompts
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.evaluate.cross_tokenizer import CrossTokenizerEvaluation
from selftaught.evaluate.distance import HeldOutEvaluation, HeldOutSettings, drift_warning
from selftaught.models import load_model, load_tokenizer, shared_vocab_size
from selftaught.models.check import check_model_flags
from selftaught.models.loading import resolve_dtype
from selftaught.report import write_report
from selftaught.scoring.degeneration import collapse_warning
from selftaught.training.callbacks import (
    MetricsFileCallback,
    quiet_tied_weights_on_resume,
    replace_progress_bar,
)
from selftaught.training.checkpoints import (
    checkpoint_folders,
    last_complete_checkpoint,
    newest_complete_checkpoint,
    stops_cleanly,
)
from selftaught.training.model_card import write_model_card
from selftaught.training.sft import save_final_model

BUILTIN_DATA = Path(__file__).resolve().parent.parent / "data" / "builtin" / "math_prompts"


def resolve_defaults(config: DistillConfig) -> DistillConfig:
    """Fill unset models and data with the embedded default (built, healed and cached on first use)."""
    if config.teacher is None or config.student is None:
        from selftaught.distill.student import healed_student
        from selftaught.models.embedded import embedded_teacher

        config.teacher = config.teacher or str(embedded_teacher())
        config.student = config.student or str(healed_student())
    config.data = config.data or str(BUILTIN_DATA)
    return config


def read_split(config: DistillConfig, split: str) -> list[Example]:
    """The split's examples, with the teacher's own prompts when it reads privileged context."""
    rows = load_rows(config.data, split, config.data_config)
    renames = {
        "prompt": config.prompt_column,
        "completion": config.completion_column,
        "answer": config.answer_column,
    }
    rows = rename_columns(rows, renames, config.data)
    examples = to_examples(rows, config.data)
    if config.teacher_context:
        examples = add_teacher_context(examples, rows, config.teacher_context, config.data)
    return examples


def load_examples(config: DistillConfig) -> tuple[list[Example], list[Example]]:
    """Training examples and at most `eval_size` held-out ones (the eval split, else held-out rows)."""
    train = read_split(config, config.data_split)
    if config.eval_size <= 0:
        return train, []
    if config.eval_split and config.eval_split in available_splits(config.data, config.data_config):
        return train, read_split(config, config.eval_split)[: config.eval_size]
    if len(train) <= config.eval_size:
        raise DataError(
            f"{config.data}: {len(train)} rows cannot spare {config.eval_size} for evaluation; add a "
            f"'{config.eval_split}' split, or lower --eval_size (0 skips evaluation)"
        )
    return train[: -config.eval_size], train[-config.eval_size :]


def check_completions(examples: list[Example], config: DistillConfig) -> None:
    """Prompt-only rows are fine only if no step ever trains on dataset completions."""
    missing = sum(e.completion is None for e in examples)
    if missing and config.lmbda < 1.0 and not config.seq_kd:
        raise DataError(
            f"{config.data}: {missing} of {len(examples)} rows have no completion, but lmbda={config.lmbda} "
            "trains some steps on the dataset's completions (a peer trained on a loss of exactly 0 here). "
            "Use --lmbda 1 (always on-policy), --seq_kd (teacher completions), or add completions."
        )


RESUME_FLAGS = ("--resume_from_checkpoint", "last")


def resume_checkpoint(config: DistillConfig) -> str | bool | None:
    """`--resume_from_checkpoint last` (or true): the newest complete checkpoint in output_dir, if any."""
    value = config.resume_from_checkpoint
    if value in ("last", "true", "True", True):
        return last_complete_checkpoint(config.output_dir)
    return value


def replace_earlier_run(out: Path) -> None:
    """A fresh run (no `--resume_from_checkpoint`) into a folder that holds another run's checkpoints.

    A finished run (it wrote eval_results.json) is replaced, and its checkpoints go first: left beside this
    run's, a later `--resume_from_checkpoint last` would pick the newest of them, the old run's. An
    unfinished one with a checkpoint to resume from is refused, as starting over would throw its steps
    away (one stopped before its first complete checkpoint has none: this run starts over beside it)."""
    if not (checkpoints := checkpoint_folders(out)):
        return
    if not (out / "eval_results.json").is_file():
        if earlier := newest_complete_checkpoint(out):
            raise StageMismatchError(
                f"{out.name} holds {earlier.name} of an unfinished run. To continue it, add "
                "--resume_from_checkpoint last; to start over, delete the folder or give another "
                "--output_dir."
            )
        return
    print(f"[distill] {out.name} holds a finished run: replacing it (its checkpoints are deleted first)")
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint)
    (out / "eval_results.json").unlink()  # present again only when this run finishes


def load_teacher(config: DistillConfig, student) -> object:
    """The frozen teacher: the named model, or for `--teacher self` a copy of the student's starting weights
    (taken before any LoRA adapter is added, so it is exactly the start)."""
    dtype = config.teacher_dtype_used
    if config.teacher == SELF_TEACHER:
        teacher = copy.deepcopy(student)
        return teacher.to(resolved) if isinstance(resolved := resolve_dtype(dtype), torch.dtype) else teacher
    return load_model(config.teacher, dtype, config.trust_remote_code)


def teacher_alignment(config: DistillConfig, tokenizer) -> Alignment:
    """How the teacher's targets reach the student's tokens (`distill.cross_teacher.choose_alignment`)."""
    if config.teacher == SELF_TEACHER:
        return Alignment(None, "token ids: the teacher is a frozen copy of the student, with its tokenizer")
    teacher_tokenizer = load_tokenizer(config.teacher, config.trust_remote_code)
    return choose_alignment(tokenizer, teacher_tokenizer, config.teacher_chat_template, config.seq_kd)


def cross_tokenizer_summary(alignment: Alignment, config: DistillConfig, path_tokens: dict[str, int]) -> dict:
    """What eval_results.json and the card say of a cross-tokenizer run: the alignment and why, the
    fallback loss, and the share of the completion tokens trained on that took each loss path."""
    total = sum(path_tokens.values())
    return {
        "alignment": alignment.reason,
        "fallback": config.cross_tokenizer_fallback,
        "completion_tokens": total,
        **{f"{name}_share": path_tokens[name] / max(total, 1) for name in PATHS},
    }


def prompts_trained_on(config: DistillConfig, global_step: int, available: int) -> int:
    """How many distinct training prompts the optimizer steps reached (each step takes a whole batch)."""
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size
    return min(available, global_step * per_step)


def run_distillation(config: DistillConfig) -> dict:
    """Train, save and evaluate; returns the evaluation results written to eval_results.json. One process
    writes an output folder at a time: a second is refused at once, before the default models build."""
    teacher = None if config.teacher == SELF_TEACHER else config.teacher  # `self`: the student's own start
    check_model_flags({"--student": config.student, "--teacher": teacher})  # before the defaults build
    with writing_to(config.output_dir, "selftaught distill", "another --output_dir"):
        return distill_into_output_dir(resolve_defaults(config))


def distill_into_output_dir(config: DistillConfig) -> dict:
    """`run_distillation`'s work, on resolved models, while it holds the output folder's lock."""
    out = Path(config.output_dir)
    train_examples, eval_examples = load_examples(config)  # data first: it fails fast and cheap
    resume = resume_checkpoint(config)
    if not resume:
        with config.main_process_first(local=False):  # the others then find nothing left to replace
            replace_earlier_run(out)
    check_completions(train_examples, config)
    tokenizer = load_tokenizer(config.student, config.trust_remote_code)
    alignment = teacher_alignment(config, tokenizer)
    print(f"[distill] alignment: {alignment.reason}")
    cross = alignment.cross

    student = load_model(config.student, config.student_dtype, config.trust_remote_code)
    teacher = load_teacher(config, student)
    if cross is not None:  # its greedy held-out answers end where its chat template ends a turn
        teacher.generation_config.eos_token_id = [
            cross.teacher.tokenizer.eos_token_id,
            cross.teacher.end_of_turn,
        ]
    vocab_size = shared_vocab_size(tokenizer, student, *([] if cross else [teacher]))
    if config.use_peft:
        student = get_peft_model(
            student,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_target_modules.split(",")
                if "," in config.lora_target_modules
                else config.lora_target_modules,
                task_type="CAUSAL_LM",
            ),
        )

    lengths = (config.max_prompt_length, config.max_new_tokens)

    def dataset(examples: list[Example]):
        data = tokenize_examples(tokenizer, examples, *lengths)
        return with_teacher_prompts(data, examples, cross, config.max_prompt_length) if cross else data

    trainer = GKDistillTrainer(
        model=student,
        teacher=teacher,
        args=config,
        processing_class=tokenizer,
        train_dataset=dataset(train_examples),
        eval_dataset=dataset(eval_examples) if eval_examples and config.eval_strategy != "no" else None,
        callbacks=[MetricsFileCallback(out / "metrics.jsonl")],
        cross_tokenizer=cross,
        cross_tokenizer_fallback=config.cross_tokenizer_fallback,
    )
    replace_progress_bar(trainer)
    quiet_tied_weights_on_resume(trainer)
    main = trainer.accelerator.is_main_process

    results: dict = {}
    evaluation = None
    if main and not resume:  # a fresh run must not reuse answers saved by an earlier one
        shutil.rmtree(out / "evaluation", ignore_errors=True)
    if eval_examples and main:
        unwrapped_teacher = trainer.accelerator.unwrap_model(trainer.teacher)
        settings = HeldOutSettings(
            config.eval_max_new_tokens,
            config.per_device_eval_batch_size,
            vocab_size,
            config.max_prompt_length,
        )
        if cross is not None:
            evaluation = CrossTokenizerEvaluation(
                unwrapped_teacher, cross, eval_examples, out / "evaluation", settings
            )
        else:
            evaluation = HeldOutEvaluation(
                unwrapped_teacher, tokenizer, eval_examples, out / "evaluation", settings
            )
        results["teacher"] = evaluation.metrics(evaluation.teacher, "teacher")
        results["student_before"] = evaluation.metrics(trainer.model, "student_before")
    trainer.accelerator.wait_for_everyone()

    with stops_cleanly(trainer, RESUME_FLAGS):
        train_output = trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, out, config.use_peft)

    if main:
        if evaluation is not None:
            evaluation.path("student_after").unlink(missing_ok=True)
            results["student_after"] = evaluation.metrics(trainer.model, "student_after")
            results["comparisons"] = evaluation.changes("student_after", "student_before")
            before, after = results["student_before"], results["student_after"]
            if warnings := [w for w in (collapse_warning(before, after), drift_warning(before, after)) if w]:
                results["warning"] = " ".join(warnings)
        results["train"] = {k: v for k, v in train_output.metrics.items() if isinstance(v, (int, float))}
        if cross is not None:
            results["cross_tokenizer"] = cross_tokenizer_summary(alignment, config, trainer.path_tokens)
        (out / "eval_results.json").write_text(json.dumps(results, indent=2))
        trained = prompts_trained_on(config, train_output.global_step, len(train_examples))
        card = distillation_card(config, results, (trained, len(train_examples)), len(eval_examples))
        write_model_card(out, card)
        write_report(out)
    trainer.accelerator.wait_for_everyone()
    return results
