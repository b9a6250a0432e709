"""Cross-tokenizer alignment on two real vocabularies: SmolLM2's byte-level BPE (49,152 tokens) and Gemma
3's SentencePiece-style BPE with byte fallback (262,144 tokens), with tiny random models where a model is
needed."""

from __future__ import annotations

import pytest
import torch

from selftaught.data.formats import tokenize_completion, tokenize_prompt
from selftaught.distill.context import with_context
from selftaught.evaluate.per_byte import answer_nll, per_byte_nll, per_byte_nll_change
from selftaught.generation.engines import as_engine
from selftaught.generation.next_token import completion_logprobs
from selftaught.models import load_model
from selftaught.models.cross_tokenizer import (
    AlignmentError,
    ByteVocabulary,
    CrossTokenizer,
    SharedSupport,
    path_shares,
)
from selftaught.training.cross_tokenizer_losses import shared_support_jsd, uld_distance
from selftaught.training.losses import generalized_jsd

PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]
TEXTS = [
    "The answer is $\\boxed{7}$.",
    "Hello world  foo\tbar",  # two spaces: Gemma's '▁▁' straddles SmolLM2's 'Ġ' | 'Ġfoo'
    "Emoji 😀, 中文, café and naïve.",  # byte-level BPE cuts the emoji and the CJK inside a character
    "\nA reply that starts with a newline",  # fuses with the end of Gemma's template into '\n\n'
]


@pytest.fixture(scope="module")
def cross(tokenizer, gemma_tokenizer) -> CrossTokenizer:
    return CrossTokenizer.between(tokenizer, gemma_tokenizer)


@pytest.fixture(scope="module")
def same(tokenizer) -> CrossTokenizer:
    return CrossTokenizer.between(tokenizer, tokenizer)


def student_ids(tokenizer, text: str, ended: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * ended


def pieces(vocabulary: ByteVocabulary, ids: list[int]) -> list[bytes]:
    return [vocabulary.pieces[i] for i in ids]


@pytest.mark.parametrize("text", TEXTS)
def test_both_tokenizers_tokens_write_back_the_texts_bytes(cross, tokenizer, gemma_tokenizer, text):
    for vocabulary in (cross.student, cross.teacher):
        ids = vocabulary.tokenizer(text, add_special_tokens=False)["input_ids"]
        starts, ends = vocabulary.spans(ids)
        assert b"".join(pieces(vocabulary, ids)) == text.encode()
        assert starts[0] == 0 and ends[-1] == len(text.encode())
        assert all(s == e for s, e in zip(starts[1:], ends[:-1], strict=True))  # a tiling, no overlap


def test_byte_level_bpe_cuts_inside_a_character_and_bytes_place_the_cut(cross, tokenizer):
    """Character offsets cannot say where 'ĠðŁĺ' ends and 'Ģ' begins (both claim the emoji); bytes can."""
    ids = tokenizer(" 😀", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["ĠðŁĺ", "Ģ"]
    offsets = tokenizer(" 😀", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert [tuple(o) for o in offsets] == [(0, 2), (1, 2)]
    assert cross.student.spans(ids) == ([0, 4], [4, 5])


def test_a_straddling_teacher_token_is_shared_by_bytes(cross, tokenizer, gemma_tokenizer):
    text = "Hello world  foo 😀"
    alignment = cross.align(PROMPT, student_ids(tokenizer, text))
    assert tokenizer.convert_ids_to_tokens(student_ids(tokenizer, text, ended=False)) == [
        "Hello", "Ġworld", "Ġ", "Ġfoo", "ĠðŁĺ", "Ģ",
    ]  # fmt: skip
    assert gemma_tokenizer.convert_ids_to_tokens(alignment.teacher_completion_ids) == [
        "Hello", "▁world", "▁▁", "foo", "▁😀", "<end_of_turn>",
    ]  # fmt: skip
    shares = list(zip(alignment.student_index, alignment.teacher_index, alignment.share, strict=True))
    # '▁▁' is half 'Ġ', half 'Ġfoo'; '▁😀' (5 bytes) is 4 bytes 'ĠðŁĺ' and 1 byte 'Ģ'
    assert shares == [
        (0, 0, 1.0), (1, 1, 1.0), (2, 2, 0.5), (3, 2, 0.5),
        (3, 3, 1.0), (4, 4, 0.8), (5, 4, 0.2), (6, 5, 1.0),
    ]  # fmt: skip
    assert alignment.on_boundary == [True, True, True, False, True, False, True]
    assert alignment.teacher_row == [0, 1, 2, 2, 4, 4, 5]
    teacher_logprobs = torch.tensor([-1.0, -2.0, -4.0, -8.0, -16.0, -32.0], dtype=torch.float64)
    assert alignment.spread(teacher_logprobs).tolist() == [-1.0, -2.0, -2.0, -10.0, -12.8, -3.2, -32.0]


def test_the_students_end_is_the_teachers_end_of_turn_and_other_specials_are_text(
    cross, tokenizer, gemma_tokenizer
):
    ended = cross.align(PROMPT, student_ids(tokenizer, "Done."))
    assert ended.teacher_completion_ids[-1] == gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert (ended.student_index[-1], ended.teacher_index[-1], ended.share[-1]) == (2, 2, 1.0)
    cut_off = cross.align(PROMPT, student_ids(tokenizer, "Done.", ended=False))
    assert cut_off.teacher_completion_ids == ended.teacher_completion_ids[:-1]
    at_once = cross.align(PROMPT, [tokenizer.eos_token_id])  # ended before writing anything
    assert at_once.teacher_completion_ids == [ended.teacher_completion_ids[-1]]
    assert at_once.spread(torch.tensor([-0.5])).tolist() == [-0.5]
    # a control token of the student's in mid-text is its text for the teacher
    inside = cross.align(PROMPT, tokenizer("a<|im_start|>b", add_special_tokens=False)["input_ids"])
    assert gemma_tokenizer.decode(inside.teacher_completion_ids) == "a<|im_start|>b"
    assert [s for s, t, w in zip(inside.student_index, inside.teacher_index, inside.share, strict=True)] == [
        0, 1, 1, 1, 1, 1, 1, 2,
    ]  # fmt: skip


def test_the_teacher_reads_its_own_template_and_context_and_a_fused_prompt_end_is_cut_apart(
    cross, tokenizer, gemma_tokenizer
):
    teacher_prompt = with_context(PROMPT, "Reference: 3 + 4 = 7.")
    for text in TEXTS:
        alignment = cross.align(teacher_prompt, student_ids(tokenizer, text))
        assert alignment.teacher_prompt_ids == tokenize_prompt(gemma_tokenizer, teacher_prompt)
        assert gemma_tokenizer.decode(alignment.teacher_completion_ids[:-1]) == text
        # the joined text would fuse the template's last '\n' with the reply's first: cut apart instead
        assert alignment.forced_boundary == text.startswith("\n")
    joined = gemma_tokenizer(
        gemma_tokenizer.decode(alignment.teacher_prompt_ids) + TEXTS[-1], add_special_tokens=False
    )["input_ids"]
    assert gemma_tokenizer.convert_tokens_to_ids("\n\n") in joined


def test_a_reply_cut_inside_a_character_is_scored_up_to_its_last_whole_character(cross, tokenizer):
    ids = tokenizer("ok 😀", add_special_tokens=False)["input_ids"]
    alignment = cross.align(PROMPT, ids[:-1])  # the emoji's last byte never came
    assert alignment.aligned == [True, False]
    assert alignment.teacher_row == [0, -1]
    assert cross.teacher.tokenizer.decode(alignment.teacher_completion_ids) == "ok"


def test_a_tokenizer_that_rewrites_the_text_is_refused(cross, tokenizer):
    """Gemma's normaliser writes a space as '▁', so a '▁' in the text comes back as a space."""
    with pytest.raises(AlignmentError, match="do not write that text back"):
        cross.align(PROMPT, student_ids(tokenizer, "a\u2581b"))


def test_values_sum_to_the_teachers_logprob_of_the_whole_text(cross, tokenizer, gemma_tokenizer, tiny_gemma):
    teacher = load_model(str(tiny_gemma))
    end_of_turn = gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    for text in TEXTS:
        alignment = cross.align(PROMPT, student_ids(tokenizer, text))
        [scored] = completion_logprobs(
            teacher,
            [alignment.teacher_prompt_ids],
            [alignment.teacher_completion_ids],
            gemma_tokenizer.pad_token_id,
        )
        values = alignment.spread(torch.tensor(scored, dtype=torch.float64))
        # the same text, tokenised by the teacher on its own, scored after the teacher's own prompt
        direct_ids = gemma_tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn]
        [direct] = completion_logprobs(
            teacher, [tokenize_prompt(gemma_tokenizer, PROMPT)], [direct_ids], gemma_tokenizer.pad_token_id
        )
        assert len(values) == len(student_ids(tokenizer, text))
        assert values.sum().item() == pytest.approx(sum(direct), abs=1e-4)
        # where both tokenisations have a boundary, the running sums agree exactly
        student_ends = cross.student.spans(student_ids(tokenizer, text, ended=False))[1]
        teacher_ends = cross.teacher.spans(alignment.teacher_completion_ids[:-1])[1]
        running_student, running_teacher = values.cumsum(0).tolist(), torch.tensor(scored).cumsum(0).tolist()
        common = set(student_ends) & set(teacher_ends)
        assert len(common) > 2
        for byte in common:
            assert running_student[student_ends.index(byte)] == pytest.approx(
                running_teacher[teacher_ends.index(byte)], abs=1e-4
            )


def test_with_one_tokenizer_the_alignment_is_the_identity(same, tokenizer, tiny_teacher):
    teacher = load_model(str(tiny_teacher))
    prompt_ids = tokenize_prompt(tokenizer, PROMPT)
    completions = [tokenize_completion(tokenizer, PROMPT, text, prompt_ids) for text in TEXTS]
    direct = completion_logprobs(teacher, [prompt_ids] * len(TEXTS), completions, tokenizer.pad_token_id)
    for ids, direct_logprobs in zip(completions, direct, strict=True):
        alignment = same.align(PROMPT, ids)
        assert alignment.teacher_prompt_ids == prompt_ids
        assert alignment.teacher_completion_ids == ids
        assert alignment.share == [1.0] * len(ids)
        assert all(alignment.on_boundary)
        values = alignment.spread(torch.tensor(direct_logprobs))
        assert values.tolist() == direct_logprobs


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_with_one_tokenizer_the_shared_support_loss_is_the_dense_loss(same, tokenizer, beta):
    support = same.support
    assert len(support.student_rest) == len(support.teacher_rest) == 0
    torch.manual_seed(0)
    student = (torch.randn(6, len(tokenizer), dtype=torch.float64) * 3).requires_grad_()
    teacher = torch.randn(6, len(tokenizer) + 128, dtype=torch.float64) * 3  # padded rows, never a token
    shared = shared_support_jsd(student, teacher, support, beta)
    [shared_grad] = torch.autograd.grad(shared.sum(), student)
    dense = generalized_jsd(student, teacher[:, : len(tokenizer)], beta)
    [dense_grad] = torch.autograd.grad(dense.sum(), student)
    torch.testing.assert_close(shared, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_grad, dense_grad, atol=1e-5, rtol=0)


def test_shared_strings_pair_a_byte_level_space_and_a_space_mark(cross, tokenizer, gemma_tokenizer):
    support = cross.support
    pairs = dict(zip(support.student_ids.tolist(), support.teacher_ids.tolist(), strict=True))

    def pair(student_token: str) -> str | None:
        teacher_id = pairs.get(tokenizer.convert_tokens_to_ids(student_token))
        return None if teacher_id is None else gemma_tokenizer.convert_ids_to_tokens(teacher_id)

    assert pair("Ġthe") == "▁the" and pair("Hello") == "Hello" and pair("ĠcafÃ©") == "▁café"
    # where two Gemma ids write one string, the one Gemma produces: its tab, not the lower-id '<0x09>'
    assert pair("ĉ") == "\t" and pair("Ċ") == "\n"
    assert pair("<|im_end|>") == "<end_of_turn>"
    assert pair("<|im_start|>") is None  # a control token pairs with no text
    assert len(pairs) + len(support.student_rest) == len(tokenizer)
    assert len(pairs) + len(support.teacher_rest) == len(gemma_tokenizer)
    assert support.holds(torch.tensor(student_ids(tokenizer, "Hello world"))).tolist() == [True, True, True]


def test_the_tail_bin_counts_mass_moved_off_the_shared_strings():
    """Restricted to the shared strings, a student could match the teacher's shape there while putting
    most of its mass elsewhere; the tail bin makes that cost."""
    support = SharedSupport(
        torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([2, 3])
    )
    teacher = torch.tensor([[0.6, 0.3, 0.05, 0.05]]).log()
    matching = torch.tensor([[0.6, 0.3, 0.1]]).log()
    off_support = torch.tensor([[0.06, 0.03, 0.91]]).log()  # the same shape on the support, 10x less of it
    assert shared_support_jsd(matching, teacher, support, beta=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert shared_support_jsd(off_support, teacher, support, beta=1.0).item() > 0.5


def test_uld_is_the_distance_between_sorted_probabilities():
    student = torch.tensor([[0.1, 0.7, 0.2]]).log().requires_grad_()
    teacher = torch.tensor([[0.05, 0.2, 0.6, 0.1, 0.05]]).log()
    # sorted: (0.7, 0.2, 0.1) against (0.6, 0.2, 0.1, 0.05, 0.05): 0.1 + 0 + 0 + 0.05 + 0.05
    assert uld_distance(student, teacher, 3, 5).item() == pytest.approx(0.2, abs=1e-6)
    permuted = teacher[:, [2, 0, 4, 1, 3]]
    assert uld_distance(teacher, permuted, 5, 5).item() == pytest.approx(0.0, abs=1e-6)
    uld_distance(student, teacher, 3, 5).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_path_shares_count_the_tokens_on_each_path(cross, tokenizer):
    completions = [
        student_ids(tokenizer, "Hello world  foo 😀"),
        student_ids(tokenizer, "ok 😀", ended=False)[:-1],
    ]
    alignments = [cross.align(PROMPT, ids) for ids in completions]
    shares = path_shares(alignments, completions, cross.support)
    # 7 + 2 tokens: 'Ġfoo' and 'Ģ' start inside a teacher token, the cut emoji is not aligned
    assert shares["tokens"] == 9
    assert shares["shared_support"] == pytest.approx(6 / 9)
    assert shares["fallback"] == pytest.approx(2 / 9)
    assert shares["unaligned"] == pytest.approx(1 / 9)
    assert 0 < shares["shared_string"] < 1


def test_per_byte_nll_is_the_models_nll_of_each_answer_over_its_bytes(cross, gemma_tokenizer, tiny_gemma):
    teacher = load_model(str(tiny_gemma))
    engine = as_engine(teacher, gemma_tokenizer)
    nll = answer_nll(engine, cross.teacher, [PROMPT] * 3, TEXTS[:3], [True, False, True])
    end_of_turn = gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    completions = [
        gemma_tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn] * ended
        for text, ended in zip(TEXTS[:3], [True, False, True], strict=True)
    ]
    prompt = tokenize_prompt(gemma_tokenizer, PROMPT)
    direct = completion_logprobs(teacher, [prompt] * 3, completions, gemma_tokenizer.pad_token_id)
    assert nll == pytest.approx([-sum(lp) for lp in direct], abs=1e-4)
    summary = per_byte_nll(nll, TEXTS[:3])
    assert summary["bytes"] == sum(len(t.encode()) for t in TEXTS[:3])
    assert summary["nll_per_byte"] == pytest.approx(sum(nll) / summary["bytes"])
    assert summary["ci95"][0] <= summary["nll_per_byte"] <= summary["ci95"][1]
    change = per_byte_nll_change("after", "before", [n / 2 for n in nll], nll, TEXTS[:3])
    assert change["difference"] == pytest.approx(-summary["nll_per_byte"] / 2)
    assert change["ci95"][1] < 0
