"""The new-domain evaluation's data: held-out corpus documents never reach augmentation, and the questions
asked about them are fixed by the seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_backtranslate_segment import prose

from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.new_domain import (
    DOCUMENT_TEMPLATES,
    PACKAGE_TEMPLATES,
    corpus_documents,
    held_out_documents,
    instruction_for,
)
from selftaught.cli import main
from selftaught.data.shards import read_parquet

SEGMENTER = ["--min_chars", "200", "--max_chars", "700"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Thirty markdown documents of distinct prose, each long enough for a segment."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(30):
        (folder / f"doc{i:02d}.md").write_text(f"# Topic {i}\n\n{prose(100 + i, 600)}\n")
    return folder


def segment(run_dir: Path, corpus: Path, *extra: str) -> set[str]:
    """Run the segment stage; the sources its segments came from."""
    main(["backtranslate", "segment", "--run_dir", str(run_dir), "--corpus", str(corpus), *SEGMENTER, *extra])
    return {s["source"] for s in read_parquet(run_dir / "segments" / "segments.parquet")}


def test_held_out_documents_never_enter_augmentation(tmp_path, corpus, capsys):
    segmented = segment(tmp_path / "bt", corpus, "--eval_new_domain_documents", "3", "--seed", "7")
    assert "[segment] 3 documents held out" in capsys.readouterr().out  # never silently
    config = BacktranslateConfig(
        corpus=str(corpus), min_chars=200, max_chars=700, eval_new_domain_documents=3
    )
    held_out = {d["source"] for d in held_out_documents(corpus_documents(config), config, 7)}
    every = {d["source"] for d in corpus_documents(config)}
    assert len(held_out) == 3
    assert segmented == every - held_out  # only the held-out documents are missing, and all of them


def test_no_document_is_held_out_when_none_is_asked_for(tmp_path, corpus):
    config = BacktranslateConfig(corpus=str(corpus))
    every = {d["source"] for d in corpus_documents(config)}
    assert segment(tmp_path / "bt", corpus, "--eval_new_domain_documents", "0") == every


def test_the_held_out_documents_are_fixed_by_the_seed(corpus):
    config = BacktranslateConfig(
        corpus=str(corpus), min_chars=200, max_chars=700, eval_new_domain_documents=3
    )

    def chosen(seed: int) -> list[str]:
        return [d["source"] for d in held_out_documents(corpus_documents(config), config, seed)]

    assert chosen(1) == chosen(1)
    assert len({tuple(chosen(seed)) for seed in range(6)}) > 1


def test_instruction_templates_are_deterministic_by_seed():
    package = {"text": "Fast arrays for Python. " * 20, "source": "pypi-metadata:numpy==2.0.0"}
    asked = {seed: instruction_for(package, seed) for seed in range(12)}
    assert asked == {seed: instruction_for(package, seed) for seed in range(12)}  # the same seed, the same
    assert set(asked.values()) <= {t.format(name="numpy") for t in PACKAGE_TEMPLATES}
    assert len(set(asked.values())) > 1  # another seed may pick another template
    document = {
        "text": "## Sourdough baking ##\n\nWild yeast ferments the flour.",
        "source": "notes/bread.md",
    }
    assert instruction_for(document, 3) in {t.format(title="Sourdough baking") for t in DOCUMENT_TEMPLATES}
