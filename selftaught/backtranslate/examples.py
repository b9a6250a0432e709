"""The training examples of instruction backtranslation, tagged as the paper tags them.

Seed pairs teach M(k) under "Answer in the style of an AI Assistant.", selected augmented pairs under
"Answer with knowledge from web search." (at inference the assistant tag is used), and Myx learns the
pairs turned round: the response is its prompt, the instruction its completion.
"""

from __future__ import annotations

from selftaught.scoring.likelihood import BACKWARD_PROMPT
from selftaught.training.sft import sft_example

SEED_TAG = "Answer in the style of an AI Assistant."
WEB_TAG = "Answer with knowledge from web search."


def seed_example(pair: dict) -> dict:
    return sft_example(pair["instruction"], pair["response"], SEED_TAG)


def web_example(pair: dict) -> dict:
    return sft_example(pair["instruction"], pair["response"], WEB_TAG)


def backward_example(instruction: str, response: str) -> dict:
    """Myx's training example: the response is the prompt (after BACKWARD_PROMPT), the instruction the
    completion; `backward` curation scores exactly this prompt."""
    return sft_example(BACKWARD_PROMPT + response, instruction)
