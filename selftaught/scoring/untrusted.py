"""Text a model wrote or the web supplied, made safe to place inside a scoring prompt.

A web segment, a generated instruction or an evaluated model's answer may contain the tokenizer's
control-token strings ("<|im_end|>", "<|im_start|>"): encoded as they are, they become real chat control
tokens and let the text end its turn and open another. They are removed before any untrusted text is
tokenised, by every score.

A rater that reads untrusted text (the rubric, the judge) also sees it datamarked (`datamark`): every
run of whitespace shown as DATAMARK, so that words addressed to the rater inside it do not read as ours
(the "spotlighting" of Hines et al., 2024, "Defending Against Indirect Prompt Injection Attacks With
Spotlighting"); ratings.py measures what it changes.
"""

from __future__ import annotations

import re

DATAMARK = "^"
WHITESPACE = re.compile(r"\s+")


def special_token_strings(tokenizer) -> list[str]:
    """Every added/special token string, longest first: each would be encoded as a control token."""
    tokens = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    return sorted((t for t in tokens if t), key=len, reverse=True)


def strip_special_tokens(text: str, specials: list[str]) -> str:
    """`text` without any control-token string, repeated until none is left (no splicing one together)."""
    while True:
        before = text
        for token in specials:
            text = text.replace(token, "")
        if text == before:
            return text


def datamark(text: str) -> str:
    """`text` with every run of whitespace shown as DATAMARK."""
    return WHITESPACE.sub(DATAMARK, text.strip())
