"""Chat prompts, (instruction, answer) pairs and helpers shared by the engine tests of every backend."""

import torch

from selftaught.generation.base import TopLogprobs

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Explain what a CPU does in one sentence.",
    "Name a famous painter.",
    "How do I boil an egg?",
    "Translate 'good morning' to Spanish.",
]
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a poem about cats.", "Buy cheap watches at www.example.com! Best prices!"),
    ("How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it in cold water."),
    ("Explain photosynthesis.", "lol idk"),
]


def chat_prompts(tokenizer, questions: list[str]) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in questions
    ]


@torch.no_grad()
def logit_gaps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Per completion token: HF's top logit minus the logit of the token actually there (0 = argmax)."""
    logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
    return logits.max(-1).values - logits.gather(-1, torch.tensor(completion)[:, None])[:, 0]


def scored_pairs(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """PAIRS as (chat prompts, answers ending in EOS): completions to score. The spam answer to the cat poem
    has tokens far outside any top-K of the teacher."""
    prompts = chat_prompts(tokenizer, [question for question, _ in PAIRS])
    answers = [tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id] for _, a in PAIRS]
    return prompts, answers


def assert_same_top_k(reference: TopLogprobs, top: TopLogprobs, atol: float) -> None:
    """`top` (K per position) is the top-K of the distribution that `reference` (a wider top-K of the same
    completion) describes: the same K largest log-probs, each of its ids with the log-prob the reference gives
    it (so ids may differ only between tokens tied within `atol`), and the same log-prob of each actual token.
    """
    k = top.top_ids.shape[-1]
    assert (
        top.top_ids.dtype == torch.int64
        and top.top_logprobs.dtype == top.token_logprobs.dtype == torch.float32
    )
    assert top.top_ids.shape == top.top_logprobs.shape == (len(reference.token_logprobs), k)
    torch.testing.assert_close(top.top_logprobs, reference.top_logprobs[:, :k], atol=atol, rtol=0)
    torch.testing.assert_close(top.token_logprobs, reference.token_logprobs, atol=atol, rtol=0)
    for t, (ids, logprobs) in enumerate(zip(top.top_ids.tolist(), top.top_logprobs.tolist(), strict=True)):
        known = dict(zip(reference.top_ids[t].tolist(), reference.top_logprobs[t].tolist(), strict=True))
        for token, logprob in zip(ids, logprobs, strict=True):
            assert token in known and abs(known[token] - logprob) <= atol, (t, token, logprob)


def assert_some_tokens_outside_the_top_k(tops: list[TopLogprobs], completions: list[list[int]]) -> None:
    """Some actual tokens lie outside their position's top-K, and got their own log-prob, below the K-th."""
    tokens = torch.tensor([t for c in completions for t in c])
    outside = ~(torch.cat([top.top_ids for top in tops]) == tokens[:, None]).any(-1)
    assert outside.any()
    kth = torch.cat([top.top_logprobs[:, -1] for top in tops])
    assert (torch.cat([top.token_logprobs for top in tops]) < kth)[outside].all()
