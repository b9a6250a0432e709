"""The new-domain evaluation: corpus documents no model of the run saw, asked about as a user would ask.

Humpback's claim is that curated backtranslated pairs teach a model to answer instructions in the corpus's
domain; the oasst held-out set measures the seed's domain only. So a few corpus documents are held out of
the corpus the run segments and augments, chosen by the run's seed: a document is a candidate when a
digest of the seed and its text falls in one of HOLD_ONE_IN buckets (so the held-out documents are spread
through the corpus, and a streamed corpus is read only as far as needed), and the first `count` candidates
that the segmenter would cut at least one segment from are held out. `segment` skips them; the evaluation
reads the corpus again, finds the same documents, and pairs each with an instruction a user would ask
about it, written by a fixed template picked by the same digest (per corpus kind: a package's name for the
default corpus of installed package descriptions, a document's title otherwise). The gold answer is the
document's own text as the segmenter cleans it, cut to a token budget; each model's NLL per token of it
is `new_domain_nll`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

from transformers import PreTrainedTokenizerBase

from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.corpus import installed_package_descriptions, read_corpus
from selftaught.backtranslate.segment import split_document

HOLD_ONE_IN = 3  # one document in 3 is a candidate: held-out documents come from across the corpus
PACKAGE_SOURCE = re.compile(r"pypi-metadata:(?P<name>[^=]+)==")  # corpus.installed_package_descriptions
PACKAGE_TEMPLATES = (
    "What is the Python package {name} for?",
    "Describe {name}.",
    "What does the Python library {name} do?",
    "Tell me about the {name} package.",
)
DOCUMENT_TEMPLATES = ("Tell me about {title}.", "Describe {title}.", "Write about {title}.")
TITLE_CHARS = 80


def corpus_documents(config: BacktranslateConfig) -> Iterator[dict] | list[dict]:
    """The documents `--corpus` names (read lazily), or the installed packages' descriptions."""
    if config.corpus is None:
        return installed_package_descriptions()
    return read_corpus(
        config.corpus, text_column=config.text_column, split=config.corpus_split, config=config.corpus_config
    )


def digest(seed: int, text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "big")


def holding_out(
    documents: Iterable[dict], count: int, seed: int, min_chars: int, max_chars: int
) -> Iterator[tuple[bool, dict]]:
    """Every document, in order, with whether it is held out (see the module docstring)."""
    held = 0
    for doc in documents:
        text = doc.get("text")
        candidate = held < count and isinstance(text, str) and digest(seed, text) % HOLD_ONE_IN == 0
        if candidate and split_document(text, min_chars, max_chars):
            held += 1
            yield True, doc
        else:
            yield False, doc


def without_held_out(documents: Iterable[dict], config: BacktranslateConfig, seed: int) -> Iterator[dict]:
    """The documents `segment` may cut: all but the held-out ones, whose count it says once it stops."""
    count, held = config.eval_new_domain_documents, 0
    try:
        for is_held, doc in holding_out(documents, count, seed, config.min_chars, config.max_chars):
            held += is_held
            if not is_held:
                yield doc
    finally:
        if held:
            print(
                f"[segment] {held} documents held out for the evaluation's new-domain NLL, never segmented "
                "(--eval_new_domain_documents)"
            )


def held_out_documents(documents: Iterable[dict], config: BacktranslateConfig, seed: int) -> list[dict]:
    """The held-out documents, read only as far as the last of them."""
    count = config.eval_new_domain_documents
    found: list[dict] = []
    if not count:
        return found
    for held, doc in holding_out(documents, count, seed, config.min_chars, config.max_chars):
        if held:
            found.append(doc)
        if len(found) == count:
            break
    return found


def title(text: str) -> str:
    """A document's title: its first line with words, markdown/rst decoration stripped, cut short."""
    for line in text.splitlines():
        words = re.sub(r"^[#=*\-\s]+|[#=*\s]+$", "", line).strip()
        if re.search(r"\w", words):
            return words[:TITLE_CHARS].rstrip(" .:")
    return "this document"


def instruction_for(document: dict, seed: int) -> str:
    """A user's question about `document`, by a template fixed by the seed and the document's text."""
    pick = digest(seed, "template\0" + document["text"])
    if match := PACKAGE_SOURCE.match(str(document.get("source", ""))):
        return PACKAGE_TEMPLATES[pick % len(PACKAGE_TEMPLATES)].format(name=match["name"])
    return DOCUMENT_TEMPLATES[pick % len(DOCUMENT_TEMPLATES)].format(title=title(document["text"]))


def new_domain_pairs(
    documents: list[dict], config: BacktranslateConfig, seed: int, tokenizer: PreTrainedTokenizerBase
) -> list[dict]:
    """{id, instruction, response} per held-out document: the response is the document's text as the
    segmenter cleans it (its segments in order), cut to `eval_new_domain_tokens` tokens of `tokenizer`."""
    pairs = []
    for doc in documents:
        text = "\n\n".join(split_document(doc["text"], config.min_chars, config.max_chars))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.eval_new_domain_tokens]
        response = tokenizer.decode(ids, skip_special_tokens=True)
        pairs.append(
            {
                "id": f"{digest(seed, doc['text']):016x}",
                "instruction": instruction_for(doc, seed),
                "response": response,
            }
        )
    return pairs
