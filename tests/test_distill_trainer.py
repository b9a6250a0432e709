"""`GKDistillTrainer` on tiny real models: one test (or a few) per bug that peers shipped.

Each test pins one item of the "Mistakes peers made" list in docs/METHODS.md (on-policy distillation)
with real, randomly initialised Llama models on SmolLM2's real tokenizer (pad == eos), and checks the
trainer's numbers against a computation written here from the definition: each row is run through the
models on its own, unpadded, and the divergence is computed in float64 from softmax probabilities. So a
bug in padding, position ids, logit slicing, normalisation or the divergence itself makes a test fail.

The student has 49,152 embedding rows (the tokenizer's size) and the teacher 49,280 (128 padded rows),
the situation of the seed's Qwen2-0.5B / Qwen2-7B pair, so every test also runs with mismatched sizes.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from torch.utils.data import SequentialSampler
from transformers import PreTrainedModel, TrainerCallback

from selftaught.data.formats import Example, tokenize_completion, tokenize_examples, tokenize_prompt
from selftaught.data.loading import DataError
from selftaught.distill.config import DistillConfig
from selftaught.distill.context import with_context
from selftaught.distill.recipe import check_completions
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.generation.base import left_pad
from selftaught.generation.hf import eos_ids_of, generate_completions, mask_through_first_eos
from selftaught.models import (
    TokenizerMismatchError,
    check_same_vocabulary,
    load_model,
    load_tokenizer,
    shared_vocab_size,
)
from selftaught.scoring.logits import completion_logits

STUDENT_ROWS, TEACHER_ROWS = 49152, 49280

# Four prompts of different lengths with completions of clearly different lengths (2 to 15 tokens, each
# ending in <|im_end|>): per-micro-batch normalisation gives a different loss from per-step normalisation.
QA = [
    ("What is 2 + 3?", "5"),
    ("Add four and one, please.", "The answer is 5."),
    ("What is 7 + 3? Think first.", "Seven plus three equals ten, so the answer is 10."),
    ("Compute 6 + 2.", "6 + 2 = 8."),
]


def examples(with_completions: bool = True) -> list[Example]:
    return [
        Example(prompt=[{"role": "user", "content": q}], completion=a if with_completions else None)
        for q, a in QA
    ]


def dataset(tokenizer, with_completions: bool = True):
    return tokenize_examples(tokenizer, examples(with_completions), 64, 16)


def make_trainer(
    tmp_path: Path,
    student_dir: Path,
    teacher_dir: Path,
    tokenizer,
    train_dataset,
    callbacks: list | None = None,
    teacher: PreTrainedModel | None = None,
    **overrides,
) -> GKDistillTrainer:
    """A trainer on freshly loaded tiny models (or the given teacher) that reads the dataset in order."""
    settings = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_new_tokens=8,
        use_cpu=True,
        disable_tqdm=True,
        lmbda=0.0,
        beta=0.5,
        seed=0,
    )
    settings.update(overrides)
    trainer = GKDistillTrainer(
        model=load_model(str(student_dir)),
        teacher=load_model(str(teacher_dir)) if teacher is None else teacher,
        args=DistillConfig(**settings),
        processing_class=tokenizer,
        train_dataset=train_dataset,
        callbacks=callbacks,
    )
    trainer._get_train_sampler = lambda *args, **kwargs: SequentialSampler(train_dataset)
    return trainer


def on_policy_trainer(tmp_path, student_dir, teacher_dir, tokenizer, **overrides) -> GKDistillTrainer:
    """`make_trainer` on prompts alone, every step on-policy (lmbda 1): the student samples completions."""
    prompts = dataset(tokenizer, with_completions=False)
    return make_trainer(tmp_path, student_dir, teacher_dir, tokenizer, prompts, lmbda=1.0, **overrides)


class Recorder:
    """Wraps a trainer's `get_batch_samples` and `compute_loss` to keep what they returned."""

    def __init__(self, trainer: GKDistillTrainer) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.token_counts: list[int] = []
        self.losses: list[float] = []
        get_batch_samples, compute_loss = trainer.get_batch_samples, trainer.compute_loss

        def recording_get_batch_samples(*args, **kwargs):
            batches, tokens = get_batch_samples(*args, **kwargs)
            self.batches.extend(batches)
            if tokens is not None:
                self.token_counts.append(int(tokens))
            return batches, tokens

        def recording_compute_loss(*args, **kwargs):
            loss = compute_loss(*args, **kwargs)
            self.losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

        trainer.get_batch_samples = recording_get_batch_samples
        trainer.compute_loss = recording_compute_loss


class GradientRecorder(TrainerCallback):
    """The student's gradients just before the optimizer uses them (after any clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------------------------------
# Independent reference: unpadded rows, float64 probabilities, divergences from their definition
# --------------------------------------------------------------------------------------------------------


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) = sum_v p_v (log p_v - log q_v) over the last axis."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reference_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-position generalized JSD (beta = 0: KL(teacher || student), beta = 1: KL(student || teacher))."""
    log_s = torch.log_softmax(student_logits.double(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.double(), dim=-1)
    if beta == 0.0:
        return kl(log_t, log_s)
    if beta == 1.0:
        return kl(log_s, log_t)
    log_m = torch.log(beta * log_t.exp() + (1.0 - beta) * log_s.exp())
    return beta * kl(log_t, log_m) + (1.0 - beta) * kl(log_s, log_m)


def rows_of(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each row of a completed batch, without any padding."""
    completion_mask = batch["completion_mask"].bool()
    prompt_width = batch["input_ids"].shape[1] - completion_mask.shape[1]
    prompt_mask = batch["attention_mask"][:, :prompt_width].bool()
    return [
        (
            batch["input_ids"][row, :prompt_width][prompt_mask[row]].tolist(),
            batch["input_ids"][row, prompt_width:][completion_mask[row]].tolist(),
        )
        for row in range(completion_mask.shape[0])
    ]


def row_logits(student, teacher, rows: list[tuple[list[int], list[int]]]):
    """Each row run alone, unpadded: (student, teacher) logits over the tokenizer's 49,152 ids that predict
    its completion tokens (position len(prompt) - 1 + k predicts completion token k)."""
    result = []
    for prompt, completion in rows:
        ids = torch.tensor([prompt + completion])
        student_logits = student(input_ids=ids).logits[0, len(prompt) - 1 : -1, :STUDENT_ROWS]
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids).logits[0, len(prompt) - 1 : -1, :STUDENT_ROWS]
        result.append((student_logits, teacher_logits))
    return result


def reference_losses(student_dir: Path, teacher_dir: Path, rows, betas: list[float]) -> list[float]:
    """For each beta: sum of per-token divergences over the step's completion tokens / number of them."""
    with torch.no_grad():
        logits = row_logits(load_model(str(student_dir)), load_model(str(teacher_dir)), rows)
    tokens = sum(s.shape[0] for s, _ in logits)
    return [float(sum(reference_divergence(s, t, beta).sum() for s, t in logits) / tokens) for beta in betas]


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[name].flatten().double() for name in sorted(grads)])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def data_rows(tokenizer) -> list[tuple[list[int], list[int]]]:
    return [(r["prompt_ids"], r["completion_ids"]) for r in dataset(tokenizer)]


# --------------------------------------------------------------------------------------------------------
# 1. EOS kept when pad == eos
# --------------------------------------------------------------------------------------------------------


def test_tokenize_completion_ends_with_one_eos(tokenizer):
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos  # the situation in which peers dropped the EOS
    for example in examples():
        prompt_ids = tokenize_prompt(tokenizer, example.prompt)
        ids = tokenize_completion(tokenizer, example.prompt, example.completion, prompt_ids)
        assert ids[-1] == eos
        assert ids.count(eos) == 1
        assert tokenizer.decode(ids[:-1]).strip() == example.completion


def test_mask_through_first_eos_keeps_the_eos_when_pad_is_eos(tokenizer):
    eos = pad = tokenizer.eos_token_id
    completions = torch.tensor(
        [
            [11, 12, eos, pad, pad],  # stopped, then padded with the same id
            [eos, pad, pad, pad, pad],  # stopped at once
            [11, 12, 13, 14, 15],  # never stopped
        ]
    )
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(mask_through_first_eos(completions, [eos]), expected)


def test_eos_of_data_completions_is_trained_on(tmp_path, tiny_student, tiny_teacher, tokenizer):
    train_dataset = dataset(tokenizer)
    expected_tokens = sum(len(ids) for ids in train_dataset["completion_ids"])  # EOS included
    trainer = make_trainer(
        tmp_path, tiny_student, tiny_teacher, tokenizer, train_dataset, gradient_accumulation_steps=2
    )
    recorder = Recorder(trainer)
    trainer.train()

    assert recorder.token_counts == [expected_tokens]
    assert trainer.state.log_history[0]["completion_tokens"] == expected_tokens
    eos = tokenizer.eos_token_id
    for batch in recorder.batches:
        for _, completion in rows_of(batch):
            assert completion[-1] == eos and completion.count(eos) == 1
    # The scored positions include every EOS: the per-token losses number exactly the tokens counted.
    del trainer.compute_loss  # the trainer's own method again, not the recording wrapper
    scored = sum(
        trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]["per_token"].numel()
        for batch in recorder.batches
    )
    assert scored == expected_tokens


# --------------------------------------------------------------------------------------------------------
# 2. Loss normalised over the whole optimizer step
# --------------------------------------------------------------------------------------------------------


def test_gradient_accumulation_matches_one_big_batch(tmp_path, sharp_student, sharp_teacher, tokenizer):
    beta = 0.3  # not 0.5, where the JSD is symmetric and a teacher/student swap would go unseen
    rows = data_rows(tokenizer)
    lengths = [len(c) for _, c in rows]
    assert len(set(lengths)) == len(lengths)

    # Reference gradients, from the unpadded rows: normalised by the whole step's token count (right),
    # and by each micro-batch of two rows, averaged over the two (the peers' bug).
    student, teacher = load_model(str(sharp_student)), load_model(str(sharp_teacher))
    names, params = zip(*student.named_parameters(), strict=True)
    per_row = [reference_divergence(s, t, beta) for s, t in row_logits(student, teacher, rows)]
    step_loss = sum(d.sum() for d in per_row) / sum(lengths)
    micro_loss = sum(
        sum(d.sum() for d in half) / sum(d.numel() for d in half) for half in (per_row[:2], per_row[2:])
    )
    expected = flat(dict(zip(names, torch.autograd.grad(step_loss, params, retain_graph=True), strict=True)))
    per_micro_batch = flat(dict(zip(names, torch.autograd.grad(micro_loss / 2, params), strict=True)))
    assert relative_error(per_micro_batch, expected) > 0.1  # the two normalisations really differ here

    for batch_size, accumulation in [(2, 2), (4, 1)]:
        gradients = GradientRecorder()
        trainer = make_trainer(
            tmp_path / f"b{batch_size}",
            sharp_student,
            sharp_teacher,
            tokenizer,
            dataset(tokenizer),
            callbacks=[gradients],
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0,  # no clipping: it would shrink a wrong gradient towards the right one
            beta=beta,
        )
        recorder = Recorder(trainer)
        trainer.train()
        assert len(recorder.losses) == accumulation
        assert recorder.token_counts == [sum(lengths)]
        # The step's loss is sum(per-token JSD) / (completion tokens in the whole step) ...
        assert sum(recorder.losses) == pytest.approx(float(step_loss), rel=1e-4)
        # ... and so is its gradient, however the step is cut into micro-batches.
        assert set(gradients.grads) == set(names)
        assert relative_error(flat(gradients.grads), expected) < 1e-3  # float32 vs float64: ~2e-5


# --------------------------------------------------------------------------------------------------------
# 3. Teacher frozen
# --------------------------------------------------------------------------------------------------------


def test_teacher_stays_frozen_in_eval_mode(tmp_path, tiny_student, tiny_teacher, tokenizer):
    arriving = load_model(str(tiny_teacher)).train()  # as a teacher that was itself just trained would come
    trainer = make_trainer(
        tmp_path,
        tiny_student,
        tiny_teacher,
        tokenizer,
        dataset(tokenizer),
        teacher=arriving,
        learning_rate=1e-2,
    )
    teacher = trainer.accelerator.unwrap_model(trainer.teacher.model)
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()

    assert teacher.training is False and trainer.teacher.model.training is False
    for name, param in teacher.named_parameters():
        assert param.requires_grad is False, name
        assert param.grad is None, name
        assert torch.equal(param, teacher_before[name]), name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    # The step did happen: the student moved.
    assert any(not torch.equal(p, student_before[n]) for n, p in trainer.model.named_parameters())


# --------------------------------------------------------------------------------------------------------
# 4. Sampling keeps the KV cache under gradient checkpointing
# --------------------------------------------------------------------------------------------------------


def test_sampling_uses_the_kv_cache_with_gradient_checkpointing(
    tmp_path, tiny_student, tiny_teacher, tokenizer
):
    trainer = on_policy_trainer(
        tmp_path,
        tiny_student,
        tiny_teacher,
        tokenizer,
        max_steps=2,  # the second step samples after a training step has put the model in training mode
        gradient_checkpointing=True,
    )
    calls: list[tuple[int, int]] = []  # (tokens fed, tokens in the cache afterwards) per sampling forward

    def record(module, args, kwargs, output):
        if torch.is_grad_enabled():  # the training forward, not sampling
            return
        cache = output.past_key_values
        calls.append((kwargs["input_ids"].shape[1], 0 if cache is None else cache.get_seq_length()))

    trainer.model.register_forward_hook(record, with_kwargs=True)
    recorder = Recorder(trainer)
    trainer.train()

    assert trainer.model.is_gradient_checkpointing
    prompt_widths = [b["input_ids"].shape[1] - b["completion_mask"].shape[1] for b in recorder.batches]
    assert len(prompt_widths) == 2
    # Each sampling pass: one prefill of the prompt, then one token per forward on top of the cache (the
    # random student never samples EOS, so every pass runs to max_new_tokens).
    expected = []
    for width in prompt_widths:
        expected += [(width, width)] + [(1, width + k) for k in range(1, trainer.args.max_new_tokens)]
    assert calls == expected


def checkpointing_settings(model: torch.nn.Module) -> dict[str, tuple[str, dict]]:
    """For each checkpointed module: the checkpoint function's name and the keywords it is called with."""
    return {
        name: (getattr(f.func, "__name__", ""), dict(f.keywords))
        for name, module in model.named_modules()
        if getattr(module, "gradient_checkpointing", False)
        and isinstance(f := getattr(module, "_gradient_checkpointing_func", None), functools.partial)
    }


class CheckpointingSnapshot(TrainerCallback):
    """The student's checkpointing settings as the Trainer set them up, before any sampling."""

    def __init__(self) -> None:
        self.at_start: dict[str, tuple[str, dict]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.at_start = checkpointing_settings(model)


def test_sampling_keeps_the_gradient_checkpointing_settings(tmp_path, tiny_student, tiny_teacher, tokenizer):
    snapshot = CheckpointingSnapshot()
    trainer = on_policy_trainer(
        tmp_path,
        tiny_student,
        tiny_teacher,
        tokenizer,
        callbacks=[snapshot],
        max_new_tokens=2,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},  # not the default (False)
    )
    trainer.train()
    assert snapshot.at_start and all(kw == {"use_reentrant": True} for _, kw in snapshot.at_start.values())
    assert checkpointing_settings(trainer.model) == snapshot.at_start


# --------------------------------------------------------------------------------------------------------
# 5. Prompt-only data
# --------------------------------------------------------------------------------------------------------


def test_prompt_only_data_needs_lmbda_one(tmp_path):
    prompt_only = examples(with_completions=False)
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", data="prompts.jsonl")
    with pytest.raises(DataError, match="lmbda"):
        check_completions(prompt_only, DistillConfig(lmbda=0.5, **settings))
    check_completions(prompt_only, DistillConfig(lmbda=1.0, **settings))
    check_completions(prompt_only, DistillConfig(lmbda=0.5, seq_kd=True, **settings))
    check_completions(examples(), DistillConfig(lmbda=0.0, **settings))


def test_prompt_only_data_trains_on_policy_with_a_real_loss(tmp_path, tiny_student, tiny_teacher, tokenizer):
    trainer = on_policy_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer)
    recorder = Recorder(trainer)
    trainer.train()
    assert recorder.token_counts and recorder.token_counts[0] > 0
    assert len(recorder.losses) == 1 and recorder.losses[0] > 0


def test_prompt_only_data_off_policy_step_is_refused(tmp_path, tiny_student, tiny_teacher, tokenizer):
    trainer = make_trainer(
        tmp_path, tiny_student, tiny_teacher, tokenizer, dataset(tokenizer, with_completions=False), lmbda=0.0
    )
    with pytest.raises(ValueError, match="no completion tokens"):
        trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)


# --------------------------------------------------------------------------------------------------------
# 6. The on-policy decision
# --------------------------------------------------------------------------------------------------------


def test_on_policy_decision_is_deterministic_with_share_lmbda(
    tmp_path, tiny_student, tiny_teacher, tokenizer
):
    def decisions(trainer: GKDistillTrainer) -> list[bool]:
        return [trainer.is_on_policy(step) for step in range(2000)]

    first = make_trainer(tmp_path / "a", tiny_student, tiny_teacher, tokenizer, dataset(tokenizer))
    second = make_trainer(tmp_path / "b", tiny_student, tiny_teacher, tokenizer, dataset(tokenizer))
    for lmbda in (0.25, 0.5):
        first.args.lmbda = second.args.lmbda = lmbda
        chosen = decisions(first)
        random.seed(12345)  # the global random state plays no part
        torch.manual_seed(12345)
        assert decisions(first) == chosen
        assert decisions(second) == chosen  # another process / a resumed run agrees
        assert abs(sum(chosen) / len(chosen) - lmbda) <= 0.03
    first.args.lmbda = 0.0
    assert not any(decisions(first))
    first.args.lmbda = 1.0
    assert all(decisions(first))


# --------------------------------------------------------------------------------------------------------
# 7. Same tokenizer, different embedding sizes
# --------------------------------------------------------------------------------------------------------


def test_padded_teacher_vocabulary_is_aligned_to_the_tokenizer(
    tmp_path, tiny_student, tiny_teacher, tokenizer
):
    trainer = make_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, dataset(tokenizer), lmbda=1.0)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher.model)
    assert trainer.model.get_output_embeddings().weight.shape[0] == STUDENT_ROWS
    assert teacher.get_output_embeddings().weight.shape[0] == TEACHER_ROWS
    assert len(tokenizer) == STUDENT_ROWS
    assert shared_vocab_size(tokenizer, trainer.model, teacher) == len(tokenizer)
    assert trainer.vocab_size == len(tokenizer)

    recorder = Recorder(trainer)
    trainer.train()  # sampled (on-policy) completions, scored by both models
    rows = [row for batch in recorder.batches for row in rows_of(batch)]
    assert len(recorder.losses) == 1
    [expected] = reference_losses(tiny_student, tiny_teacher, rows, [0.5])
    assert recorder.losses[0] == pytest.approx(expected, rel=3e-4)  # measured 1e-5; misaligned: 1e-3


def test_model_with_fewer_rows_than_the_tokenizer_is_rejected(
    tmp_path, tokenizer_dir, tiny_student, tokenizer
):
    small = load_model(str(build_tiny_model(tmp_path / "small", tokenizer_dir, vocab_size=STUDENT_ROWS - 8)))
    with pytest.raises(ValueError, match="output rows"):
        shared_vocab_size(tokenizer, load_model(str(tiny_student)), small)


# --------------------------------------------------------------------------------------------------------
# 8. Different tokenizers rejected
# --------------------------------------------------------------------------------------------------------


def test_tokenizers_with_swapped_ids_are_rejected(tmp_path, tokenizer_dir, tokenizer):
    folder = tmp_path / "swapped"
    shutil.copytree(tokenizer_dir, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    first, second = tokenizer.convert_ids_to_tokens([1000, 1001])
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    swapped = load_tokenizer(str(folder))
    assert len(swapped) == len(tokenizer)  # a size check would let this pair through

    with pytest.raises(TokenizerMismatchError) as caught:
        check_same_vocabulary(tokenizer, swapped)
    message = str(caught.value)
    assert "differ at 2 ids" in message
    assert f"id 1000: student {first!r} vs teacher {second!r}" in message
    assert f"id 1001: student {second!r} vs teacher {first!r}" in message


def test_tokenizer_with_an_extra_token_is_rejected(tokenizer_dir, tokenizer):
    extended = load_tokenizer(str(tokenizer_dir))
    extended.add_tokens(["<new_tok>"])
    with pytest.raises(
        TokenizerMismatchError, match=rf"id {len(tokenizer)}: student None vs teacher '<new_tok>'"
    ):
        check_same_vocabulary(tokenizer, extended)


def test_same_tokenizer_with_different_model_sizes_is_accepted(tiny_student, tiny_teacher):
    check_same_vocabulary(load_tokenizer(str(tiny_student)), load_tokenizer(str(tiny_teacher)))


# --------------------------------------------------------------------------------------------------------
# 9. The loss is the divergence alone (no hidden CE, no sampling temperature)
# --------------------------------------------------------------------------------------------------------


def test_loss_is_the_plain_kl_at_the_limits(tmp_path, sharp_student, sharp_teacher, tokenizer):
    rows = data_rows(tokenizer)
    forward_kl, reverse_kl = reference_losses(sharp_student, sharp_teacher, rows, [0.0, 1.0])
    # Peaked distributions: the two directions differ, so a swapped KL cannot pass for the right one.
    assert forward_kl > 0 and reverse_kl > 0
    assert forward_kl != pytest.approx(reverse_kl, rel=1e-2)
    for beta, expected in [(0.0, forward_kl), (1.0, reverse_kl)]:
        trainer = make_trainer(
            tmp_path / str(beta),
            sharp_student,
            sharp_teacher,
            tokenizer,
            dataset(tokenizer),
            per_device_train_batch_size=4,
            beta=beta,
            temperature=0.5,  # the sampling temperature: it must not leak into the loss
        )
        recorder = Recorder(trainer)
        trainer.train()
        assert recorder.losses == [pytest.approx(expected, rel=1e-4)], f"beta={beta}"


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_sampled_kl_trains_on_the_teachers_log_prob_of_each_sampled_token(
    tmp_path, sharp_student, sharp_teacher, tokenizer, estimator
):
    """--loss sampled_kl with the in-process teacher: the loss of an on-policy step is the mean over the
    student's sampled tokens of log q(x) - log p(x) (k1), or of p/q - 1 - log p/q (k3), from the two models'
    log-probabilities of those tokens alone."""
    trainer = on_policy_trainer(
        tmp_path,
        sharp_student,
        sharp_teacher,
        tokenizer,
        loss="sampled_kl",
        kl_estimator=estimator,
        temperature=1.0,
    )
    recorder = Recorder(trainer)
    trainer.train()
    [batch] = recorder.batches
    mask = batch["completion_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    tokens = batch["input_ids"][:, -mask.shape[1] :][mask]

    def token_log_probs(folder: Path) -> torch.Tensor:
        logits = completion_logits(load_model(str(folder)), inputs, mask, len(tokenizer)).double()
        return logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]

    delta = token_log_probs(sharp_student) - token_log_probs(sharp_teacher)  # log q - log p
    expected = delta if estimator == "k1" else torch.expm1(-delta) + delta
    assert recorder.losses == [pytest.approx(float(expected.mean()), rel=1e-4)]


# --------------------------------------------------------------------------------------------------------
# 10. Sequence-level KD samples from the teacher
# --------------------------------------------------------------------------------------------------------


def test_seq_kd_completions_are_sampled_from_the_teacher(tmp_path, tiny_student, tiny_teacher, tokenizer):
    train_dataset = dataset(tokenizer)
    trainer = make_trainer(
        tmp_path, tiny_student, tiny_teacher, tokenizer, train_dataset, lmbda=0.0, seq_kd=True
    )
    forwards = {"student": 0, "teacher": 0}

    def counter(name: str):
        def count(module, args, kwargs):
            forwards[name] += 1

        return count

    trainer.model.register_forward_pre_hook(counter("student"), with_kwargs=True)
    trainer.accelerator.unwrap_model(trainer.teacher.model).register_forward_pre_hook(
        counter("teacher"), with_kwargs=True
    )

    batches, tokens = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
    assert trainer.is_on_policy(0) is False
    assert trainer._since_log["generation_seconds"] > 0
    assert forwards == {"student": 0, "teacher": trainer.args.max_new_tokens}  # prefill + 7 decoding steps
    generated = [completion for _, completion in rows_of(batches[0])]
    assert all(ids != train_dataset[row]["completion_ids"] for row, ids in enumerate(generated))
    assert all(1 <= len(ids) <= trainer.args.max_new_tokens for ids in generated)
    assert int(tokens) == sum(map(len, generated))


def test_seq_kd_never_samples_padded_teacher_rows(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """The teacher's 128 extra rows are not tokens; completions must use the shared vocabulary only."""
    trainer = make_trainer(
        tmp_path, tiny_student, tiny_teacher, tokenizer, dataset(tokenizer), lmbda=0.0, seq_kd=True
    )
    teacher = trainer.accelerator.unwrap_model(trainer.teacher.model)
    # An extreme but legal teacher: untie its output layer and put all its mass on the padded rows.
    teacher.lm_head.weight = torch.nn.Parameter(teacher.lm_head.weight.detach().clone(), requires_grad=False)
    with torch.no_grad():
        teacher.lm_head.weight[:STUDENT_ROWS] = 0
        teacher.lm_head.weight[STUDENT_ROWS:] = 5 * torch.randn(TEACHER_ROWS - STUDENT_ROWS, 32)

    batches, tokens = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
    for _, completion in rows_of(batches[0]):
        assert max(completion) < len(tokenizer)
    trainer.compute_loss(trainer.model, batches[0], num_items_in_batch=tokens)


# --------------------------------------------------------------------------------------------------------
# 11. The student's engine samples current weights: synced once per optimizer step, one call per step
# --------------------------------------------------------------------------------------------------------


def test_student_engine_gets_the_weights_once_per_step_and_samples_a_step_in_one_call(
    tmp_path, tiny_student, tiny_teacher, tokenizer
):
    """What a vLLM engine relies on: a weight push (costly: the whole model) before the first sample after
    each optimizer step and never again within it, and one engine call for all the step's micro-batches."""
    prompt_only = dataset(tokenizer, with_completions=False)
    trainer = make_trainer(
        tmp_path,
        tiny_student,
        tiny_teacher,
        tokenizer,
        prompt_only,
        lmbda=1.0,
        max_steps=2,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
    )
    events: list[tuple] = []
    engine = trainer.samplers["student"]
    sync, generate = engine.sync_weights, engine.generate

    def recording_sync():
        events.append(("sync", trainer.state.global_step))
        sync()

    def recording_generate(prompts, params, desc=None):
        events.append(("generate", trainer.state.global_step, len(prompts)))
        return generate(prompts, params, desc)

    engine.sync_weights, engine.generate = recording_sync, recording_generate
    trainer.train()
    assert events == [("sync", 0), ("generate", 0, 2), ("sync", 1), ("generate", 1, 2)]

    events.clear()
    trainer.evaluate(prompt_only)  # prompt-only held-out data: the student's samples, after step 2
    trainer.evaluate(prompt_only)  # same weights: nothing to push
    assert events == [("sync", 2), ("generate", 2, 4), ("generate", 2, 4)]


def test_engine_samples_a_whole_step_in_one_generate_call(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """Through the engine, a step's samples are what one `model.generate` call draws for all its
    micro-batches' prompts, from the step's seed: the engine changes where sampling runs, not what
    is sampled, and a step decodes once (the weights are read once per token, not once per micro-batch)."""
    trainer = on_policy_trainer(
        tmp_path, tiny_student, tiny_teacher, tokenizer, gradient_accumulation_steps=2
    )
    raw = list(trainer.get_train_dataloader())
    batches, _ = trainer.get_batch_samples(iter(raw), 2, trainer.args.device)
    torch.manual_seed(trainer.sampling_seed(evaluating=False))
    pad = tokenizer.pad_token_id
    prompts = [
        ids[m.bool()].tolist() for b in raw for ids, m in zip(b["prompt_ids"], b["prompt_mask"], strict=True)
    ]
    expected, mask = generate_completions(
        trainer.model, *left_pad(prompts, pad), trainer.sampling,
        eos_ids_of(trainer.model, tokenizer), pad, trainer.vocab_size,
    )  # fmt: skip
    sampled = [c for completed in batches for _, c in rows_of(completed)]
    assert len(sampled) == 4
    assert sampled == [ids[m.bool()].tolist() for ids, m in zip(expected, mask, strict=True)]


def test_samples_are_drawn_from_seed_step_and_process_alone(tmp_path, tiny_student, tiny_teacher, tokenizer):
    """A step's samples depend on (seed, step, process) only, and leave the global RNG (dropout's, the data
    order's) as it was: a run resumed at step N draws what an uninterrupted one drew there, whatever the
    global RNG holds when transformers restores it (for a run resumed mid-epoch: after the first step is
    fetched, so after it is sampled)."""
    trainer = on_policy_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer)
    raw = list(trainer.get_train_dataloader())

    def draw(global_rng_seed: int, step: int) -> tuple[list, torch.Tensor]:
        torch.manual_seed(global_rng_seed)
        trainer.state.global_step = step
        batches, _ = trainer.get_batch_samples(iter(raw), 1, trainer.args.device)
        return [c for _, c in rows_of(batches[0])], torch.rand(4)

    (samples, after), (again, _) = draw(1, step=3), draw(2, step=3)
    assert samples == again  # whatever the global RNG held
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(4))  # and the global RNG is left as it was
    assert draw(1, step=4)[0] != samples  # another step, other samples


def test_generation_batch_size_caps_the_prompts_per_generate_call(
    tmp_path, tiny_student, tiny_teacher, tokenizer
):
    """Where a whole step's sampling does not fit in memory, generation_batch_size splits it: 4 prompts
    at a cap of 3 are two generate calls (3, then 1), and every prompt still gets its completion."""
    trainer = on_policy_trainer(
        tmp_path,
        tiny_student,
        tiny_teacher,
        tokenizer,
        gradient_accumulation_steps=2,
        generation_batch_size=3,
    )
    calls = []
    generate = trainer.model.generate

    def counting_generate(*args, **kwargs):
        calls.append(len(kwargs["input_ids"]))
        return generate(*args, **kwargs)

    trainer.model.generate = counting_generate
    batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, trainer.args.device)
    assert calls == [3, 1]
    assert len([c for completed in batches for _, c in rows_of(completed)]) == 4
    with pytest.raises(ValueError, match="generation_batch_size must be at least 1"):
        DistillConfig(output_dir=str(tmp_path), generation_batch_size=0)


# --------------------------------------------------------------------------------------------------------
# 12. Privileged context: the teacher reads its own, longer prompt and scores the student's tokens
# --------------------------------------------------------------------------------------------------------

HINTS = ["The answer is 5.", "Four plus one is five: 5.", "", "Six and two make eight."]  # one empty


def context_examples(hints: list[str], with_completions: bool = True) -> list[Example]:
    """The QA examples, each teacher's prompt holding its hint (an empty hint: the student's prompt)."""
    return [
        replace(example, teacher_prompt=with_context(example.prompt, hint))
        for example, hint in zip(examples(with_completions), hints, strict=True)
    ]


def teacher_rows_of(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    """(teacher prompt ids, completion ids) of each row, unpadded, from the teacher's own inputs."""
    return rows_of(
        {k.removeprefix("teacher_"): v for k, v in batch.items() if k.startswith("teacher_")}
        | {"completion_mask": batch["completion_mask"]}
    )


def context_reference_loss(student_dir, teacher_dir, rows, teacher_rows, beta: float) -> float:
    """Each row alone, unpadded: the student on [prompt | completion], the teacher on [teacher prompt |
    the same completion]; divergence summed over completion tokens / their number."""
    student, teacher = load_model(str(student_dir)), load_model(str(teacher_dir))
    total, tokens = 0.0, 0
    with torch.no_grad():
        for (prompt, completion), (teacher_prompt, _) in zip(rows, teacher_rows, strict=True):
            s = student(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
            ids = torch.tensor([teacher_prompt + completion])
            t = teacher(input_ids=ids).logits[0, len(teacher_prompt) - 1 : -1, :STUDENT_ROWS]
            total += float(reference_divergence(s[:, :STUDENT_ROWS], t, beta).sum())
            tokens += len(completion)
    return total / tokens


@pytest.mark.parametrize("lmbda", [0.0, 1.0], ids=["data-completions", "student-samples"])
def test_teacher_scores_the_students_completion_tokens_under_its_own_prompt(
    tmp_path, sharp_student, sharp_teacher, tokenizer, lmbda
):
    train_dataset = tokenize_examples(tokenizer, context_examples(HINTS), 64, 16)
    trainer = make_trainer(
        tmp_path, sharp_student, sharp_teacher, tokenizer, train_dataset,
        per_device_train_batch_size=4, lmbda=lmbda, beta=0.3,
    )  # fmt: skip
    recorder = Recorder(trainer)
    trainer.train()

    [batch] = recorder.batches
    rows, teacher_rows = rows_of(batch), teacher_rows_of(batch)
    for row, ((prompt, completion), (teacher_prompt, teacher_completion)) in enumerate(
        zip(rows, teacher_rows, strict=True)
    ):
        assert teacher_completion == completion  # the very same tokens, in the same places
        assert prompt == train_dataset[row]["prompt_ids"]
        assert teacher_prompt == train_dataset[row]["teacher_prompt_ids"]
        assert (teacher_prompt == prompt) == (HINTS[row] == "")
        if HINTS[row]:
            assert HINTS[row] in tokenizer.decode(teacher_prompt) and HINTS[row] not in tokenizer.decode(
                prompt
            )
    expected = context_reference_loss(sharp_student, sharp_teacher, rows, teacher_rows, beta=0.3)
    assert recorder.losses == [pytest.approx(expected, rel=1e-4)]


@pytest.mark.parametrize("lmbda", [0.0, 1.0], ids=["data-completions", "student-samples"])
def test_an_empty_context_gives_the_plain_gkd_loss(tmp_path, sharp_student, sharp_teacher, tokenizer, lmbda):
    losses = {}
    for name, records in (
        ("plain", examples()),
        ("empty context", context_examples([""] * len(QA))),
    ):
        train_dataset = tokenize_examples(tokenizer, records, 64, 16)
        assert ("teacher_prompt_ids" in train_dataset.column_names) == (name != "plain")
        trainer = make_trainer(
            tmp_path / name, sharp_student, sharp_teacher, tokenizer, train_dataset,
            per_device_train_batch_size=4, lmbda=lmbda, max_steps=2, learning_rate=1e-3,
        )  # fmt: skip
        recorder = Recorder(trainer)
        trainer.train()
        losses[name] = recorder.losses
    assert len(losses["plain"]) == 2 and losses["empty context"] == losses["plain"]


def test_with_context_the_loss_is_normalised_over_the_whole_optimizer_step(
    tmp_path, sharp_student, sharp_teacher, tokenizer
):
    beta = 0.3
    train_dataset = tokenize_examples(tokenizer, context_examples(HINTS), 64, 16)
    rows = [(r["prompt_ids"], r["completion_ids"]) for r in train_dataset]
    teacher_rows = [(r["teacher_prompt_ids"], r["completion_ids"]) for r in train_dataset]
    student, teacher = load_model(str(sharp_student)), load_model(str(sharp_teacher))
    names, params = zip(*student.named_parameters(), strict=True)
    divergences = []
    for (prompt, completion), (teacher_prompt, _) in zip(rows, teacher_rows, strict=True):
        s = student(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        with torch.no_grad():
            ids = torch.tensor([teacher_prompt + completion])
            t = teacher(input_ids=ids).logits[0, len(teacher_prompt) - 1 : -1, :STUDENT_ROWS]
        divergences.append(reference_divergence(s[:, :STUDENT_ROWS], t, beta))
    step_loss = sum(d.sum() for d in divergences) / sum(len(c) for _, c in rows)
    expected = flat(dict(zip(names, torch.autograd.grad(step_loss, params), strict=True)))

    for batch_size, accumulation in [(2, 2), (4, 1)]:
        gradients = GradientRecorder()
        trainer = make_trainer(
            tmp_path / f"b{batch_size}", sharp_student, sharp_teacher, tokenizer, train_dataset,
            callbacks=[gradients], per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_grad_norm=0.0, beta=beta,
        )  # fmt: skip
        recorder = Recorder(trainer)
        trainer.train()
        assert sum(recorder.losses) == pytest.approx(float(step_loss.detach()), rel=1e-4)
        assert relative_error(flat(gradients.grads), expected) < 1e-3


def test_seq_kd_with_context_samples_the_teacher_from_its_own_prompt(
    tmp_path, tiny_student, tiny_teacher, tokenizer
):
    train_dataset = tokenize_examples(tokenizer, context_examples(HINTS), 64, 16)
    trainer = make_trainer(
        tmp_path, tiny_student, tiny_teacher, tokenizer, train_dataset, lmbda=0.0, seq_kd=True,
        per_device_train_batch_size=4,
    )  # fmt: skip
    asked: list[list[int]] = []
    engine = trainer.samplers["teacher"]
    generate = engine.generate

    def recording_generate(prompts, params, desc=None):
        asked.extend(prompts)
        return generate(prompts, params, desc)

    engine.generate = recording_generate
    batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
    assert asked == train_dataset["teacher_prompt_ids"]
    assert [p for p, _ in rows_of(batches[0])] == train_dataset["prompt_ids"]  # the student: no context
