"""Teachers with another tokenizer: the student's text, scored by the teacher, mapped back onto its tokens.

Two tokenizers cut the same text into different tokens, so token ids cannot be compared; bytes can. Every
token id of either tokenizer stands for a run of UTF-8 bytes (`ByteVocabulary`): a byte-level BPE token
('Ġworld') for the bytes its characters encode, a SentencePiece token ('▁world') for its text with '▁' as a
space, a byte-fallback token ('<0xE4>') for its one byte, an added or special token for its content.
Offsets in characters (what `return_offsets_mapping` gives) cannot place a boundary inside a character,
and byte-level BPE puts one there whenever it splits an emoji or a CJK character into two tokens; bytes
always can.

What the teacher scores (`CrossTokenizer.align`): the student's completion is turned into text (its tokens'
bytes), the teacher's prompt is rendered with the teacher's own chat template (the `--teacher_context`
prompt when there is one), and the joined text is tokenised by the teacher, so that the completion is cut
as the teacher would cut it after its prompt. Where the joined tokenisation has no boundary at the end of
the prompt (a Gemma template ends in '\\n' and a completion that starts with '\\n' fuses into '\\n\\n'), the
prompt and the completion are tokenised apart: the teacher is prompted exactly as for generation, and
scores a tokenisation of the completion text that starts where its reply starts.

How the teacher's log-probabilities reach the student's tokens (`CompletionAlignment.spread`): each
teacher token's log-probability is shared among the student tokens that overlap it, in proportion to the
bytes they share. Equivalently, the teacher's cumulative log-probability of the text, known exactly at its
own token boundaries, is interpolated linearly in bytes between them, and each student token gets the
increase over its span. So:
- the values over a completion sum to the teacher's log-probability of the whole text (each teacher token
  is shared out once, in full);
- at every byte where both tokenisations have a boundary, the running sum is exactly the teacher's
  log-probability of the text so far, and a student token whose span is a run of whole teacher tokens gets
  exactly their log-probability (with the same tokenizer, exactly its own);
- a token that straddles a boundary is split rather than given wholly to one side, so no student token
  gets 0 (a teacher "certain" of it) just because a teacher token ends after it; shares are by bytes, not
  characters, because the two sides' boundaries may fall inside one character.

Samples that are not their tokenizer's own tokenisation (`CompletionAlignment.canonical` False): a sampled
completion may cut its text otherwise than its tokenizer would ('Ċ' 'Ċ' where the tokenizer writes 'ĊĊ').
The teacher reads the text, so it scores the tokenisation its tokenizer makes of it, even when that is the
student's own tokenizer: the sequence-level identity holds (the values sum to the teacher's log-probability
of the text, i.e. of its canonical tokenisation), the token-level one does not (the two student tokens
share the teacher's 'ĊĊ' by bytes, and the teacher predicts what follows from the canonical tokens). With
one tokenizer on both sides, runs align by token ids instead (`distill.cross_teacher.choose_alignment`),
which scores the exact ids; a cross-tokenizer run counts its non-canonical completions.

Special tokens: a student token that ends the completion (its EOS, its end of turn) has no text; it is
paired with the token the teacher's chat template ends an assistant turn with, scored after the whole
text. Any other student special token is text like any other (its content), as the teacher reads it.
A completion whose bytes are not valid UTF-8 (cut off inside a character at the token limit) is scored up
to its longest valid prefix of whole tokens; the tokens after it are not aligned (`aligned` False).

Tokenizers whose tokens do not write back the text they were made from are refused with an
`AlignmentError` naming the text: those that normalise text (NFKC), that add a dummy-prefix space (Llama 2,
Mistral v1), or Gemma given a literal '▁' (its normaliser reads every space as one). Vocabularies other
than byte-level BPE and SentencePiece-style (WordPiece) are refused when they are read.

Shared strings (`SharedSupport`): the token strings both vocabularies hold (as bytes, so 'Ġ3' and '▁3'
are one string ' 3'), as two index lists, for the distribution-level losses in
`selftaught.training.cross_tokenizer_losses`.

Written here rather than taken from a library: TRL's GOLD trainer aligns by merging token strings and rllm
by character spans; neither exposes a byte-exact, sum-preserving mapping we could call.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPACE_MARK = "\u2581"  # SentencePiece's '▁': a space
BYTE_FALLBACK = re.compile(r"<0x([0-9A-F]{2})>")
MARK = "SELFTAUGHT-REPLY"  # where an assistant reply ends in a rendering (no template trims or rewrites it)


class AlignmentError(ValueError):
    """A tokenizer's tokens do not reproduce the text they were made from, byte for byte."""


def _decoder_kinds(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The types of the tokenizer's decoder and of its parts ('ByteLevel', 'Replace', 'ByteFallback')."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise AlignmentError(
            f"{type(tokenizer).__name__} has no fast (tokenizers) backend to read tokens from"
        )
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders") or [decoder]
    return {part.get("type") for part in parts}


def token_pieces(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """The UTF-8 bytes each token id stands for, for byte-level BPE and SentencePiece-style vocabularies."""
    kinds = _decoder_kinds(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    if "ByteLevel" in kinds:
        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

        def piece(token: str) -> bytes:
            return bytes(byte_of[char] for char in token)

    elif kinds & {"Replace", "Metaspace"}:

        def piece(token: str) -> bytes:
            fallback = BYTE_FALLBACK.fullmatch(token)
            return bytes([int(fallback[1], 16)]) if fallback else token.replace(SPACE_MARK, " ").encode()

    else:
        raise AlignmentError(
            f"{tokenizer.name_or_path}: its decoder ({sorted(kinds)}) is neither byte-level BPE nor "
            "SentencePiece-style, so its tokens cannot be mapped to bytes"
        )
    return [added[i].encode() if i in added else piece(token) for i, token in enumerate(tokens)]


def chat_prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt as the chat template writes it, ending where the assistant's reply begins."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase, control: Collection[int]) -> int:
    """The control token the chat template closes an assistant turn with (SmolLM2 '<|im_end|>', Gemma
    '<end_of_turn>'), else the EOS: what a reply is scored to end with."""
    if tokenizer.chat_template is None:
        return tokenizer.eos_token_id
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": MARK}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    after = rendered[rendered.rindex(MARK) + len(MARK) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return next((i for i in ids if i in control), tokenizer.eos_token_id)


@dataclass(frozen=True)
class Tokenized:
    """A text tokenised after a prompt: the prompt's ids, the text's, and where each text token starts and
    ends in the text's UTF-8 bytes."""

    prompt_ids: list[int]
    text_ids: list[int]
    starts: list[int]
    ends: list[int]
    # no token boundary where the prompt ends in the joined tokenisation: prompt and text were cut apart
    forced_boundary: bool


class ByteVocabulary:
    """One tokenizer's tokens as bytes, its control (special) tokens, and its end-of-turn token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.pieces = token_pieces(tokenizer)
        self.control = frozenset(
            i for i, t in tokenizer.added_tokens_decoder.items() if t.special
        ) | frozenset(tokenizer.all_special_ids)
        self.end_of_turn = end_of_turn_id(tokenizer, self.control)

    def spans(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Where each token starts and ends in the bytes of the ids' text."""
        ends, start = [], 0
        for i in ids:
            start += len(self.pieces[i])
            ends.append(start)
        starts = [ends[k] - len(self.pieces[i]) for k, i in enumerate(ids)]
        return starts, ends

    def encode(self, text: str) -> list[int]:
        """`text`'s ids (control-token strings become control tokens, as in a rendered template), checked to
        reproduce its bytes."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        self._check(ids, text)
        return ids

    def _check(self, ids: Sequence[int], text: str) -> None:
        written, expected = b"".join(self.pieces[i] for i in ids), text.encode()
        if written != expected:
            at = len(os.path.commonprefix([written, expected]))
            raise AlignmentError(
                f"{self.tokenizer.name_or_path}: its tokens of {text[:60]!r}... do not write that text back "
                f"(they differ from byte {at}: {written[at : at + 12]!r}); its normaliser rewrites text, "
                "so it cannot be aligned by bytes"
            )

    def tokenize_after(self, prompt_text: str, text: str) -> Tokenized:
        """`text` as this tokenizer cuts it after `prompt_text` (see the module's docstring)."""
        ids = self.encode(prompt_text + text)
        _, ends = self.spans(ids)
        prompt_bytes = len(prompt_text.encode())
        cut = bisect.bisect_left(ends, prompt_bytes)
        forced = prompt_bytes > 0 and (cut == len(ends) or ends[cut] != prompt_bytes)
        if forced:
            prompt_ids, text_ids = self.encode(prompt_text), self.encode(text)
        else:
            prompt_ids, text_ids = (ids[: cut + 1], ids[cut + 1 :]) if prompt_bytes else ([], ids)
        starts, ends = self.spans(text_ids)
        return Tokenized(prompt_ids, text_ids, starts, ends, forced)

    @cached_property
    def by_string(self) -> dict[tuple[bool, bytes], int]:
        """(is a control token, bytes) -> the id this tokenizer writes that string with. Where ids share
        bytes (Gemma's '\\n' and '<0x0A>'), the one the tokenizer produces for the string wins."""
        found: dict[tuple[bool, bytes], list[int]] = {}
        for i, piece in enumerate(self.pieces):
            if piece:
                found.setdefault((i in self.control, piece), []).append(i)
        return {key: self._preferred(ids, key[1]) for key, ids in found.items()}

    def _preferred(self, ids: list[int], piece: bytes) -> int:
        if len(ids) == 1:
            return ids[0]
        try:
            encoded = self.tokenizer(piece.decode(), add_special_tokens=False)["input_ids"]
        except UnicodeDecodeError:
            encoded = []
        return encoded[0] if len(encoded) == 1 and encoded[0] in ids else ids[0]


@dataclass(frozen=True)
class CompletionAlignment:
    """How one student completion maps onto the teacher's tokens.

    The teacher scores `teacher_completion_ids` after `teacher_prompt_ids`; teacher token `teacher_index[k]`
    gives `share[k]` of its log-probability to student token `student_index[k]`.
    """

    teacher_prompt_ids: list[int]
    teacher_completion_ids: list[int]
    student_index: list[int]
    teacher_index: list[int]
    share: list[float]
    # per student token: it starts where a teacher token starts, so both models predict the next token
    # from the same text (the shared-support loss applies)
    on_boundary: list[bool]
    # per student token: the teacher token whose next-token distribution it is compared with (the one
    # holding its first byte; for the end token, the teacher's end token); -1 where not aligned
    teacher_row: list[int]
    aligned: list[bool]
    forced_boundary: bool
    # the student's aligned tokens are its tokenizer's own tokenisation of their text (module docstring)
    canonical: bool

    def spread(self, teacher_logprobs: torch.Tensor) -> torch.Tensor:
        """Per student token, its share of the teacher's log-probabilities of `teacher_completion_ids` (0
        where not aligned): they sum to the teacher's log-probability of the completion."""
        values = teacher_logprobs.new_zeros(len(self.aligned))
        index = torch.tensor(self.student_index, dtype=torch.long, device=values.device)
        rows = torch.tensor(self.teacher_index, dtype=torch.long, device=values.device)
        weights = torch.tensor(self.share, dtype=values.dtype, device=values.device)
        return values.index_add(0, index, teacher_logprobs[rows] * weights)


def valid_prefix(ends: list[int], data: bytes) -> int:
    """How many of the tokens (ending at `ends` in `data`) form the longest prefix that is valid UTF-8."""
    try:
        data.decode()
        return len(ends)
    except UnicodeDecodeError as err:
        bad = err.start
    count = bisect.bisect_right(ends, bad)
    while count and not _decodes(data[: ends[count - 1]]):
        count -= 1
    return count


def _decodes(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False


def overlap_shares(
    student: tuple[list[int], list[int]], teacher: tuple[list[int], list[int]]
) -> list[tuple[int, int, float]]:
    """(student token, teacher token, share): the share of each teacher span's bytes in each student span
    it overlaps. Both are (starts, ends) tilings of the same bytes."""
    (s_starts, s_ends), (t_starts, t_ends) = student, teacher
    shares, i, j = [], 0, 0
    while i < len(s_ends) and j < len(t_ends):
        overlap = min(s_ends[i], t_ends[j]) - max(s_starts[i], t_starts[j])
        if overlap > 0:
            shares.append((i, j, overlap / (t_ends[j] - t_starts[j])))
        if s_ends[i] <= t_ends[j]:
            i += 1
        else:
            j += 1
    return shares


@dataclass
class CrossTokenizer:
    """A student's and a teacher's tokenizers side by side."""

    student: ByteVocabulary
    teacher: ByteVocabulary
    # the student tokens that end a completion (default: its EOS and its end of turn)
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def between(
        cls,
        student_tokenizer: PreTrainedTokenizerBase,
        teacher_tokenizer: PreTrainedTokenizerBase,
        stop_ids: Collection[int] = (),
    ) -> CrossTokenizer:
        student = ByteVocabulary(student_tokenizer)
        stops = set(stop_ids) | {student.end_of_turn, student_tokenizer.eos_token_id}
        return cls(student, ByteVocabulary(teacher_tokenizer), frozenset(stops - {None}))

    @cached_property
    def support(self) -> SharedSupport:
        return SharedSupport.between(self.student, self.teacher)

    def align(
        self, teacher_prompt: list[dict[str, str]], completion_ids: Sequence[int]
    ) -> CompletionAlignment:
        """The teacher's tokens for the student's `completion_ids` after `teacher_prompt` (chat messages),
        and how their log-probabilities map back (see the module's docstring)."""
        return self.align_after(chat_prompt_text(self.teacher.tokenizer, teacher_prompt), completion_ids)

    def align_after(self, teacher_prompt_text: str, completion_ids: Sequence[int]) -> CompletionAlignment:
        """`align`, after a prompt the teacher's chat template has already rendered."""
        ended = bool(completion_ids) and completion_ids[-1] in self.stop_ids
        body = list(completion_ids[:-1] if ended else completion_ids)
        s_starts, s_ends = self.student.spans(body)
        data = b"".join(self.student.pieces[i] for i in body)
        kept = valid_prefix(s_ends, data)
        text = data[: s_ends[kept - 1] if kept else 0].decode()
        teacher = self.teacher.tokenize_after(teacher_prompt_text, text)
        canonical = self.student.tokenizer(text, add_special_tokens=False)["input_ids"] == body[:kept]
        shares = overlap_shares((s_starts[:kept], s_ends[:kept]), (teacher.starts, teacher.ends))
        completion = list(teacher.text_ids)
        teacher_starts = set(teacher.starts)
        rows = [bisect.bisect_right(teacher.starts, start) - 1 for start in s_starts[:kept]]
        on_boundary = [start in teacher_starts for start in s_starts[:kept]]
        unaligned = len(completion_ids) - kept
        if ended and kept == len(body):  # the student's end: the teacher's end of turn, after the whole text
            shares.append((kept, len(completion), 1.0))
            rows.append(len(completion))
            on_boundary.append(True)
            completion.append(self.teacher.end_of_turn)
            unaligned = 0
        return CompletionAlignment(
            teacher_prompt_ids=teacher.prompt_ids,
            teacher_completion_ids=completion,
            student_index=[s for s, _, _ in shares],
            teacher_index=[t for _, t, _ in shares],
            share=[w for _, _, w in shares],
            on_boundary=on_boundary + [False] * unaligned,
            teacher_row=rows + [-1] * unaligned,
            aligned=[True] * len(rows) + [False] * unaligned,
            forced_boundary=teacher.forced_boundary,
            canonical=canonical,
        )


@dataclass(frozen=True)
class SharedSupport:
    """The token strings both vocabularies hold, as index pairs (student_ids[k] and teacher_ids[k] write the
    same bytes), and each side's other tokens (the tail bucket). Control tokens pair only with control
    tokens of the same content, and the two end-of-turn tokens with each other."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_rest: torch.Tensor
    teacher_rest: torch.Tensor

    @classmethod
    def between(cls, student: ByteVocabulary, teacher: ByteVocabulary) -> SharedSupport:
        theirs = teacher.by_string
        pairs = {
            mine: theirs[key]
            for key, mine in student.by_string.items()
            if key in theirs and mine != student.end_of_turn and theirs[key] != teacher.end_of_turn
        }
        pairs[student.end_of_turn] = teacher.end_of_turn
        student_ids, teacher_ids = zip(*sorted(pairs.items()), strict=True)
        return cls(
            torch.tensor(student_ids),
            torch.tensor(teacher_ids),
            _rest(len(student.pieces), student_ids),
            _rest(len(teacher.pieces), teacher_ids),
        )

    def holds(self, student_ids: torch.Tensor) -> torch.Tensor:
        """Whether each student token's string is one the teacher's vocabulary holds too."""
        return torch.isin(student_ids, self.student_ids.to(student_ids.device))


def _rest(size: int, kept: Sequence[int]) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[list(kept)] = False
    return mask.nonzero().flatten()


def path_shares(
    alignments: Sequence[CompletionAlignment], completions: Sequence[Sequence[int]], support: SharedSupport
) -> dict[str, float | int]:
    """What a run reports of its completion tokens: the share on each loss path (`shared_support`: the
    token starts on a teacher boundary; `fallback`: ULD or the sampled-token signal; `unaligned`: past
    the valid UTF-8 text), the share whose own string the teacher's vocabulary holds (`shared_string`),
    and the shares of completions tokenised apart from their prompt (`forced_boundary`) and not their
    tokenizer's own tokenisation of their text (`non_canonical`)."""
    tokens = sum(len(a.aligned) for a in alignments)
    on_boundary = sum(sum(a.on_boundary) for a in alignments)
    aligned = sum(sum(a.aligned) for a in alignments)
    held = sum(int(support.holds(torch.tensor(list(ids), dtype=torch.long)).sum()) for ids in completions)
    return {
        "tokens": tokens,
        "shared_support": on_boundary / max(tokens, 1),
        "fallback": (aligned - on_boundary) / max(tokens, 1),
        "unaligned": (tokens - aligned) / max(tokens, 1),
        "shared_string": held / max(tokens, 1),
        "forced_boundary": sum(a.forced_boundary for a in alignments) / max(len(alignments), 1),
        "non_canonical": sum(not a.canonical for a in alignments) / max(len(alignments), 1),
    }
