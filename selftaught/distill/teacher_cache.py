"""A teacher on disk: its top-K log-probabilities at every completion token, read back with no teacher loaded.

Why: a teacher that scores the same training completions every epoch (supervised KD, lmbda 0) or samples
fixed completions of its own (seq_kd) can be run once, ahead of training, on whatever hardware holds it;
training then needs neither its weights nor a server (TRL issue 3055, unsloth issue 11556).
`selftaught distill cache-teacher` (`distill.cache_teacher`) writes a cache; this module defines its format,
checks it against a training run and reads it.

Format: a folder of Parquet shards written through `data.shards` (atomic, resumable, one writer), whose
`manifest.json` records in `params` everything that decides the cached numbers (`CACHE_KEYS`). One record
per (training row, sample), `sample` -1 for the data's own completion and 0..N-1 for the teacher's samples:

    row, sample          int        the row's position in the data split (before any held-out rows are cut)
    completion_ids       [T] int32  the completion's tokens (through the chat template, EOS included)
    top_ids              [T*K] int32, top_logprobs [T*K] float32: per token, the teacher's K most likely
                         next tokens before it and their log-probs over its whole output layer, row-major
    token_logprobs       [T] float32: the teacher's log-prob of each completion token itself

That is 8K + 8 bytes per completion token before Parquet's compression (`summary.json` records the bytes
on disk). The teacher's log-probs are those of `completion_top_logprobs` (float32 log_softmax of its raw
logits), exactly what a served teacher returns.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedTokenizerBase

from selftaught.data.formats import Example
from selftaught.data.shards import (
    StageMismatchError,
    committed_shards,
    fingerprint_rows,
    missing_shards,
    read_manifest,
    shard_path,
)
from selftaught.training.sparse_losses import PADDING_ID, SparseTeacher

DATA_SAMPLE = -1  # the `sample` of the data's own completion
SUMMARY = "summary.json"
# The settings a training run must share with the cache it reads: they decide which tokens the cache
# scored and in which context. The cache's other settings (teacher, K, sampling) are its own choice.
HASHED_KEYS = ("tokenizer", "chat_template", "data")  # their values are hashes: said to differ, not shown
RUN_KEYS = (
    "tokenizer",
    "chat_template",
    "data",
    "data_split",
    "max_prompt_length",
    "max_new_tokens",
    "teacher_context",
)
CACHED_SHARDS = 4  # shards kept decoded in memory at once: training reads rows in shuffled order


class TeacherCacheError(StageMismatchError):
    """A teacher cache that cannot serve this run: other settings, or shards missing or damaged."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of every token's id and of the special tokens: equal exactly when ids mean the same text."""
    vocabulary = sorted(tokenizer.get_vocab().items())
    special = {
        "map": tokenizer.special_tokens_map,
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
        "added": sorted((k, str(v)) for k, v in tokenizer.added_tokens_decoder.items()),
    }
    return _sha256(json.dumps([vocabulary, special], sort_keys=True, default=str))


def template_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    return _sha256(tokenizer.chat_template or "")


def data_fingerprint(examples: list[Example]) -> str:
    """A hash of what the teacher reads and scores: each row's prompts (its own included) and completion."""
    return fingerprint_rows(
        [
            {k: v for k, v in asdict(e).items() if k in ("prompt", "completion", "teacher_prompt")}
            for e in examples
        ]
    )


def run_settings(
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    data_split: str,
    max_prompt_length: int,
    max_new_tokens: int,
    teacher_context: str | None,
) -> dict:
    """The `RUN_KEYS` of a run (or of a cache, when it is written) on these examples of `data_split`."""
    return {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": template_fingerprint(tokenizer),
        "data": data_fingerprint(examples),
        "data_split": data_split,
        "max_prompt_length": max_prompt_length,
        "max_new_tokens": max_new_tokens,
        "teacher_context": teacher_context,
    }


@dataclass(frozen=True)
class CachedCompletion:
    """One cached completion and the teacher's view of it, ready for `sparse_generalized_jsd`."""

    completion_ids: list[int]
    teacher: SparseTeacher


class TeacherCache:
    """A complete cache folder, checked, read a shard at a time. Opening it reads only the `row` and
    `sample` columns of every shard (which also proves each shard readable)."""

    def __init__(self, folder: str | Path, redo: str) -> None:
        """`redo`: the command that resumes the cache (it recomputes missing and damaged shards)."""
        self.folder = Path(folder)
        manifest = read_manifest(self.folder) if self.folder.is_dir() else None
        if manifest is None:
            raise TeacherCacheError(
                f"--teacher_cache {self.folder}: no teacher cache there (no manifest.json); make one "
                f"with {redo}"
            )
        self.params: dict = manifest["params"]
        self.top_k: int = self.params["top_k"]
        self.samples: int = self.params["samples"]
        if missing := missing_shards(self.folder):
            names = ", ".join(shard_path(self.folder, k).name for k in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise TeacherCacheError(
                f"--teacher_cache {self.folder}: {len(missing)} of {manifest['num_shards']} shards are "
                f"missing ({names}{more}): it is unfinished or was damaged. Complete it with {redo}"
            )
        self.redo = redo
        self._where: dict[tuple[int, int], tuple[Path, int]] = {}
        for path in committed_shards(self.folder):
            try:
                index = (
                    pq.read_table(path, columns=["row", "sample"])
                    if pq.read_metadata(path).num_rows
                    else None
                )
            except (OSError, pa.ArrowException) as err:
                raise self._damaged(path, err) from None
            if index is not None:
                for offset, key in enumerate(
                    zip(*(index[c].to_pylist() for c in ("row", "sample")), strict=True)
                ):
                    self._where[key] = (path, offset)
        self._shards: OrderedDict[Path, pa.Table] = OrderedDict()

    def _damaged(self, path: Path, err: Exception) -> TeacherCacheError:
        return TeacherCacheError(
            f"--teacher_cache {self.folder}: {path.name} cannot be read ({err}); it was damaged after it was "
            f"written. Rebuild it with {self.redo}: it recomputes missing and damaged shards"
        )

    def check(self, run: dict) -> None:
        """Refuse a run whose `RUN_KEYS` differ from the cache's, naming each difference."""
        differences = [
            f"{key} differs"
            if key in HASHED_KEYS
            else f"{key}: {self.params.get(key)!r} there, {run[key]!r} now"
            for key in RUN_KEYS
            if self.params.get(key) != run[key]
        ]
        if differences:
            raise TeacherCacheError(
                f"--teacher_cache {self.folder} was made for another run ({'; '.join(differences)}). Run "
                f"with the cache's settings, or make a cache for these with {self.redo}"
            )

    def _shard(self, path: Path) -> pa.Table:
        if path not in self._shards:
            try:
                self._shards[path] = pq.read_table(path)
            except (OSError, pa.ArrowException) as err:
                raise self._damaged(path, err) from None
            if len(self._shards) > CACHED_SHARDS:
                self._shards.popitem(last=False)
        self._shards.move_to_end(path)
        return self._shards[path]

    def completion(
        self, row: int, sample: int = DATA_SAMPLE, vocab_size: int | None = None
    ) -> CachedCompletion:
        """The cached completion of training row `row` (`sample` -1: the data's; 0..N-1: the teacher's).

        `vocab_size`: the student's; top-K ids at or above it (rows a teacher pads its embeddings with,
        never a token) become `PADDING_ID`, so their mass counts in the tail bin."""
        if (row, sample) not in self._where:
            what = "the data's completion" if sample == DATA_SAMPLE else f"teacher sample {sample}"
            raise TeacherCacheError(
                f"--teacher_cache {self.folder} holds no {what} for training row {row + 1} (it has "
                f"{self.samples} samples per row, and no data completion for rows that have none)"
            )
        path, offset = self._where[(row, sample)]
        record = self._shard(path).slice(offset, 1).to_pylist()[0]
        ids = torch.tensor(record["completion_ids"], dtype=torch.int64)
        top_ids = torch.tensor(record["top_ids"], dtype=torch.int64).reshape(len(ids), self.top_k)
        if vocab_size is not None:
            top_ids = top_ids.masked_fill(top_ids >= vocab_size, PADDING_ID)
        teacher = SparseTeacher(
            top_ids=top_ids,
            top_log_probs=torch.tensor(record["top_logprobs"], dtype=torch.float32).reshape(
                len(ids), self.top_k
            ),
            token_ids=ids,
            token_log_probs=torch.tensor(record["token_logprobs"], dtype=torch.float32),
        )
        return CachedCompletion(record["completion_ids"], teacher)
