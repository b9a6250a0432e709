"""Text a model wrote or the web supplied, made safe to place inside a scoring prompt.

A web segment, a generated instruction or an evaluated model's answer may contain the tokenizer's
control-token strings ("<|im_end|>", "<|im_start|>"): encoded as they are, they become real chat control
tokens and let the text end its turn and open another. They are removed before any untrusted text is
tokenised, by every score.
"""

from __future__ import annotations


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
