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
    prompt_key           int64      `content_key` of the teacher's prompt ids (its own, with any context)
    completion_ids       [T] int32  the completion's tokens (through the chat template, EOS included)
    top_ids              [T*K] int32, top_logprobs [T*K] float32: per token, the teacher's K most likely
                         next tokens before it and their log-probs over its whole output layer, row-major
    token_logprobs       [T] float32: the teacher's log-prob of each completion token itself

That is 8K + 8 bytes per completion token before Parquet's compression (`summary.json` records the bytes
on disk). The teacher's log-probs are those of `completion_top_logprobs` (float32 log_softmax of its raw
logits), exactly what a served teacher returns.

The held-out evaluation's part is a cache of the same format in the subfolder `held_out/` (`HELD_OUT`): one
record per held-out prompt, `sample` 0 the teacher's greedy answer (temperature 0, `eval_max_new_tokens`
long) and its top-K, so that a `--teacher_cache` run evaluates with no teacher. Read as a cache of one
sample per prompt (`held_out_teacher`), it answers a prompt with that greedy answer and scores it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
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
from selftaught.distill.teachers import CompletionBatch
from selftaught.generation.base import SamplingParams
from selftaught.training.sparse_losses import PADDING_ID, SparseTeacher

DATA_SAMPLE = -1  # the `sample` of the data's own completion
SUMMARY = "summary.json"
HELD_OUT = "held_out"  # the subfolder of the held-out prompts' greedy answers
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
SPARSE_FIELDS = ("top_ids", "top_log_probs", "token_ids", "token_log_probs")  # `SparseTeacher`'s, in order
CACHED_SHARDS = 4  # shards kept decoded in memory at once: training reads rows in shuffled order


class TeacherCacheError(StageMismatchError):
    """A teacher cache that cannot serve this run: other settings, or shards missing or damaged."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def content_key(ids: Sequence[int]) -> int:
    """A 64-bit hash of a token sequence. The trainer finds a cached completion by its teacher prompt and its
    tokens, what the batch holds, rather than by a row number that would have to travel with every batch
    (and a prompt that occurs in several rows gets the same teacher scores from any of them)."""
    digest = hashlib.blake2b(np.asarray(ids, dtype=np.int32).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


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
    """A complete cache folder, checked, read a shard at a time. Opening it reads the small columns of every
    shard (which also proves each shard readable); the top-K columns are read when a shard is first asked.

    `vocab_size`: the student's; top-K ids at or above it (rows a teacher pads its embeddings with, never a
    token) are returned as `PADDING_ID`, so that their mass counts in the tail bin."""

    def __init__(self, folder: str | Path, redo: str, vocab_size: int | None = None) -> None:
        """`redo`: the command that resumes the cache (it recomputes missing and damaged shards)."""
        self.folder, self.redo, self.vocab_size = Path(folder), redo, vocab_size
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
        Location = tuple[Path, int]
        self._by_row: dict[tuple[int, int], Location] = {}
        self._by_content: dict[tuple[int, int], Location] = {}
        self._samples: dict[int, list[Location]] = defaultdict(list)  # prompt key -> its samples, in order
        for path in committed_shards(self.folder):
            for offset, record in enumerate(self._index(path)):
                where = (path, offset)
                self._by_row[record["row"], record["sample"]] = where
                self._by_content[record["prompt_key"], content_key(record["completion_ids"])] = where
                if record["sample"] != DATA_SAMPLE:
                    self._samples[record["prompt_key"]].append(where)
        self._shards: OrderedDict[Path, pa.Table] = OrderedDict()

    def _index(self, path: Path) -> list[dict]:
        columns = ["row", "sample", "prompt_key", "completion_ids"]
        try:  # a shard of rows with nothing to score has no columns at all
            return pq.read_table(path, columns=columns).to_pylist() if pq.read_metadata(path).num_rows else []
        except (OSError, pa.ArrowException) as err:
            raise self._damaged(path, err) from None

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

    def completion(self, row: int, sample: int = DATA_SAMPLE) -> CachedCompletion:
        """The cached completion of training row `row` (`sample` -1: the data's; 0..N-1: the teacher's)."""
        if (row, sample) not in self._by_row:
            what = "the data's completion" if sample == DATA_SAMPLE else f"teacher sample {sample}"
            raise TeacherCacheError(
                f"--teacher_cache {self.folder} holds no {what} for training row {row + 1} (it has "
                f"{self.samples} samples per row, and no data completion for rows that have none)"
            )
        return self._read(*self._by_row[row, sample])

    def scored(self, prompt: Sequence[int], completion: Sequence[int]) -> CachedCompletion:
        """The cached scores of `completion` after the teacher's `prompt` (a data completion or a sample)."""
        where = self._by_content.get((content_key(prompt), content_key(completion)))
        if where is None:
            raise TeacherCacheError(
                f"--teacher_cache {self.folder} holds no teacher scores for a completion this run trains on: "
                "a cache scores the data's completions and its own samples only (the student's samples need "
                "--teacher or --teacher_url)"
            )
        return self._read(*where)

    def has_samples(self, prompt: Sequence[int]) -> bool:
        return content_key(prompt) in self._samples

    def sample(self, prompt: Sequence[int], index: int) -> list[int]:
        """Teacher sample `index` (modulo the samples cached) of the teacher's `prompt`."""
        samples = self._samples.get(content_key(prompt))
        if not samples:
            raise TeacherCacheError(
                f"--teacher_cache {self.folder} holds no teacher samples of a training prompt: make the "
                f"cache with --samples 1 or more for --seq_kd ({self.redo})"
            )
        return self._read(*samples[index % len(samples)]).completion_ids

    def _read(self, path: Path, offset: int) -> CachedCompletion:
        if path not in self._shards:
            try:
                self._shards[path] = pq.read_table(path)
            except (OSError, pa.ArrowException) as err:
                raise self._damaged(path, err) from None
            if len(self._shards) > CACHED_SHARDS:
                self._shards.popitem(last=False)
        self._shards.move_to_end(path)
        record = self._shards[path].slice(offset, 1).to_pylist()[0]
        ids = torch.tensor(record["completion_ids"], dtype=torch.int64)
        top_ids = torch.tensor(record["top_ids"], dtype=torch.int64).reshape(len(ids), self.top_k)
        if self.vocab_size is not None:
            top_ids = top_ids.masked_fill(top_ids >= self.vocab_size, PADDING_ID)
        teacher = SparseTeacher(
            top_ids=top_ids,
            top_log_probs=torch.tensor(record["top_logprobs"], dtype=torch.float32).reshape(
                len(ids), self.top_k
            ),
            token_ids=ids,
            token_log_probs=torch.tensor(record["token_logprobs"], dtype=torch.float32),
        )
        return CachedCompletion(record["completion_ids"], teacher)


class CachedTeacher:
    """The `distill.teachers.Teacher` of `selftaught distill --teacher_cache`: scores and samples read from a
    cache, no teacher weights or server anywhere. It holds the data's completions and the teacher's own
    samples only, so it serves supervised KD (lmbda 0) and seq_kd; a completion it has not scored (the
    student's own sample) is refused by name."""

    def __init__(
        self, cache: TeacherCache, eos_ids: list[int], held_out: CachedTeacher | None = None
    ) -> None:
        """`held_out`: the teacher of the held-out evaluation (`held_out_teacher`), when the run has one."""
        self.cache, self.eos_ids, self.top_k, self.held_out = cache, eos_ids, cache.top_k, held_out
        self.name = f"{cache.params['teacher']['name']} (cached top-{cache.top_k})"

    def scores(self, batch: CompletionBatch) -> SparseTeacher:
        k = self.cache.top_k
        empty = SparseTeacher(
            torch.empty(0, k, dtype=torch.int64),
            torch.empty(0, k),
            torch.empty(0, dtype=torch.int64),
            torch.empty(0),
        )
        rows = [empty] + [
            self.cache.scored(prompt, completion).teacher
            for prompt, completion in zip(batch.prompts(), batch.completions(), strict=True)
            if completion
        ]
        device = batch.completion_mask.device
        return SparseTeacher(
            *(torch.cat([getattr(r, name) for r in rows]).to(device) for name in SPARSE_FIELDS)
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str | None) -> list[list[int]]:
        """One cached sample of each prompt: which one is drawn from `params.seed` (the trainer's per-step
        seed), so that the epochs go through different samples and a resumed run takes the same."""
        index = random.Random(params.seed).randrange(max(self.cache.samples, 1))
        return [self.cache.sample(prompt, index) for prompt in prompts]


def held_out_teacher(
    folder: str | Path,
    redo: str,
    vocab_size: int,
    eos_ids: list[int],
    prompts: list[list[int]],
    max_new_tokens: int,
) -> CachedTeacher:
    """The held-out evaluation's teacher, read from `<folder>/held_out`: its greedy answer to each of the
    run's held-out `prompts` (the teacher's own, as `HeldOutEvaluation` tokenizes them) and its top-K on
    them. Refused, naming the fix, when the cache has no held-out part (made before it held one, or with
    --eval_size 0) or one made for other held-out prompts or another --eval_max_new_tokens."""
    where = f"--teacher_cache {folder}"
    fixes = (
        f"Rerun {redo} with this run's --eval_size, --eval_split and --eval_max_new_tokens (it computes only "
        "the held-out answers), or add --eval_size 0 to train without a held-out evaluation"
    )
    if read_manifest(Path(folder) / HELD_OUT) is None:
        raise TeacherCacheError(f"{where} holds no teacher answers to the held-out prompts. {fixes}")
    cache = TeacherCache(Path(folder) / HELD_OUT, redo, vocab_size)
    if cache.params["max_new_tokens"] != max_new_tokens:
        raise TeacherCacheError(
            f"{where} holds held-out answers of at most {cache.params['max_new_tokens']} tokens, and this "
            f"run evaluates answers of {max_new_tokens} (--eval_max_new_tokens). {fixes}"
        )
    if missing := sum(not cache.has_samples(prompt) for prompt in prompts):
        raise TeacherCacheError(
            f"{where} holds no teacher answer to {missing} of this run's {len(prompts)} held-out prompts "
            f"(it was made with other held-out rows). {fixes}"
        )
    return CachedTeacher(cache, eos_ids)
