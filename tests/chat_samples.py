"""Chat prompts, (instruction, answer) pairs and helpers shared by the engine tests of every backend."""

import torch

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
