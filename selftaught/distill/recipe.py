"""`selftaught distill`: on-policy distillation (GKD) from data to an evaluated, documented model.

The whole run, top to bottom (`distill_into_output_dir`, one function per step):
  1. resolve the models and data (the embedded SmolLM2 pair and the shipped math prompts by default,
     `resolve_defaults`), read the data, turn rows into chat prompts (+ completions) and hold out an
     evaluation split (`load_examples`: before any model loads, as it fails fast and cheap);
  2. load the tokenizer, the student (LoRA adapters with --use_peft) and the teacher (`load_models`), aligned
     by token ids when they share a tokenizer, by byte offsets when they do not (`distill.cross_teacher`);
  3. evaluate the teacher once and the student before training, on the held-out prompts
     (`evaluate_before_training`; across tokenizers the per-byte NLL of the teacher's answers,
     `evaluate.cross_tokenizer`);
  4. train with `GKDistillTrainer` (`build_trainer`; resumable from the last checkpoint);
  5. save the student in Hugging Face format, evaluate it again (`evaluate_after_training`, which ends with
     a warning when training made the student's answers degenerate or moved it away from its teacher), and
     write the results, the model card and the report (`write_outputs`). The results are a
     `DistillResults` (`distill.results`).

`--teacher self` makes the teacher a frozen copy of the student's starting weights, which reads the
privileged `--teacher_context` that the student never sees (self-distillation, `distill.context`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_utils import TrainOutput

from selftaught.arguments import ArgumentError
from selftaught.data.folder_lock import writing_to
from selftaught.data.formats import Example, rename_columns, to_examples, tokenize_examples, tokenize_prompt
from selftaught.data.loading import DataError, available_splits, load_rows
from selftaught.data.shards import StageMismatchError
from selftaught.distill.card import distillation_card
from selftaught.distill.config import SELF_TEACHER, DistillConfig
from selftaught.distill.context import add_teacher_context
from selftaught.distill.cross_teacher import (
    PATHS,
    Alignment,
    CrossTokenizerTeacher,
    choose_alignment,
    with_teacher_prompts,
)
from selftaught.distill.results import DistillResults
from selftaught.distill.teacher_cache import (
    CachedTeacher,
    TeacherCache,
    TeacherCacheError,
    held_out_teacher,
    run_settings,
)
from selftaught.distill.teachers import InProcessTeacher, ServedTeacher, Teacher, TeacherUnavailableError
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.evaluate.cross_tokenizer import CrossTokenizerEvaluation
from selftaught.evaluate.distance import (
    SPARSE_DIVERGENCES,
    HeldOutEvaluation,
    HeldOutSettings,
    drift_warning,
    held_out_prompt_ids,
)
from selftaught.models import (
    TokenizerMismatchError,
    check_same_vocabulary,
    load_model,
    load_tokenizer,
    shared_vocab_size,
)
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
    close_progress_bars,
    last_complete_checkpoint,
    newest_complete_checkpoint,
    stops_cleanly,
)
from selftaught.training.model_card import write_model_card
from selftaught.training.sft import save_final_model

CACHE_COMMAND = "`selftaught distill cache-teacher` (a rerun with the flags that made the cache resumes it)"
BUILTIN_DATA = Path(__file__).resolve().parent.parent / "data" / "builtin" / "math_prompts"


def resolve_defaults(config: DistillConfig) -> DistillConfig:
    """Fill unset models and data with the embedded default (built, healed and cached on first use)."""
    elsewhere = config.teacher_url or config.teacher_cache  # a served or cached teacher: no weights here
    if (config.teacher is None and not elsewhere) or config.student is None:
        from selftaught.distill.student import healed_student
        from selftaught.models.embedded import embedded_teacher

        if not elsewhere:  # (--teacher with one of them only names it)
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


def load_teacher(config: DistillConfig, student: PreTrainedModel) -> PreTrainedModel:
    """The frozen teacher model: the named one, or for `--teacher self` a copy of the student's starting
    weights (taken before any LoRA adapter is added, so it is exactly the start)."""
    dtype = config.teacher_dtype_used
    if config.teacher == SELF_TEACHER:
        teacher = copy.deepcopy(student)
        return teacher.to(resolved) if isinstance(resolved := resolve_dtype(dtype), torch.dtype) else teacher
    return load_model(config.teacher, dtype, config.trust_remote_code)


def teacher_source(
    config: DistillConfig, student: PreTrainedModel, tokenizer, probe: Example, alignment: Alignment
) -> Teacher:
    """Where the teacher's scores come from: the server at --teacher_url (checked on `probe`'s prompt before
    any training: its prompt log-probabilities, K of them, and its tokenizer), else `load_teacher`'s model,
    as a `CrossTokenizerTeacher` when its tokenizer is another (`alignment.cross`)."""
    if config.teacher_url:
        served = ServedTeacher(config.teacher_url, config.teacher_top_k_used, tokenizer)
        ids = tokenize_prompt(tokenizer, probe.teacher_prompt or probe.prompt)[-config.max_prompt_length :]
        served.check(ids[:1], ids[1:])
        return served
    model = load_teacher(config, student)
    if (cross := alignment.cross) is not None:
        # its greedy held-out answers end where its chat template ends a turn
        model.generation_config.eos_token_id = [
            cross.teacher.tokenizer.eos_token_id,
            cross.teacher.end_of_turn,
        ]
        teacher_vocab = shared_vocab_size(cross.teacher.tokenizer, model)
        return CrossTokenizerTeacher(
            model,
            cross,
            teacher_vocab,
            config.cross_tokenizer_fallback,
            config.loss,
            config.per_device_eval_batch_size,
            alignment.reason,
        )
    vocab_size = shared_vocab_size(tokenizer, student, model)
    return InProcessTeacher(model, tokenizer, vocab_size, config.per_device_eval_batch_size)


def cached_teacher(
    config: DistillConfig, tokenizer: PreTrainedTokenizerBase, eval_examples: list[Example]
) -> CachedTeacher:
    """The teacher read from --teacher_cache, once the cache is checked against this run: made with this
    tokenizer and chat template, on this data split, with these lengths and this --teacher_context, and
    holding the teacher's answers to this run's held-out prompts (its `held_out`)."""
    cache = TeacherCache(config.teacher_cache, CACHE_COMMAND, vocab_size=len(tokenizer))
    split = read_split(config, config.data_split)  # the whole split: the cache covers held-out rows too
    lengths = (config.max_prompt_length, config.max_new_tokens)
    cache.check(run_settings(tokenizer, split, config.data_split, *lengths, config.teacher_context))
    if config.seq_kd and not cache.samples:
        raise TeacherCacheError(
            f"--seq_kd trains on the teacher's samples, and --teacher_cache {config.teacher_cache} holds "
            f"none: make it with --samples 1 or more ({CACHE_COMMAND})"
        )
    eos_ids = [tokenizer.eos_token_id]
    held_out = None
    if eval_examples:
        prompts = [
            held_out_prompt_ids(tokenizer, e.teacher_prompt or e.prompt, config.max_prompt_length)
            for e in eval_examples
        ]
        held_out = held_out_teacher(
            config.teacher_cache, CACHE_COMMAND, len(tokenizer), eos_ids, prompts, config.eval_max_new_tokens
        )
    return CachedTeacher(cache, eos_ids, held_out)


def prompts_trained_on(config: DistillConfig, global_step: int, available: int) -> int:
    """How many distinct training prompts the optimizer steps reached (each step takes a whole batch)."""
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size
    return min(available, global_step * per_step)


def run_distillation(config: DistillConfig) -> DistillResults:
    """Train, save and evaluate; returns the results written to eval_results.json. One process writes an
    output folder at a time: a second is refused at once, before the default models build."""
    teacher = None if config.teacher == SELF_TEACHER else config.teacher  # `self`: the student's own start
    check_model_flags({"--student": config.student, "--teacher": teacher})  # before the defaults build
    with writing_to(config.output_dir, "selftaught distill", "another --output_dir"):
        return distill_into_output_dir(resolve_defaults(config))


def distill_into_output_dir(config: DistillConfig) -> DistillResults:
    """`run_distillation`'s steps (the module docstring's), on resolved models, while it holds the output
    folder's lock."""
    train_examples, eval_examples = load_examples(config)  # data first: it fails fast and cheap
    check_completions(train_examples, config)
    resume = prepare_output_dir(config)
    tokenizer, student, teacher = load_models(config, train_examples[0], eval_examples)
    trainer = build_trainer(config, tokenizer, student, teacher, train_examples, eval_examples)
    evaluation, results = evaluate_before_training(config, trainer, teacher, eval_examples, resume)
    train_output = train(trainer, resume)
    save_final_model(trainer, Path(config.output_dir), config.use_peft)
    if trainer.accelerator.is_main_process:
        if evaluation is not None:
            evaluate_after_training(trainer, evaluation, results)
        results.train = {k: v for k, v in train_output.metrics.items() if isinstance(v, (int, float))}
        if isinstance(trainer.teacher, CrossTokenizerTeacher):
            results.cross_tokenizer = cross_tokenizer_summary(config, trainer)
        trained = prompts_trained_on(config, train_output.global_step, len(train_examples))
        write_outputs(config, results, (trained, len(train_examples)), len(eval_examples))
    trainer.accelerator.wait_for_everyone()
    return results


def train(trainer: GKDistillTrainer, resume: str | bool | None) -> TrainOutput:
    """`trainer.train`, stopped in one line, naming the newest complete checkpoint, by Ctrl-C or by a served
    teacher that stays down after the client's retries (its checkpoints are whole: resume once it is back)."""
    with stops_cleanly(trainer, RESUME_FLAGS):
        try:
            return trainer.train(resume_from_checkpoint=resume)
        except TeacherUnavailableError as err:
            close_progress_bars(trainer)
            newest = newest_complete_checkpoint(trainer.args.output_dir)
            where = f"{newest.name} is the newest complete checkpoint" if newest else "no checkpoint yet"
            raise TeacherUnavailableError(
                f"{err}. Training stopped ({where}); once the server answers again, rerun with "
                f"{' '.join(RESUME_FLAGS)}"
            ) from None


def prepare_output_dir(config: DistillConfig) -> str | bool | None:
    """The checkpoint to resume from; a fresh run first clears a finished earlier run out of the folder."""
    resume = resume_checkpoint(config)
    if not resume:
        with config.main_process_first(local=False):  # the others then find nothing left to replace
            replace_earlier_run(Path(config.output_dir))
    return resume


def load_models(
    config: DistillConfig, probe: Example, eval_examples: list[Example]
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, Teacher]:
    """The run's tokenizer (the student's), the student (with LoRA adapters under --use_peft) and the frozen
    teacher (`teacher_source`, or `cached_teacher` for the held-out `eval_examples` too), aligned as
    `teacher_alignment` chose and said."""
    tokenizer = load_tokenizer(config.student, config.trust_remote_code)
    alignment = teacher_alignment(config, tokenizer)
    print(f"[distill] alignment: {alignment.reason}")
    # checked before any weights load
    cached = cached_teacher(config, tokenizer, eval_examples) if config.teacher_cache else None
    student = load_model(config.student, config.student_dtype, config.trust_remote_code)
    # before the adapters: `self` copies the start
    teacher = cached or teacher_source(config, student, tokenizer, probe, alignment)
    return tokenizer, with_lora(config, student) if config.use_peft else student, teacher


def teacher_alignment(config: DistillConfig, tokenizer: PreTrainedTokenizerBase) -> Alignment:
    """How the teacher's targets reach the student's tokens (`distill.cross_teacher.choose_alignment`). A
    served teacher must share the student's tokenizer: its server is sent the student's token ids and
    returns its top-K over its own vocabulary, which byte alignment cannot map (it needs the teacher's
    full distribution and its scoring of re-tokenised text), so one named by --teacher with another
    tokenizer is refused here, before any weights load."""
    if config.teacher in (SELF_TEACHER, None):
        return Alignment(None, "token ids: the teacher shares the student's tokenizer")
    teacher_tokenizer = load_tokenizer(config.teacher, config.trust_remote_code)
    if config.teacher_url:
        try:
            check_same_vocabulary(tokenizer, teacher_tokenizer)
        except TokenizerMismatchError:
            raise ArgumentError(
                f"--teacher_url: the --teacher's tokenizer ({len(teacher_tokenizer)} tokens) differs from "
                f"the student's ({len(tokenizer)}), and a served teacher must share it (the server is sent "
                "the student's token ids and answers over its own vocabulary); drop --teacher_url to load "
                "the teacher in this process, where a teacher with another tokenizer is aligned by bytes"
            ) from None
    return choose_alignment(tokenizer, teacher_tokenizer, config.teacher_chat_template, config.seq_kd)


def cross_tokenizer_summary(config: DistillConfig, trainer: GKDistillTrainer) -> dict:
    """What eval_results.json and the card say of a cross-tokenizer run: the alignment and why, the
    fallback loss, the share of the completion tokens trained on that took each loss path, and how many
    completions were not the student tokenizer's own tokenisation of their text (the teacher read that)."""
    path_tokens = trainer.path_tokens
    total = sum(path_tokens.values())
    return {
        "alignment": trainer.teacher.alignment,
        "fallback": config.cross_tokenizer_fallback,
        "completion_tokens": total,
        **{f"{name}_share": path_tokens[name] / max(total, 1) for name in PATHS},
        "completions": trainer.completion_counts["completions"],
        "non_canonical_completions": trainer.completion_counts["non_canonical"],
    }


def with_lora(config: DistillConfig, student: PreTrainedModel) -> PreTrainedModel:
    """The student wrapped with fresh LoRA adapters (peft) on --lora_target_modules."""
    modules = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules.split(",") if "," in modules else modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(student, lora)


def build_trainer(
    config: DistillConfig,
    tokenizer: PreTrainedTokenizerBase,
    student: PreTrainedModel,
    teacher: Teacher,
    train_examples: list[Example],
    eval_examples: list[Example],
) -> GKDistillTrainer:
    lengths = (config.max_prompt_length, config.max_new_tokens)

    def dataset(examples: list[Example]):
        data = tokenize_examples(tokenizer, examples, *lengths)
        if isinstance(teacher, CrossTokenizerTeacher):  # the teacher's prompts in its own tokens
            return with_teacher_prompts(data, examples, teacher.cross, config.max_prompt_length)
        return data

    trainer = GKDistillTrainer(
        model=student,
        teacher=teacher,
        args=config,
        processing_class=tokenizer,
        train_dataset=dataset(train_examples),
        eval_dataset=dataset(eval_examples) if eval_examples and config.eval_strategy != "no" else None,
        callbacks=[MetricsFileCallback(Path(config.output_dir) / "metrics.jsonl")],
    )
    replace_progress_bar(trainer)
    quiet_tied_weights_on_resume(trainer)
    return trainer


def evaluate_before_training(
    config: DistillConfig,
    trainer: GKDistillTrainer,
    teacher: Teacher,
    eval_examples: list[Example],
    resume: str | bool | None,
) -> tuple[HeldOutEvaluation | None, DistillResults]:
    """The teacher and the untrained student on the held-out prompts (main process only; None and empty
    results without held-out examples). A resumed run reads the answers saved before it stopped."""
    results = DistillResults()
    evaluation = None
    folder = Path(config.output_dir) / "evaluation"
    main = trainer.accelerator.is_main_process
    if main and not resume:  # a fresh run must not reuse answers saved by an earlier one
        shutil.rmtree(folder, ignore_errors=True)
    if eval_examples and main:
        settings = HeldOutSettings(
            config.eval_max_new_tokens,
            config.per_device_eval_batch_size,
            trainer.vocab_size,
            config.max_prompt_length,
        )
        if isinstance(teacher, CachedTeacher):  # its answers to the held-out prompts, read from the cache
            teacher = teacher.held_out
        if isinstance(teacher, (ServedTeacher, CachedTeacher)):
            where = "served" if isinstance(teacher, ServedTeacher) else "cached"
            print(
                f"[distill] held-out distances to the {where} teacher on its top-{teacher.top_k} log-probs "
                f"plus a tail bin: {', '.join(SPARSE_DIVERGENCES)} are lower bounds of the full-vocabulary "
                "forward_kl, reverse_kl and jsd; nll and top1_agreement are exact"
            )
        if isinstance(teacher, CrossTokenizerTeacher):
            evaluation = CrossTokenizerEvaluation(
                teacher.model, teacher.cross, eval_examples, folder, settings
            )
        else:
            evaluation = HeldOutEvaluation(teacher, trainer.processing_class, eval_examples, folder, settings)
        results.teacher = evaluation.teacher_metrics()
        results.student_before = evaluation.metrics(trainer.model, "student_before")
    trainer.accelerator.wait_for_everyone()
    return evaluation, results


def evaluate_after_training(
    trainer: GKDistillTrainer, evaluation: HeldOutEvaluation, results: DistillResults
) -> None:
    """The trained student's metrics, its changes against its start, and the warning of a student whose
    answers degenerated or that moved away from its teacher, into `results`."""
    evaluation.path("student_after").unlink(missing_ok=True)
    results.student_after = evaluation.metrics(trainer.model, "student_after")
    results.comparisons = evaluation.changes("student_after", "student_before")
    before, after = results.student_before, results.student_after
    if warnings := [w for w in (collapse_warning(before, after), drift_warning(before, after)) if w]:
        results.warning = " ".join(warnings)


def write_outputs(
    config: DistillConfig, results: DistillResults, prompts: tuple[int, int], n_eval: int
) -> None:
    """eval_results.json, the model card and the report. `prompts`: (training prompts the steps reached,
    training prompts available)."""
    out = Path(config.output_dir)
    results.write(out / "eval_results.json")
    write_model_card(out, distillation_card(config, results, prompts, n_eval))
    write_report(out)
