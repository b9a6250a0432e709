"""The segment stage: sections, boilerplate, lengths, duplicates, stable ids, readers, embedded corpus."""

from __future__ import annotations

import hashlib
import json
import random
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selftaught.backtranslate.corpus import installed_package_descriptions, read_corpus
from selftaught.backtranslate.segment import segment_corpus, split_document
from selftaught.data.loading import DataError

VOCABULARY = (
    "river stone garden window market teacher bridge lantern orchard winter harbor pencil valley "
    "copper signal meadow engine basket thunder island ladder mirror planet candle forest kettle "
    "feather castle silver journey rocket puzzle tunnel velvet anchor blossom compass desert "
    "falcon glacier hammer jungle lemon marble needle ocean pepper quartz saddle tiger umbrella "
    "violin walnut yellow zipper builds carries follows gathers holds keeps measures opens paints "
    "quietly rapidly gently slowly under over beside across through toward"
)
WORDS = VOCABULARY.split()


def prose(seed: int, chars: int) -> str:
    """Deterministic sentences of varied words, about `chars` long: distinct 5-shingles, no markup."""
    rng = random.Random(seed)
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < chars:
        words = rng.choices(WORDS, k=rng.randint(8, 14))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def texts(segments: list[dict]) -> list[str]:
    return [s["text"] for s in segments]


# --- splitting ----------------------------------------------------------------------------------------


def test_headings_start_sections_and_paragraphs_pack_within_a_section():
    a, b, c, d, e = prose(1, 700), prose(2, 700), prose(3, 300), prose(4, 400), prose(5, 700)
    doc = (
        f"# Title\n{a}\n\nSetext heading\n==============\n{b}\n\n"
        f"=========\nRst title\n=========\n\n{c}\n\n{d}\n\n<h2>Html heading</h2>\n{e}\n"
    )
    # a + b would fit in one segment: they are apart only because a heading separates them.
    assert split_document(doc) == [a, b, f"{c}\n\n{d}", e]


def test_segment_lengths_stay_within_bounds_and_long_paragraphs_cut_at_sentences():
    paragraphs = [prose(10, 5000), prose(11, 120), prose(12, 450), prose(13, 450), "x" * 40 + " y" * 1200]
    segments, stats = segment_corpus([{"text": "\n\n".join(paragraphs), "source": "doc"}], 200, 800)
    assert segments and all(200 <= s["chars"] <= 800 for s in segments)
    assert all(s["chars"] == len(s["text"]) for s in segments)
    long_pieces = [s["text"] for s in segments if s["text"] in paragraphs[0]]
    assert len(long_pieces) >= 6 and all(p.endswith(".") for p in long_pieces)
    defaults = split_document("\n\n".join(prose(20 + i, 900) for i in range(8)))
    assert defaults and all(600 <= len(s) <= 3000 for s in defaults)
    assert split_document(prose(30, 400)) == []  # too short on its own


def test_boilerplate_navigation_and_allcaps_headers_are_removed():
    keep1, keep2 = prose(40, 700), prose(41, 700)
    junk = [
        "Skip to content",
        "[Home](/) | [Docs](/docs) | [Blog](/blog)",
        "Home · Pricing · About us",
        "[![Build](https://img.shields.io/badge/build-passing-green.svg)](https://ci.example.com)",
        "|Build-Status| |Coverage|",
        "FREQUENTLY ASKED QUESTIONS",
        "|--------|---------|",
        "We use cookies to improve your experience. Accept all cookies",
        "© 2024 Example Corp. All rights reserved.",
        "Copyright 2019 Example Corp",
        "[Learn more](https://example.com/more)",
        "Login",
        "Products",
        "TERMS AND CONDITIONS",
        ".. image:: https://example.com/logo.png",
        '<p align="center"><img src="logo.png"></p>',
    ]
    doc = "\n".join(junk[:5]) + f"\n\n{junk[5]}\n\n{keep1}\n{junk[6]}\n\n{junk[7]}\n{junk[8]}\n{junk[9]}\n\n"
    doc += f"# {junk[13]}\n\n{junk[14]}\n\n{junk[15]}\n\n{keep2}\n\n{junk[10]}\n\n{junk[11]}\n\n"
    doc += f"Home\n{junk[12]}\nContact\n"
    segments, stats = segment_corpus([{"text": doc, "source": "page.html"}])
    assert texts(segments) == [keep1, keep2]
    assert stats["allcaps_headers"] == 2
    assert stats["boilerplate_lines"] >= 15


def test_links_inside_prose_are_kept_and_code_is_left_alone():
    text = (
        f"{prose(50, 300)} By comparison, the well-established\n"
        "`ProgressBar <https://github.com/example/progressbar>`__ has\n"
        f"an 800ns overhead. See [the guide](https://example.com/guide) for more on this.\n\n"
        "    $ seq 99 | tqdm --bytes | wc -l\n    Home\n    Docs\n\n"
        f"```\n# not a heading\n\n{prose(51, 200)}\n```\n"
    )
    (segment,) = split_document(text, min_chars=100)
    assert "`ProgressBar <https://github.com/example/progressbar>`__ has" in segment
    assert "See [the guide](https://example.com/guide) for more on this." in segment
    assert "    $ seq 99 | tqdm --bytes | wc -l\n    Home\n    Docs" in segment
    assert "# not a heading" in segment


def test_a_segment_never_starts_with_whitespace_and_keeps_its_relative_indentation():
    """A segment is a response: a leading space would merge with the chat template's newline before it."""
    item = f"  - {prose(52, 200)}\n    continued under its item.\n  - {prose(53, 200)}"
    (segment,) = split_document(item, min_chars=100)
    assert segment.startswith("- ") and "\n  continued under its item.\n- " in segment
    (segment,) = split_document(f"  {prose(54, 150)}\n{prose(55, 150)}", min_chars=100)
    assert not segment[0].isspace() and "\n" + prose(55, 150)[:20] in segment


# --- duplicates and ids ----------------------------------------------------------------------------


def test_exact_and_near_duplicates_are_dropped_keeping_the_first():
    original = prose(60, 1300)
    words = original.split(" ")
    near = " ".join(words[:40] + ["lighthouse"] + words[41:150] + ["porcupine"] + words[151:])
    folded = "  " + original.lower().replace(" ", "\n", 3)  # the same text once case and spaces are folded
    other = prose(61, 1300)
    docs = [
        {"text": original, "source": "a"},
        {"text": folded, "source": "b"},
        {"text": near, "source": "c"},
        {"text": other, "source": "d"},
    ]
    segments, stats = segment_corpus(docs)
    assert [s["source"] for s in segments] == ["a", "d"]
    assert (stats["exact_duplicates"], stats["near_duplicates"]) == (1, 1)
    assert stats["segmenter"]["near_threshold"] == 0.8 and stats["segmenter"]["num_perm"] == 64


def test_segment_ids_are_stable_and_depend_only_on_the_text():
    mine = {"text": f"{prose(70, 900)}\n\n# Next\n\n{prose(71, 900)}", "source": "mine"}
    others = [{"text": prose(72 + i, 900), "source": f"other{i}"} for i in range(3)]
    first, _ = segment_corpus([mine, *others])
    again, _ = segment_corpus([mine, *others])
    reordered, _ = segment_corpus([others[2], others[0], mine, others[1]])
    assert first == again
    ids = {s["text"]: s["segment_id"] for s in first}
    assert {s["text"]: s["segment_id"] for s in reordered} == ids
    for text, key in ids.items():
        assert key == hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()[:16]
    assert len(set(ids.values())) == len(ids) == 5


def test_max_segments_stops_reading_early():
    def documents():
        for i in range(100):
            yield {"text": prose(80 + i, 900), "source": f"doc{i}"}
            assert i < 10, "read past the cap"

    segments, stats = segment_corpus(documents(), max_segments=3)
    assert len(segments) == 3 and stats["truncated"] and stats["documents"] == 3


# --- readers -----------------------------------------------------------------------------------------


def test_folder_of_text_files_is_read_in_order_with_paths_as_sources(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "b.md").write_text(prose(90, 700))
    (tmp_path / "a.txt").write_text("\ufeff" + prose(91, 700))  # a BOM is fine
    (tmp_path / "sub" / "c.rst").write_text(prose(92, 700))
    (tmp_path / "sub" / "d.markdown").write_text("")
    (tmp_path / ".cache" / "e.md").write_text(prose(93, 700))
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\xff")
    docs = list(read_corpus(tmp_path))
    assert [d["source"] for d in docs] == [
        str(tmp_path / n) for n in ("a.txt", "b.md", "sub/c.rst", "sub/d.markdown")
    ]
    assert docs[0]["text"] == prose(91, 700)
    segments, stats = segment_corpus(read_corpus(tmp_path))
    assert len(segments) == 3 and stats["skipped"] == {"empty_text": 1}
    assert list(read_corpus(tmp_path / "b.md")) == [
        {"text": prose(90, 700), "source": str(tmp_path / "b.md")}
    ]


def test_jsonl_with_a_text_column_skips_and_counts_empty_rows(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"body": prose(100, 700), "id": 1}, {"body": ""}, {"body": None}, {"body": prose(101, 700)}]
    path.write_text(
        "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:])
    )
    docs = list(read_corpus(path, text_column="body"))
    assert [d["source"] for d in docs] == [f"{path}:1", f"{path}:2", f"{path}:4", f"{path}:5"]
    segments, stats = segment_corpus(docs)
    assert [s["source"] for s in segments] == [f"{path}:1", f"{path}:5"]
    assert stats["skipped"] == {"empty_text": 1, "null_text": 1} and stats["documents"] == 4


def test_parquet_with_a_text_column(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"content": [prose(110, 700), prose(111, 700)], "n": [1, 2]}), path)
    docs = list(read_corpus(path, text_column="content"))
    assert docs == [
        {"text": prose(110, 700), "source": f"{path}:0"},
        {"text": prose(111, 700), "source": f"{path}:1"},
    ]
    with pytest.raises(
        DataError, match=r"corpus\.parquet: no 'text' column \(columns: content, n\).*text_column"
    ):
        list(read_corpus(path))


def test_hub_dataset_is_streamed(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return iter([{"text": prose(120, 700)}, {"text": prose(121, 700)}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = list(read_corpus("someone/web-text", split="train", config="en"))
    assert calls == [("someone/web-text", "en", "train", True)]
    assert [d["source"] for d in docs] == ["someone/web-text:0", "someone/web-text:1"]
    with pytest.raises(DataError, match=r"someone/web-text:0: no 'body' column \(columns: text\)"):
        list(read_corpus("someone/web-text", text_column="body"))


# --- bad input ----------------------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not UTF-8 .*re-encode"):
        list(read_corpus(tmp_path))


def test_bad_jsonl_rows_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        list(read_corpus(path))
    path.write_text('{"text": "fine"}\n{"content": "no text"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no 'text' field \(fields: content\).*text_column"):
        list(read_corpus(path))
    path.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: the text is int"):
        segment_corpus(read_corpus(path))


def test_empty_inputs_say_what_to_do(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"no corpus files; put \.txt"):
        read_corpus(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unsupported file type"):
        read_corpus(tmp_path / "notes.csv")
    with pytest.raises(DataError, match="no documents"):
        segment_corpus([])
    with pytest.raises(DataError, match=r"2 documents gave no segments .*lower min_chars"):
        segment_corpus([{"text": "Too short.", "source": "x"}, {"text": " ", "source": "y"}])


# --- the embedded corpus ----------------------------------------------------------------------------


def test_embedded_corpus_of_installed_package_descriptions():
    started = time.perf_counter()
    documents = installed_package_descriptions()
    segments, stats = segment_corpus(documents)
    seconds = time.perf_counter() - started
    print(
        f"embedded corpus: {len(documents)} documents -> {len(segments)} segments in {seconds:.1f}s; {stats}"
    )
    assert len(segments) >= 50
    assert all(s["source"].startswith("pypi-metadata:") and "==" in s["source"] for s in segments)
    assert all(600 <= s["chars"] <= 3000 for s in segments)
    names = [d["source"].split(":")[1].split("==")[0].lower() for d in documents]
    assert "selftaught" not in names and len(set(names)) == len(names)
    assert installed_package_descriptions(limit=5) == documents[:5]
