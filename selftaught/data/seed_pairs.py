"""The `seed` stage: (instruction, response) pairs to train the seed model M0 and the backward model Myx.

Humpback (Li et al. 2023) seeds from Open Assistant (oasst1): the FIRST TURN of each conversation tree,
in English, with the assistant reply that humans ranked best. oasst1 stores every message of a tree as one
row linked by `parent_id`, so "first turn" means a root prompter message (no parent) and one of its direct
assistant children; anything deeper (a reply to an assistant message, and the answers to that) is a later
turn and is never used here (one public re-implementation kept later turns, which pairs a follow-up such
as "and in Python?" with an answer that only makes sense in context).

Which reply is "best" (documented because oasst1 has ties and gaps): among the usable direct replies
(not deleted, `review_result` not False, same language as the prompt, non-empty text), the lowest `rank`
wins; a reply with a rank beats one without (`rank` None); remaining ties go to the lexicographically
smallest `message_id`. So a tree whose rank-0 reply was deleted falls back to its rank-1 reply, and a
tree whose replies were never ranked still yields its reply with the smallest id (counted in
`stats["unranked_pick"]`).

Other sources may be any file of {instruction, response}, {prompt, completion} or {instruction, output}
(Alpaca's optional `input` is appended to the instruction).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from pathlib import Path

from selftaught.data.formats import pair_shape
from selftaught.data.loading import DataError, load_rows

BUILTIN_OASST_SEED = Path(__file__).resolve().parent / "builtin" / "oasst_seed.jsonl"
OASST_COLUMNS = ("message_id", "parent_id", "role", "text")
OASST_USED = OASST_COLUMNS + ("lang", "deleted", "review_result", "rank", "message_tree_id")
ACCEPTED = (
    "oasst1 message rows (message_id, parent_id, role, text, lang, rank, deleted, ...), "
    "or one pair per row as {instruction, response}, {prompt, completion} or {instruction, output}"
)
# What the oasst1 filter counts, for the stage summary. A message is counted once, for its first reason in
# this order; replies of a dropped root are not counted again.
STATS = {
    "rows": "oasst1 messages read",
    "trees": "root messages (one per conversation tree)",
    "wrong_role": "roots that are not prompters, and first-turn replies that are not assistants",
    "deleted": "roots and first-turn replies marked deleted",
    "failed_review": "roots and first-turn replies with review_result False",
    "non_english": "roots not in `lang`, and first-turn replies in another language than their prompt",
    "empty_text": "roots and first-turn replies with no text",
    "no_ranked_reply": "kept roots left without a usable assistant reply (tree dropped)",
    "unranked_pick": "pairs whose reply had no rank (picked by smallest message_id)",
    "later_turns_ignored": "messages below the first turn (replies to replies): never used",
    "orphans": "messages whose parent is not in the data",
    "sampled_out": "pairs left out to keep `size`",
    "pairs": "pairs returned",
}


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _rank(value: object) -> float | None:
    """oasst1's rank as a number; None and NaN (pandas' missing value) both mean "not ranked"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _preference(reply: dict) -> tuple[bool, float, str]:
    """Sort key of the tie rule: lowest rank, then ranked before unranked, then smallest message_id."""
    rank = _rank(reply.get("rank"))
    return rank is None, 0.0 if rank is None else rank, reply["message_id"]


def _drop_reason(row: dict, lang: str) -> str | None:
    """Why a root or first-turn reply is unusable (checked in this order), or None if it is usable."""
    if row.get("deleted"):
        return "deleted"
    if row.get("review_result") is False:
        return "failed_review"
    if row.get("lang") != lang:
        return "non_english"
    if not _text(row.get("text")):
        return "empty_text"
    return None


def sample_pairs(pairs: list[dict], size: int | None, seed: int) -> list[dict]:
    """At most `size` pairs, a seeded random choice kept in input order.

    Shuffle-then-truncate makes samples nested: the size-100 sample is inside the size-200 one (same seed).
    """
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0 or None, got {size}")
    if size is None or len(pairs) <= size:
        return list(pairs)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in sorted(order[:size])]


def seed_pairs_from_oasst(
    rows: Iterable[dict], lang: str = "en", size: int | None = 3200, seed: int = 0
) -> tuple[list[dict], dict]:
    """First-turn (prompt, best reply) pairs of oasst1 trees, and counts of why rows were dropped.

    The result does not depend on the order of `rows`: pairs are sorted by prompt message_id before sampling.
    """
    rows = list(rows)
    stats = dict.fromkeys(STATS, 0)
    stats["rows"] = len(rows)
    by_id = {row["message_id"]: row for row in rows}
    roots = {row["message_id"] for row in rows if row.get("parent_id") is None}
    replies: dict[str, list[dict]] = {}
    for row in rows:
        parent = row.get("parent_id")
        if parent is None:
            continue
        if parent in roots:
            replies.setdefault(parent, []).append(row)
        elif parent in by_id:
            stats["later_turns_ignored"] += 1
        else:
            stats["orphans"] += 1

    pairs = []
    for root_id in sorted(roots):
        root = by_id[root_id]
        stats["trees"] += 1
        if root.get("role") != "prompter":
            stats["wrong_role"] += 1
            continue
        if reason := _drop_reason(root, lang):
            stats[reason] += 1
            continue
        usable = []
        for reply in replies.get(root_id, []):
            if reply.get("role") != "assistant":
                stats["wrong_role"] += 1
            elif reason := _drop_reason(reply, lang):  # lang: the reply must be in the prompt's language
                stats[reason] += 1
            else:
                usable.append(reply)
        if not usable:
            stats["no_ranked_reply"] += 1
            continue
        best = min(usable, key=_preference)
        stats["unranked_pick"] += _rank(best.get("rank")) is None
        pair = {
            "id": f"oasst1-{root_id}",
            "instruction": _text(root["text"]),
            "response": _text(best["text"]),
            "source": "oasst1",
            "message_tree_id": root.get("message_tree_id") or root_id,
            "prompt_message_id": root_id,
            "response_message_id": best["message_id"],
        }
        pairs.append(pair)

    kept = sample_pairs(pairs, size, seed)
    stats["sampled_out"] = len(pairs) - len(kept)
    stats["pairs"] = len(kept)
    return kept, stats


def seed_pairs_from_file(rows: Iterable[dict], source: str) -> list[dict]:
    """One pair per row of {instruction, response}, {prompt, completion} or {instruction, output}.

    Bad rows stop the run with the row named (1-based): a silently skipped seed row is a silently smaller M0.
    """
    pairs = []
    for number, row in enumerate(rows, start=1):
        where = f"{source}: row {number}"
        shape = pair_shape(row)
        if shape is None:
            raise DataError(
                f"{where}: no instruction/response fields (has {sorted(row)}); accepted: {ACCEPTED}"
            )
        question, answer = row[shape[0]], row[shape[1]]
        for name, value in zip(shape, (question, answer), strict=True):
            if value is not None and not isinstance(value, str):
                kind = type(value).__name__
                raise DataError(f"{where}: '{name}' must be text, not {kind}; write it as a JSON string")
            if not _text(value):
                raise DataError(f"{where}: '{name}' is empty; fill it in or delete the row")
        instruction = question.strip()
        if shape == ("instruction", "output") and _text(row.get("input")):  # Alpaca: context in `input`
            instruction = f"{instruction}\n\n{_text(row['input'])}"
        row_id = str(row["id"]) if row.get("id") is not None else f"{Path(source).name}-{number}"
        pairs.append({"id": row_id, "instruction": instruction, "response": answer.strip(), "source": source})
    if not pairs:
        raise DataError(f"{source}: no rows; write one {{instruction, response}} object per row")
    return pairs


def load_seed_pairs(
    source: str,
    size: int | None = 3200,
    seed: int = 0,
    split: str = "train",
    config: str | None = None,
    lang: str = "en",
) -> tuple[list[dict], dict]:
    """Seed pairs from a file, folder or Hub dataset, oasst1 rows or ready-made pairs (chosen by columns)."""
    data = load_rows(source, split, config)
    columns = set(data.column_names)
    if set(OASST_COLUMNS) <= columns:
        # Only the columns used: oasst1's nested detoxify/emojis/labels would cost time to turn into dicts.
        rows = data.select_columns([c for c in OASST_USED if c in columns]).to_list()
        return seed_pairs_from_oasst(rows, lang=lang, size=size, seed=seed)
    if pair_shape(dict.fromkeys(columns, "")) is None:
        raise DataError(f"{source}: unknown seed data (columns {sorted(columns)}); accepted: {ACCEPTED}")
    pairs = seed_pairs_from_file(data.to_list(), source)
    kept = sample_pairs(pairs, size, seed)
    return kept, {"rows": len(pairs), "sampled_out": len(pairs) - len(kept), "pairs": len(kept)}
