"""The `seed` stage: first turns of oasst1 trees only, the best surviving reply, documented ties, sampling."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl

from selftaught.backtranslate.runfolder import RunFolder
from selftaught.cli import main
from selftaught.data.loading import DataError
from selftaught.data.seed_pairs import (
    BUILTIN_OASST_SEED,
    STATS,
    load_seed_pairs,
    seed_pairs_from_file,
    seed_pairs_from_oasst,
)
from selftaught.data.shards import read_parquet

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "oasst1_sample.jsonl"
OASST_COLUMNS = [
    "message_id", "parent_id", "user_id", "created_date", "text", "role", "lang", "review_count",
    "review_result", "deleted", "rank", "synthetic", "model_name", "detoxify", "message_tree_id",
    "tree_state", "emojis", "labels",
]  # fmt: skip
PAIR_KEYS = {
    "id", "instruction", "response", "source", "message_tree_id", "prompt_message_id", "response_message_id"
}  # fmt: skip


def mid(tree: int, message: int) -> str:
    """The fixture's ids: tree number in the first group, message number in the last."""
    return f"{tree:08d}-0000-4000-8000-{message:012d}"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def depths(rows: list[dict]) -> dict[str, int]:
    """Each message's distance from its tree's root (0 = the first prompt); orphans are left out."""
    by_id = {r["message_id"]: r for r in rows}
    out = {}
    for row in rows:
        depth, node = 0, row
        while node["parent_id"] is not None and node["parent_id"] in by_id:
            depth, node = depth + 1, by_id[node["parent_id"]]
        if node["parent_id"] is None:
            out[row["message_id"]] = depth
    return out


def pairs_of(rows: list[dict], size: int | None = None, **kwargs) -> tuple[list[dict], dict]:
    """All pairs unless a size is given (the library's default samples 3,200)."""
    return seed_pairs_from_oasst(rows, size=size, **kwargs)


# --- the oasst1 filter ------------------------------------------------------------------------------


def test_fixture_yields_exactly_these_pairs():
    pairs, _ = pairs_of(read(FIXTURE))
    chosen = [(p["prompt_message_id"], p["response_message_id"]) for p in pairs]
    assert chosen == [
        (mid(1, 0), mid(1, 1)),  # rank 0; the later turns below it are ignored
        (mid(2, 0), mid(2, 2)),  # rank 0 deleted -> rank 1
        (mid(3, 0), mid(3, 1)),  # two rank-0 replies -> smaller message_id (listed second in the file)
        (mid(4, 0), mid(4, 2)),  # rank 1 beats an unranked reply with a smaller id
        (mid(6, 0), mid(6, 2)),  # rank 0 failed review -> rank 1
        (mid(9, 0), mid(9, 1)),  # no ranks at all -> smaller message_id
    ]
    first = pairs[0]
    assert set(first) == PAIR_KEYS
    assert first["id"] == f"oasst1-{mid(1, 0)}"
    assert first["instruction"] == "What is the capital of Australia?"
    assert first["response"].startswith("The capital of Australia is Canberra.")
    assert first["source"] == "oasst1" and first["message_tree_id"] == mid(1, 0)


def test_stats_count_why_rows_were_dropped():
    _, stats = pairs_of(read(FIXTURE))
    assert list(stats) == list(STATS)
    assert stats == {
        "rows": 32,
        "trees": 11,
        "wrong_role": 0,
        "deleted": 2,  # tree 2's rank-0 reply, tree 7's root
        "failed_review": 1,  # tree 6's rank-0 reply
        "non_english": 2,  # tree 5 (German), tree 8's Spanish reply to an English prompt
        "empty_text": 1,  # tree 10's blank prompt
        "no_ranked_reply": 2,  # tree 8 (its only reply is Spanish), tree 11 (no replies)
        "unranked_pick": 1,  # tree 9
        "later_turns_ignored": 3,  # tree 1's follow-up question and its two answers
        "orphans": 1,
        "sampled_out": 0,
        "pairs": 6,
    }


def test_no_later_turn_message_is_ever_used():
    for rows in (read(FIXTURE), read(BUILTIN_OASST_SEED)):
        depth = depths(rows)
        pairs, stats = pairs_of(rows)
        assert stats["later_turns_ignored"] > 0
        assert all(depth[p["prompt_message_id"]] == 0 for p in pairs)
        assert all(depth[p["response_message_id"]] == 1 for p in pairs)


def test_later_turn_never_stands_in_for_a_missing_first_reply():
    """Tree whose only usable assistant message is a rank-0 answer to a follow-up: no pair at all."""

    def msg(i: int, parent: int | None, role: str, **extra) -> dict:
        row = {"message_id": mid(1, i), "parent_id": None if parent is None else mid(1, parent), "role": role}
        return row | {"text": f"message {i}", "lang": "en", "deleted": False, "rank": 0} | extra

    rows = [
        msg(0, None, "prompter", rank=None),
        msg(1, 0, "assistant", deleted=True),
        msg(2, 1, "prompter"),
        msg(3, 2, "assistant"),
    ]
    pairs, stats = pairs_of(rows)
    assert pairs == []
    assert (stats["deleted"], stats["no_ranked_reply"], stats["later_turns_ignored"]) == (1, 1, 2)


def test_result_does_not_depend_on_row_order():
    rows = read(FIXTURE)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert pairs_of(shuffled) == pairs_of(rows)
    assert pairs_of(rows[::-1], size=3, seed=5) == pairs_of(rows, size=3, seed=5)


def test_other_language_filter():
    pairs, stats = pairs_of(read(FIXTURE), lang="de")
    assert [(p["prompt_message_id"], p["response_message_id"]) for p in pairs] == [(mid(5, 0), mid(5, 1))]
    assert stats["non_english"] == 9  # roots not in German, except the deleted one (the key keeps its name)


def test_rank_may_be_a_float_or_nan_as_pandas_writes_it():
    rows = read(FIXTURE)
    for row in rows:
        row["rank"] = float("nan") if row["rank"] is None else float(row["rank"])
    assert pairs_of(rows) == pairs_of(read(FIXTURE))


# --- sampling ---------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_respects_size():
    rows = read(BUILTIN_OASST_SEED)
    everything, _ = pairs_of(rows)
    ten, stats = pairs_of(rows, size=10, seed=3)
    assert len(ten) == 10 and stats["pairs"] == 10 and stats["sampled_out"] == len(everything) - 10
    assert pairs_of(rows, size=10, seed=3)[0] == ten
    assert pairs_of(rows, size=10, seed=4)[0] != ten
    ids = [p["id"] for p in everything]
    assert [p["id"] for p in ten] == [i for i in ids if i in {p["id"] for p in ten}]  # input order kept
    twenty, _ = pairs_of(rows, size=20, seed=3)
    assert {p["id"] for p in ten} <= {p["id"] for p in twenty}  # nested samples
    assert pairs_of(rows, size=10_000)[0] == everything
    assert pairs_of(rows, size=0)[0] == []
    with pytest.raises(ValueError, match="size"):
        pairs_of(rows, size=-1)


def test_the_seed_stage_keeps_the_papers_3200_pairs_by_default(tmp_path):
    """Humpback seeds with 3,200 oasst1 pairs: `backtranslate seed` without --seed_size keeps that many of
    3,300 first-turn pairs, and so does the library."""

    def message(tree: int, number: int, role: str) -> dict:
        row = {"message_id": mid(tree, number), "parent_id": mid(tree, 0) if number else None, "role": role}
        return row | {"text": f"{role} text of tree {tree}", "lang": "en", "rank": 0}

    rows = [
        message(tree, n, role) for tree in range(3300) for n, role in enumerate(("prompter", "assistant"))
    ]
    data, run = write_jsonl(tmp_path / "oasst.jsonl", rows), RunFolder(tmp_path / "run")
    main(["backtranslate", "seed", "--run_dir", str(run.root), "--seed_data", str(data)])
    assert len(read_parquet(run.seed_pairs)) == 3200
    pairs, stats = seed_pairs_from_oasst(rows)
    assert len(pairs) == 3200 and stats["sampled_out"] == 100


# --- loading: oasst1 through `datasets`, or {instruction, response} files -------------------------


def test_load_seed_pairs_reads_oasst_rows_through_datasets():
    assert load_seed_pairs(str(FIXTURE), size=None, seed=0) == pairs_of(read(FIXTURE))
    pairs, stats = load_seed_pairs(str(FIXTURE), size=4, seed=1)
    assert len(pairs) == 4 and stats["sampled_out"] == 2


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"instruction": " Name a prime. ", "response": "Seven.\n"}, ("Name a prime.", "Seven.")),
        ({"prompt": "Say hi.", "completion": "Hi!"}, ("Say hi.", "Hi!")),
        (
            {"instruction": "Translate.", "input": "Good morning", "output": "Bonjour"},
            ("Translate.\n\nGood morning", "Bonjour"),
        ),
        ({"instruction": "Add 2 and 2.", "input": "", "output": "4"}, ("Add 2 and 2.", "4")),
    ],
)
def test_pair_files_in_every_accepted_shape(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "pairs.jsonl", [row | {"id": "mine-7"}, row])
    pairs, stats = load_seed_pairs(str(path), size=None, seed=0)
    assert [(p["id"], p["instruction"], p["response"], p["source"]) for p in pairs] == [
        ("mine-7", *expected, str(path)),
        ("pairs.jsonl-2", *expected, str(path)),
    ]
    assert stats == {"rows": 2, "sampled_out": 0, "pairs": 2}
    sampled, stats = load_seed_pairs(str(path), size=1, seed=0)
    assert len(sampled) == 1 and stats["sampled_out"] == 1


def test_rows_may_mix_shapes():
    """As `datasets` returns them: every row has every key, the other shape's set to None."""
    rows = [
        {"instruction": "Q1", "response": "A1", "prompt": None, "completion": None},
        {"instruction": None, "response": None, "prompt": "Q2", "completion": "A2"},
    ]
    pairs = seed_pairs_from_file(rows, "mixed.jsonl")
    assert [(p["instruction"], p["response"]) for p in pairs] == [("Q1", "A1"), ("Q2", "A2")]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"instruction": "Q", "response": "   "}, "row 2: 'response' is empty; fill it in or delete the row"),
        ({"instruction": "", "response": "A"}, "row 2: 'instruction' is empty"),
        ({"instruction": None, "response": "A"}, "row 2: 'instruction' is empty"),
        ({"instruction": "Q", "response": ["A"]}, "row 2: 'response' must be text, not list"),
    ],
)
def test_bad_pair_rows_name_the_file_and_row(bad, message):
    rows = [{"instruction": "Q", "response": "A"}, bad]
    with pytest.raises(DataError) as err:
        seed_pairs_from_file(rows, "seed.jsonl")
    assert str(err.value).startswith("seed.jsonl: ") and message in str(err.value)


def test_bad_pair_file_is_named_when_loaded(tmp_path):
    path = write_jsonl(
        tmp_path / "seed.jsonl", [{"prompt": "Q", "completion": "A"}, {"prompt": "Q2", "completion": ""}]
    )
    with pytest.raises(DataError, match=r"seed\.jsonl: row 2: 'completion' is empty"):
        load_seed_pairs(str(path), size=None, seed=0)


def test_row_without_pair_fields_lists_accepted_shapes():
    with pytest.raises(
        DataError, match=r"x\.jsonl: row 1: no instruction/response fields.*\{prompt, completion\}"
    ):
        seed_pairs_from_file([{"question": "Q", "answer": "A"}], "x.jsonl")
    with pytest.raises(DataError, match="no rows"):
        seed_pairs_from_file([], "x.jsonl")


def test_unknown_shape_lists_accepted_schemas(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "just some web text"}])
    with pytest.raises(DataError) as err:
        load_seed_pairs(str(path), size=None, seed=0)
    text = str(err.value)
    assert "corpus.jsonl" in text and "['text']" in text
    assert "oasst1" in text and "{instruction, response}" in text and "{instruction, output}" in text


# --- the shipped seed set ---------------------------------------------------------------------------


def test_shipped_seed_set_has_oasst1_schema_and_enough_english_pairs():
    assert BUILTIN_OASST_SEED.stat().st_size < 200_000
    rows = read(BUILTIN_OASST_SEED)
    assert all(list(row) == OASST_COLUMNS for row in rows)
    assert len({r["message_id"] for r in rows}) == len(rows)
    assert {r["lang"] for r in rows} == {"en", "de", "es", "fr"}
    pairs, stats = load_seed_pairs(str(BUILTIN_OASST_SEED), size=None, seed=0)
    assert len(pairs) >= 60
    lang = {r["message_id"]: r["lang"] for r in rows}
    assert all(lang[p["prompt_message_id"]] == lang[p["response_message_id"]] == "en" for p in pairs)
    assert stats["non_english"] == 3 and stats["deleted"] == 1 and stats["later_turns_ignored"] == 9
    assert all(60 < len(p["response"]) < 1000 for p in pairs)  # short answers, but more than a word
    assert len({p["instruction"] for p in pairs}) == len(pairs)


def test_shipped_seed_set_edge_cases():
    rows = read(BUILTIN_OASST_SEED)
    by_id = {r["message_id"]: r for r in rows}
    chosen = {p["prompt_message_id"]: by_id[p["response_message_id"]] for p in pairs_of(rows)[0]}
    seen = {"deleted": 0, "tie": 0, "plain": 0}
    for root in (r for r in rows if r["parent_id"] is None and r["lang"] == "en"):
        replies = [r for r in rows if r["parent_id"] == root["message_id"]]
        best = chosen[root["message_id"]]
        if any(r["deleted"] for r in replies):  # the deleted rank-0 reply: rank 1 stands in
            assert best["rank"] == 1 and not best["deleted"]
            seen["deleted"] += 1
        elif [r["rank"] for r in replies].count(0) == 2:  # the rank tie: smaller message_id
            assert best["message_id"] == min(r["message_id"] for r in replies)
            seen["tie"] += 1
        else:
            assert best["rank"] == 0
            seen["plain"] += 1
    assert seen == {"deleted": 1, "tie": 1, "plain": 83}


def test_generator_reproduces_shipped_file(tmp_path):
    """The file is the script's output, byte for byte: edits go through the script, not by hand."""
    out = tmp_path / "oasst_seed.jsonl"
    script = ROOT / "scripts" / "make_oasst_seed.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == BUILTIN_OASST_SEED.read_bytes()
