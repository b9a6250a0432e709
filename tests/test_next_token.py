"""The shared-prefix scoring pass gives each prompt the distribution it would get alone."""

from __future__ import annotations

import pytest
import torch

from selftaught.generation.next_token import MIN_SHARED_PREFIX, next_token_probs, shared_prefix_length
from selftaught.models import load_model
from selftaught.scoring.ratings import RUBRIC, build_rating_prompt

CANDIDATES = [16, 17, 18, 19, 20]


@pytest.fixture(scope="module")
def tiny(tiny_student):
    return load_model(str(tiny_student))


def alone(model, prompt: list[int]) -> torch.Tensor:
    """The reference: one unpadded forward pass over the whole prompt."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1, CANDIDATES]
    return logits.double().softmax(-1)


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts still get one token
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.parametrize("prefix_len", [MIN_SHARED_PREFIX + 24, 3])  # with and without reuse
def test_each_prompt_scores_as_if_alone_in_the_callers_order(tiny, prefix_len):
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, 5000, (prefix_len,), generator=generator).tolist()
    lengths = [5, 1, 17, 9, 2, 12, 30]  # different suffix lengths: padding between prefix and suffix
    prompts = [prefix + torch.randint(100, 5000, (n,), generator=generator).tolist() for n in lengths]
    got = next_token_probs(tiny, prompts, CANDIDATES, pad_id=0, batch_size=3)
    want = torch.stack([alone(tiny, p) for p in prompts])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not tiny.training


def test_rating_prompts_share_the_rubric(tokenizer):
    """The rubric leads every rating prompt, so its KV cache is computed once per call."""
    a = build_rating_prompt(tokenizer, "What is 2 + 3?", "5")
    b = build_rating_prompt(tokenizer, "Name a colour.", "Blue is a colour, one of many.")
    shared = shared_prefix_length([a, b])
    assert RUBRIC.splitlines()[-1] in tokenizer.decode(a[:shared])
    assert shared > len(a) / 2
