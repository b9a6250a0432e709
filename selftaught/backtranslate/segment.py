"""The `segment` stage: unlabelled text -> deduplicated segments of 600-3,000 characters.

Each segment later becomes the *response* of an (instruction, response) pair: the backward model Myx
writes an instruction for it. Humpback (Li et al. 2023) took the text that follows an HTML heading in
web pages, kept segments of about 600-3,000 characters, and removed duplicates, navigation/boilerplate
and all-caps headers. Here:

- Sections start at headings: markdown `#` headings, setext and rst underlined (or over- and
  underlined) titles, and HTML `<h1>`-`<h6>` lines. The heading itself is NOT part of the segment, as
  in the paper: the segment is the answer, and "## Installation" on top of an answer reads like a web
  page, not an assistant. Paragraphs are split at blank lines; fenced code blocks stay whole.
- Removed lines (counted in `boilerplate_lines`): markup with no text (badges, images, rst
  substitutions such as `|Build-Status|`, bare HTML tags, rst directives and their options, link
  definitions), "Skip to content", cookie banners, copyright / "All rights reserved" lines, table rules
  and lines made mostly of pipes, menus (`Home | Docs | Blog`, runs of very short lines, a lone word or
  two), and lines that are only or mostly links - unless such a line continues a sentence from the
  line before. Indented and fenced code is only checked for markup, never for menus or links.
- All-caps headings and stand-alone all-caps lines ("FREQUENTLY ASKED QUESTIONS") are dropped and
  counted in `allcaps_headers`; the section under an all-caps heading is kept.
- Paragraphs of one section are packed greedily into segments of at most `max_chars`; a paragraph
  longer than that is cut at the last sentence end (else line end, else space) that leaves a piece of
  at least half of `max_chars`. Pieces under `min_chars` are dropped (`too_short`).
- Duplicates: exact ones (same text after lower-casing and collapsing whitespace) and near ones
  (MinHash over word 5-shingles, 64 permutations, LSH threshold 0.8, and a MinHash Jaccard estimate
  >= 0.8 to confirm an LSH candidate) are dropped; the first in corpus order is kept. 64 permutations
  estimate Jaccard to about +-0.05 at 0.8, enough to catch re-posted pages with a few words changed,
  at half the memory of the usual 128.
- `segment_id` = the first 16 hex digits of sha256 of the normalised text: the same text has the same
  id on every run and machine, whatever else is in the corpus.

Documents {"text", "source"} come from corpus.py. Bad documents (decided per case): a text that is not a
string, a corpus with no documents or no segments: DataError naming the source and the fix; an empty (or
whitespace-only) text and a null text: skipped and counted in `stats["skipped"]`, since web dumps hold
many of them and none is worth stopping a run for.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial

from selftaught.data.loading import DataError

MIN_CHARS, MAX_CHARS = 600, 3000
NEAR_THRESHOLD, NUM_PERM, SHINGLE = 0.8, 64, 5

# ---------------------------------------------------------------------------------------------------
# Splitting one document

ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$")
HTML_HEADING = re.compile(r"^\s*<h[1-6][^>]*>(.*?)</h[1-6]>\s*$", re.I)
RULE = re.compile(r"^ {0,3}([=\-~^\"'`*+#:_])\1{2,}\s*$")  # one character repeated, no inner spaces
FENCE = re.compile(r"^\s*(```+|~~~+)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")

IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]")
RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]+>`_{1,2}")
HTML_LINK = re.compile(r"<a\b[^>]*>(.*?)</a>", re.I)
URL = re.compile(r"\b(?:https?://|www\.)\S+")
SUBSTITUTION = re.compile(r"\|[^|\s](?:[^|]*[^|\s])?\|_{0,2}")
HTML_TAG = re.compile(r"<!--.*?-->|</?[a-zA-Z][^>]*>")
LINK_DEFINITION = re.compile(r"^\s*\[[^\]]+\]:\s*\S+")
RST_DIRECTIVE = re.compile(r"^\s*\.\.\s")
RST_OPTION = re.compile(r"^\s+:[\w -]+:(\s|$)")
BOILERPLATE = re.compile(
    r"\bskip to (?:main )?(?:content|navigation)\b"
    r"|\b(?:we|this (?:web)?site) uses? cookies\b|\baccept (?:all )?cookies\b|\bcookie (?:policy|settings)\b"
    r"|\ball rights reserved\b"
    r"|(?:©|\(c\)|\bcopyright\b).{0,40}\b(?:19|20)\d\d\b"
    r"|^\W*(?:privacy policy|terms of (?:use|service)|back to top|sign in|log ?in|sign up|share this)\W*$",
    re.I,
)
NAV_SEPARATOR = re.compile(r"\s+[·•»›>]\s+|\s*\|\s*")
SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


def split_document(
    text: str, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS, stats: Counter | None = None
) -> list[str]:
    """Segment texts of one document, in order. `stats`, if given, is updated with what was dropped."""
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars, got min_chars={min_chars}, max_chars={max_chars}")
    stats = stats if stats is not None else Counter()
    segments = []
    for section in sections(text, stats):
        paragraphs = [p for p in (clean_paragraph(p, stats) for p in section) if p]
        stats["paragraphs"] += len(paragraphs)
        segments += pack(paragraphs, min_chars, max_chars, stats)
    return segments


def sections(text: str, stats: Counter) -> list[list[list[str]]]:
    """Sections (split at headings) of paragraphs (split at blank lines) of raw lines.

    A fenced code block is one paragraph, marked by its fence line, so blank lines and `#` comments
    inside it are left alone.
    """
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    result: list[list[list[str]]] = [[]]
    paragraph: list[str] = []

    def end_paragraph() -> None:
        nonlocal paragraph
        if paragraph:
            result[-1].append(paragraph)
        paragraph = []

    def heading(title: str) -> None:
        end_paragraph()
        if is_allcaps(title):
            stats["allcaps_headers"] += 1
        if result[-1]:
            result.append([])

    i = 0
    while i < len(lines):
        line = lines[i]
        after = lines[i + 1] if i + 1 < len(lines) else ""
        fence = FENCE.match(line)
        if fence:
            end_paragraph()
            block = [line]
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                block.append(lines[i])
                i += 1
            block.append(lines[i] if i < len(lines) else fence.group(1))
            result[-1].append(block)
            i += 1
        elif match := ATX_HEADING.match(line):
            heading(match.group(2) or "")
            i += 1
        elif match := HTML_HEADING.match(line):
            heading(HTML_TAG.sub("", match.group(1)))
            i += 1
        elif (
            RULE.match(line)
            and after.strip()
            and not paragraph
            and i + 2 < len(lines)
            and RULE.match(lines[i + 2])
        ):
            heading(after)  # rst title with over- and underline
            i += 3
        elif (
            line.strip()
            and not line[0].isspace()
            and not paragraph
            and RULE.match(after)
            and not RULE.match(line)
        ):
            heading(line)  # setext / rst underlined title
            i += 2
        elif not line.strip() or RULE.match(line):
            if line.strip():
                stats["boilerplate_lines"] += 1  # a horizontal rule: a paragraph break, not text
            end_paragraph()
            i += 1
        else:
            paragraph.append(line)
            i += 1
    end_paragraph()
    return result


def is_allcaps(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 3 and all(c.isupper() for c in letters)


def is_caps_header(line: str) -> bool:
    """A short all-caps line without end punctuation (FREQUENTLY ASKED QUESTIONS), not a shouted sentence."""
    short = len(line.split()) <= 8 and not re.search(r"[.!?,;]$", line)
    return short and is_allcaps(line) and not is_code(line)


def is_code(line: str) -> bool:
    return line.startswith(("    ", "\t"))


def visible_text(line: str) -> tuple[str, str, bool]:
    """(the line as a reader sees it, the text outside links, whether it had any markup)."""
    rendered, plain = IMAGE.sub(" ", line), IMAGE.sub(" ", line)
    for pattern in (MD_LINK, RST_LINK, HTML_LINK):
        rendered = pattern.sub(lambda m: " " + next((g for g in m.groups() if g), "") + " ", rendered)
        plain = pattern.sub(" ", plain)
    plain = URL.sub(" ", plain)  # a bare URL is link text
    for pattern in (SUBSTITUTION, HTML_TAG):
        rendered, plain = pattern.sub(" ", rendered), pattern.sub(" ", plain)
    return rendered, plain, rendered != line


def word_chars(text: str) -> int:
    return len(re.findall(r"\w", text))


def is_menu_line(line: str) -> bool:
    """`Home | Docs | Blog` or `Home > Docs > API`: three or more short items between separators."""
    items = [item for item in NAV_SEPARATOR.split(line.strip()) if item.strip()]
    return len(items) >= 3 and all(
        len(item.split()) <= 3 and not SENTENCE_END.search(item + " ") for item in items
    )


def is_short_line(line: str) -> bool:
    """A lone word or two with no punctuation: a menu entry or button label, not prose."""
    stripped = line.strip()
    return (
        len(stripped.split()) <= 2
        and len(stripped) <= 25
        and not is_code(line)
        and not LIST_ITEM.match(line)
        and not re.search(r"[.!?:;,)\]`]$", stripped)
    )


def line_is_boilerplate(line: str, previous: str | None, directive: bool) -> bool:
    """Whether one line is markup, navigation or boilerplate; `previous` is the last line kept."""
    if RST_DIRECTIVE.match(line) or LINK_DEFINITION.match(line) or (directive and RST_OPTION.match(line)):
        return True
    rendered, plain, markup = visible_text(line)
    if markup and word_chars(rendered) < 3:
        return True  # badges, images, substitutions, bare tags
    if BOILERPLATE.search(line):
        return True
    if is_code(line):
        return False
    stripped = line.strip()
    if sum(c in "|+-=:~_*" for c in stripped) >= 0.6 * len(stripped.replace(" ", "")):
        return True  # table rules, rows that are mostly pipes
    if is_menu_line(rendered):
        return True
    link_chars = word_chars(rendered) - word_chars(plain)
    if not link_chars:
        return False
    continues = (
        previous is not None and not re.search(r"[.!?:;]$", previous.strip()) and not LIST_ITEM.match(line)
    )
    mostly_links = len(re.findall(r"\w+", plain)) <= 3 or link_chars >= 0.75 * word_chars(rendered)
    return mostly_links and not continues


def clean_paragraph(lines: list[str], stats: Counter) -> str:
    """The paragraph's text with boilerplate lines removed ("" if nothing is left)."""
    if FENCE.match(lines[0]):
        return "\n".join(lines)
    kept: list[str] = []
    directive = False
    for line in lines:
        directive = bool(RST_DIRECTIVE.match(line)) or (directive and bool(RST_OPTION.match(line)))
        if line_is_boilerplate(line, kept[-1] if kept else None, directive):
            stats["boilerplate_lines"] += 1
        else:
            kept.append(line)
    if kept and is_caps_header(kept[0]):
        stats["allcaps_headers"] += 1
        kept = kept[1:]
    if kept and all(is_short_line(line) for line in kept) and len(kept) != 2:
        stats["boilerplate_lines"] += len(kept)  # a menu: a run of one- or two-word lines, or one alone
        return ""
    return "\n".join(kept).strip("\n")


def split_long(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most max_chars: at a sentence end, else a line end, else a space."""
    pieces = []
    while len(text) > max_chars:
        window = text[: max_chars + 1]
        cut = 0
        for pattern in (SENTENCE_END, re.compile(r"\n"), re.compile(r"\s")):
            ends = [m.end() for m in pattern.finditer(window)]
            if ends and ends[-1] > max_chars // 2:
                cut = ends[-1]
                break
        cut = cut or max_chars
        pieces.append(text[:cut].rstrip())
        # After a line end the next line keeps its indentation (code); inside a line, spaces go.
        text = text[cut:] if text[cut - 1] == "\n" else text[cut:].lstrip()
    return [*pieces, text] if text.strip() else pieces


def pack(paragraphs: list[str], min_chars: int, max_chars: int, stats: Counter) -> list[str]:
    """Greedily join consecutive paragraphs (of one section) while the result fits in max_chars."""
    units = [piece for p in paragraphs for piece in split_long(p, max_chars)]
    segments: list[str] = []
    current: list[str] = []

    def flush() -> None:
        # A segment becomes a response: its indentation is relative to the segment, not the page. A
        # leading space would also merge with the chat template's "\n" before the answer, so the tokens
        # the model trains on would differ from those it answers after (TRL warns of exactly this).
        text = textwrap.dedent("\n\n".join(current)).lstrip()
        if len(text) >= min_chars:
            segments.append(text)
        elif text:
            stats["too_short"] += 1

    for unit in units:
        if current and len("\n\n".join(current)) + 2 + len(unit) > max_chars:
            flush()
            current = []
        current.append(unit)
    flush()
    return segments


# ---------------------------------------------------------------------------------------------------
# The corpus


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def segment_id(text: str) -> str:
    """Stable id: sha256 of the normalised text, so it depends on nothing but the text."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


def shingles(text: str) -> set[bytes]:
    words = re.findall(r"\w+", normalise(text))
    if len(words) <= SHINGLE:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + SHINGLE]).encode("utf-8") for i in range(len(words) - SHINGLE + 1)}


class NearDuplicates:
    """MinHash LSH over word 5-shingles; an LSH candidate counts only if its estimated Jaccard >= 0.8."""

    def __init__(self, threshold: float = NEAR_THRESHOLD, num_perm: int = NUM_PERM):
        from datasketch import MinHash, MinHashLSH

        self.minhash = lambda: MinHash(num_perm=num_perm, seed=1)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.threshold = threshold
        self.kept: dict[str, object] = {}

    def seen(self, key: str, text: str) -> bool:
        """Whether `text` is a near duplicate of a text added before; if not, it is added."""
        minhash = self.minhash()
        minhash.update_batch(sorted(shingles(text)))
        if any(minhash.jaccard(self.kept[other]) >= self.threshold for other in self.lsh.query(minhash)):
            return True
        self.lsh.insert(key, minhash)
        self.kept[key] = minhash
        return False


def document_pieces(
    numbered: tuple[int, dict], min_chars: int, max_chars: int
) -> tuple[str, list[str], dict]:
    """(source, segments before deduplication, counts) of one document: the part that runs in parallel."""
    number, doc = numbered
    counts: Counter = Counter(documents=1)
    text, source = doc.get("text"), doc.get("source")
    if not source:
        raise DataError(f"document {number}: no 'source'; give every document a source (file:row)")
    if text is None:
        counts["skipped_null_text"] += 1
        return str(source), [], counts
    if not isinstance(text, str):
        raise DataError(f"{source}: the text is {type(text).__name__}, not a string; choose the text column")
    if not text.strip():
        counts["skipped_empty_text"] += 1
        return str(source), [], counts
    pieces = split_document(text, min_chars, max_chars, counts)
    counts["documents_without_segments"] += int(not pieces)
    return str(source), pieces, counts


def segment_corpus(
    documents: Iterable[dict],
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    max_segments: int | None = None,
    map_documents: Callable[[Callable, Iterable], Iterable] = map,
) -> tuple[list[dict], dict]:
    """Segments {segment_id, text, source, chars} of all documents, deduplicated, and what happened.

    Documents are read in order and reading stops once `max_segments` segments are out, so a capped run
    over a streamed Hub corpus reads only what it needs. `map_documents` splits the documents (lazily,
    in order; e.g. `selftaught.data.ray_pipeline.ray_map`); deduplication is one pass here, after it.
    """
    counts: Counter = Counter()
    seen_ids: set[str] = set()
    near = NearDuplicates()
    segments: list[dict] = []
    split = partial(document_pieces, min_chars=min_chars, max_chars=max_chars)
    for source, pieces, doc_counts in map_documents(split, enumerate(documents)):
        if max_segments is not None and len(segments) >= max_segments:
            break
        counts.update(doc_counts)
        for piece in pieces:
            if max_segments is not None and len(segments) >= max_segments:
                break
            key = segment_id(piece)
            if key in seen_ids:
                counts["exact_duplicates"] += 1
            elif near.seen(key, piece):
                counts["near_duplicates"] += 1
            else:
                seen_ids.add(key)
                segments.append({"segment_id": key, "text": piece, "source": source, "chars": len(piece)})
    skipped = {k.removeprefix("skipped_"): n for k, n in counts.items() if k.startswith("skipped_")}
    stats = {
        "documents": counts["documents"],
        "skipped": dict(sorted(skipped.items())),
        "documents_without_segments": counts["documents_without_segments"],
        "paragraphs": counts["paragraphs"],
        "boilerplate_lines": counts["boilerplate_lines"],
        "allcaps_headers": counts["allcaps_headers"],
        "too_short": counts["too_short"],
        "exact_duplicates": counts["exact_duplicates"],
        "near_duplicates": counts["near_duplicates"],
        "segments": len(segments),
        "truncated": max_segments is not None and len(segments) >= max_segments,
        "segmenter": {
            "min_chars": min_chars,
            "max_chars": max_chars,
            "near_threshold": NEAR_THRESHOLD,
            "num_perm": NUM_PERM,
            "shingle_words": SHINGLE,
        },
    }
    if not counts["documents"]:
        raise DataError(
            "the corpus has no documents; give a folder of .txt/.md/.rst files, a .jsonl/.parquet file "
            "with a text column, or a Hub dataset name"
        )
    if not segments:
        raise DataError(
            f"{counts['documents']} documents gave no segments ({sum(skipped.values())} empty, "
            f"{counts['too_short']} pieces under min_chars={min_chars}, {counts['boilerplate_lines']} "
            f"boilerplate lines); give documents with paragraphs of prose or lower min_chars"
        )
    return segments, stats
