"""A teacher with another tokenizer inside `GKDistillTrainer`: tiny random models on SmolLM2's real tokenizer
(the student) and Gemma 3's (the teacher), and the same-tokenizer check against today's path."""

from __future__ import annotations

import copy
from collections.abc import Collection

import pytest
import torch
from datasets import Dataset
from test_distill_trainer import make_trainer as distill_trainer

from selftaught.arguments import ArgumentError
from selftaught.data.formats import Example, tokenize_examples, tokenize_prompt
from selftaught.distill.context import with_context
from selftaught.distill.cross_teacher import (
    PATHS,
    CrossTokenizerTeacher,
    choose_alignment,
    with_teacher_prompts,
)
from selftaught.distill.teachers import CompletionBatch
from selftaught.distill.trainer import MODEL_INPUTS, GKDistillTrainer
from selftaught.generation.next_token import completion_logprobs
from selftaught.models import load_model
from selftaught.models.cross_tokenizer import CrossTokenizer, path_shares
from selftaught.scoring.logits import completion_logits

QA = [
    ("What is 2 + 3?", "The answer is $\\boxed{5}$."),
    ("Say hello.", "Hello world  foo 😀"),  # Gemma's '▁▁' and '▁😀' straddle SmolLM2's tokens
    ("Add four and one, please.", "Four plus one equals five, so the answer is 5."),
    ("Write in French.", "Un café, s'il vous plaît."),
]


def examples(context: str | None = None) -> list[Example]:
    result = []
    for question, answer in QA:
        prompt = [{"role": "user", "content": question}]
        teacher_prompt = with_context(prompt, context) if context else None
        result.append(Example(prompt=prompt, completion=answer, teacher_prompt=teacher_prompt))
    return result


def dataset(tokenizer, cross: CrossTokenizer, context: str | None = None):
    rows = examples(context)
    return with_teacher_prompts(tokenize_examples(tokenizer, rows, 64, 24), rows, cross, 64)


def make_trainer(tmp_path, student_dir, teacher_dir, tokenizer, data, cross=None, **overrides):
    """test_distill_trainer's trainer on `data` (one batch of QA); with `cross`, its teacher is a
    `CrossTokenizerTeacher`."""
    teacher = None
    if cross is not None:
        teacher = CrossTokenizerTeacher(load_model(str(teacher_dir)), cross, len(cross.teacher.tokenizer))
    settings = {"per_device_train_batch_size": len(QA)} | overrides
    return distill_trainer(tmp_path, student_dir, teacher_dir, tokenizer, data, teacher=teacher, **settings)


def batch(trainer: GKDistillTrainer, data) -> tuple[dict[str, torch.Tensor], CompletionBatch]:
    """The data's completions as the trainer's inputs, and as the batch its teacher scores."""
    [inputs] = trainer.complete([trainer.data_collator(list(data))], "data")
    teacher_inputs = {k: inputs.get(f"teacher_{k}", inputs[k]) for k in MODEL_INPUTS}
    return inputs, CompletionBatch(teacher_inputs, inputs["completion_mask"].bool())


def student_logits(trainer: GKDistillTrainer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model_inputs = {k: inputs[k] for k in MODEL_INPUTS}
    return completion_logits(trainer.model, model_inputs, inputs["completion_mask"], trainer.vocab_size)


def loss_and_gradient(trainer: GKDistillTrainer, data) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's loss on the data's completions, one batch, and the student's parameter gradients."""
    [inputs] = trainer.complete([trainer.data_collator(list(data))], "data")
    tokens = inputs["completion_mask"].sum()
    loss = trainer.compute_loss(trainer.model, inputs, num_items_in_batch=tokens)
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize(
    ("beta", "context"), [(0.0, None), (0.9, None), (0.5, "Reference: the answer is 5.")]
)
def test_with_one_tokenizer_the_cross_tokenizer_path_gives_todays_loss_and_gradient(
    tmp_path, sharp_student, sharp_teacher, tokenizer, beta, context
):
    """The whole cross-tokenizer path (re-rendering, re-tokenising, byte alignment, shared-string support)
    with the student's own tokenizer on the teacher's side must reproduce the dense loss: an alignment
    error anywhere would show here."""
    same = CrossTokenizer.between(tokenizer, tokenizer)
    data = dataset(tokenizer, same, context)
    today_data = tokenize_examples(tokenizer, examples(context), 64, 24)
    today = make_trainer(tmp_path, sharp_student, sharp_teacher, tokenizer, today_data, beta=beta)
    cross = make_trainer(tmp_path, sharp_student, sharp_teacher, tokenizer, data, same, beta=beta)
    today_loss, today_grads = loss_and_gradient(today, today_data)
    cross_loss, cross_grads = loss_and_gradient(cross, data)
    assert today_loss > 0.1
    torch.testing.assert_close(cross_loss, today_loss, atol=1e-5, rtol=0)
    assert today_grads.keys() == cross_grads.keys()
    for name, grad in today_grads.items():
        torch.testing.assert_close(cross_grads[name], grad, atol=1e-5, rtol=0, msg=name)
    inputs, teacher_batch = batch(cross, data)
    assert cross.teacher.scores(teacher_batch).counts() == {
        "shared_support": int(inputs["completion_mask"].sum()),
        "fallback": 0,
        "unaligned": 0,
    }


def own_tokens(tokenizer, ids: list[int], stops: Collection[int]) -> bool:
    """Whether `ids` (less a final stop token) are what the tokenizer makes of their decoded text."""
    body = ids[:-1] if ids and ids[-1] in stops else ids
    return tokenizer(tokenizer.decode(body), add_special_tokens=False)["input_ids"] == body


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_with_one_tokenizer_on_the_students_own_canonical_samples_the_loss_and_gradient_are_todays(
    tmp_path, sharp_student, sharp_teacher, tokenizer, beta
):
    """On-policy: 16 completions sampled from the tiny student, of which those
    that are their tokenizer's own tokenisation (about 60%; the others, such as a sampled 'ĊĊ' where the
    tokenizer writes 'Ċ' 'Ċ', are the next test's case) go through both paths as one batch, in float32.
    Today's path scores the same ids, the teacher reading the student's prompt."""
    same = CrossTokenizer.between(tokenizer, tokenizer)
    data = dataset(tokenizer, same).select([0, 1, 2, 3] * 4)
    cross = make_trainer(tmp_path, sharp_student, sharp_teacher, tokenizer, data, same, beta=beta)
    today = make_trainer(tmp_path, sharp_student, sharp_teacher, tokenizer, data, beta=beta)
    [sampled] = cross.complete([cross.data_collator(list(data))], "student")
    mask = sampled["completion_mask"].bool()
    completions = [
        row[keep].tolist() for row, keep in zip(sampled["input_ids"][:, -mask.shape[1] :], mask, strict=True)
    ]
    canonical = [k for k, ids in enumerate(completions) if own_tokens(tokenizer, ids, same.stop_ids)]
    assert 4 <= len(canonical) < len(completions)
    inputs = {name: values[canonical] for name, values in sampled.items()}
    losses, gradients = [], []
    for trainer, given in (
        (today, {k: inputs[k] for k in [*MODEL_INPUTS, "completion_mask"]}),
        (cross, inputs),
    ):
        loss = trainer.compute_loss(trainer.model, given, num_items_in_batch=given["completion_mask"].sum())
        loss.backward()
        losses.append(loss.detach())
        gradients.append({n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert losses[0] > 0.1
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=0, msg=name)
    scored = cross.teacher.scores(
        CompletionBatch({k: inputs[f"teacher_{k}"] for k in MODEL_INPUTS}, inputs["completion_mask"].bool())
    )
    assert scored.counts()["fallback"] == 0 and scored.non_canonical == 0


def test_a_sample_that_is_not_its_tokenizers_own_tokenisation_keeps_the_sequence_sum_and_is_counted(
    tmp_path, sharp_student, sharp_teacher, tokenizer
):
    """'Hello' 'Ġw' 'orld' where the tokenizer writes 'Hello' 'Ġworld': the teacher (the same tokenizer)
    reads the text, so it scores 'Ġworld'. The values over the completion sum to its log-probability of
    that canonical tokenisation, 'Ġworld''s shared by bytes (2 of its 6 to 'Ġw'); 'Ġw' (on a teacher
    boundary) takes the shared-support loss, 'orld' (inside 'Ġworld') the fallback; the batch, the step's
    log and the run count the completion."""
    same = CrossTokenizer.between(tokenizer, tokenizer)
    hello, w, orld, world = tokenizer.convert_tokens_to_ids(["Hello", "Ġw", "orld", "Ġworld"])
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [hello, world]
    end = same.student.end_of_turn
    rows = dataset(tokenizer, same).to_list()
    rows[1]["completion_ids"] = [hello, w, orld, end]
    data = Dataset.from_list(rows)
    trainer = make_trainer(tmp_path, sharp_student, sharp_teacher, tokenizer, data, same)
    inputs, teacher_batch = batch(trainer, data)
    scored = trainer.teacher.scores(teacher_batch)
    assert (scored.completions, scored.non_canonical) == (len(QA), 1)
    in_row = inputs["completion_mask"].bool().nonzero()[:, 0] == 1
    values = scored.token_log_probs[in_row].double()
    assert [PATHS[k] for k in scored.path[in_row]] == [
        "shared_support",
        "shared_support",
        "fallback",
        "shared_support",
    ]
    # the teacher's log-probabilities of the canonical tokens, over the tokenizer's tokens (its padded rows
    # dropped, as in training)
    canonical = [hello, world, end]
    with torch.no_grad():
        logits = trainer.teacher.model(torch.tensor([rows[1]["teacher_prompt_ids"] + canonical])).logits
    log_probs = logits[0, -len(canonical) - 1 : -1, : len(tokenizer)].double().log_softmax(-1)
    teacher_lp = log_probs.gather(-1, torch.tensor(canonical)[:, None])[:, 0].tolist()
    # to float32's rounding (the run's teacher log-softmax is in float32; this one in float64)
    assert values.sum().item() == pytest.approx(sum(teacher_lp), rel=1e-6)
    assert values[1:3].tolist() == pytest.approx([teacher_lp[1] * 2 / 6, teacher_lp[1] * 4 / 6], rel=1e-6)

    trainer.train()
    [log] = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert log["non_canonical_share"] == pytest.approx(1 / len(QA))
    assert trainer.completion_counts == {"completions": len(QA), "non_canonical": 1}


def test_across_tokenizers_the_sampled_token_values_sum_to_the_sequence_log_ratio(
    tmp_path, tiny_student, tiny_gemma, tokenizer, gemma_tokenizer
):
    """With loss sampled_kl (k1) the values over a completion are log q(completion) - log p(text): the
    student's log-probability of its tokens minus the teacher's of the same text under its own prompt and
    tokens (scored here directly, without any alignment)."""
    cross = CrossTokenizer.between(tokenizer, gemma_tokenizer)
    data = dataset(tokenizer, cross)
    trainer = make_trainer(tmp_path, tiny_student, tiny_gemma, tokenizer, data, cross)
    teacher = CrossTokenizerTeacher(trainer.teacher.model, cross, len(gemma_tokenizer), loss="sampled_kl")
    inputs, teacher_batch = batch(trainer, data)
    scored = teacher.scores(teacher_batch)
    assert scored.counts()["shared_support"] == 0  # every token on the sampled-token path
    mask = inputs["completion_mask"].bool()
    with torch.no_grad():
        values = teacher.per_token_loss(student_logits(trainer, inputs), scored, 0.5, "k1")
    per_row = torch.zeros(len(QA), dtype=values.dtype).index_add_(0, mask.nonzero()[:, 0], values)
    student_ids = [
        row[keep].tolist() for row, keep in zip(inputs["input_ids"][:, -mask.shape[1] :], mask, strict=True)
    ]
    prompts = [tokenize_prompt(tokenizer, e.prompt) for e in examples()]
    student_lp = completion_logprobs(trainer.model, prompts, student_ids, tokenizer.pad_token_id)
    end_of_turn = gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    teacher_ids = [gemma_tokenizer(a, add_special_tokens=False)["input_ids"] + [end_of_turn] for _, a in QA]
    teacher_prompts = [tokenize_prompt(gemma_tokenizer, e.prompt) for e in examples()]
    teacher_lp = completion_logprobs(
        trainer.teacher.model, teacher_prompts, teacher_ids, gemma_tokenizer.pad_token_id
    )
    expected = [sum(s) - sum(t) for s, t in zip(student_lp, teacher_lp, strict=True)]
    assert per_row.tolist() == pytest.approx(expected, abs=1e-3)


def test_a_cross_tokenizer_step_trains_and_logs_the_share_on_each_loss_path(
    tmp_path, tiny_student, tiny_gemma, tokenizer, gemma_tokenizer
):
    cross = CrossTokenizer.between(tokenizer, gemma_tokenizer)
    data = dataset(tokenizer, cross)
    trainer = make_trainer(tmp_path, tiny_student, tiny_gemma, tokenizer, data, cross, learning_rate=1e-3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    [log] = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert torch.isfinite(torch.tensor(log["loss"])) and log["loss"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    # the same shares, computed from the alignments alone
    completions = [row["completion_ids"] for row in data]
    alignments = [cross.align(e.prompt, ids) for e, ids in zip(examples(), completions, strict=True)]
    expected = path_shares(alignments, completions, cross.support)
    for name in PATHS:
        assert log[f"{name}_share"] == pytest.approx(expected[name])
    assert 0 < log["fallback_share"] < 0.2
    assert trainer.path_tokens["shared_support"] + trainer.path_tokens["fallback"] == expected["tokens"]


def test_the_uld_fallback_changes_only_the_tokens_off_teacher_boundaries(
    tmp_path, tiny_student, tiny_gemma, tokenizer, gemma_tokenizer
):
    cross = CrossTokenizer.between(tokenizer, gemma_tokenizer)
    data = dataset(tokenizer, cross)
    trainer = make_trainer(tmp_path, tiny_student, tiny_gemma, tokenizer, data, cross)
    inputs, teacher_batch = batch(trainer, data)
    logits = student_logits(trainer, inputs)
    losses = {}
    for fallback in ("sampled_kl", "uld"):
        teacher = CrossTokenizerTeacher(trainer.teacher.model, cross, len(gemma_tokenizer), fallback)
        scored = teacher.scores(teacher_batch)
        losses[fallback] = teacher.per_token_loss(logits, scored, beta=0.5).detach()
    fallback = scored.path == PATHS.index("fallback")
    assert fallback.any()
    torch.testing.assert_close(losses["uld"][~fallback], losses["sampled_kl"][~fallback])
    assert not torch.allclose(losses["uld"][fallback], losses["sampled_kl"][fallback])
    assert ((losses["uld"][fallback] >= 0) & (losses["uld"][fallback] <= 2)).all()


def test_a_teacher_with_another_tokenizer_needs_a_chat_template(tokenizer, gemma_tokenizer):
    bare = copy.deepcopy(gemma_tokenizer)
    bare.chat_template = None
    with pytest.raises(ArgumentError, match="--teacher_chat_template"):
        choose_alignment(tokenizer, bare, None, seq_kd=False)
    with pytest.raises(ArgumentError, match="neither a file nor a known template.*gemma3"):
        choose_alignment(tokenizer, copy.deepcopy(bare), "gemma-three", seq_kd=False)
    with pytest.raises(ArgumentError, match="--seq_kd"):
        choose_alignment(tokenizer, copy.deepcopy(bare), "gemma3", seq_kd=True)
    chosen = choose_alignment(tokenizer, bare, "gemma3", seq_kd=False)
    assert chosen.cross is not None and chosen.reason.startswith("byte offsets")
    assert "<start_of_turn>" in bare.chat_template
    same = choose_alignment(tokenizer, copy.deepcopy(tokenizer), None, seq_kd=True)
    assert same.cross is None and same.reason.startswith("token ids")
    assert (
        "--teacher_chat_template is not used"
        in choose_alignment(tokenizer, tokenizer, "gemma3", False).reason
    )
