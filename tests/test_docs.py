"""The documentation's links and names point at things that exist.

README.md, BENCHMARKS.md and docs/ are read by people who follow a link or open a named file, and files
move: a link to a moved section, a result file that was never committed or a renamed function is a dead
end for the reader. These tests read the Markdown only (no model, no network), so they run in the unit tier.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
# Backticked paths of the repository: a top-level folder, then a file or folder name.
REPO_PATH = re.compile(r"^(?:selftaught|bench|scripts|tests|docs|configs|lock)/[\w./-]*$")


def prose(text: str) -> str:
    """The text outside fenced code blocks: a command in a block may name a file it would write."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page.read_text()).splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or whose anchor in a Markdown file, does not exist."""
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", prose(page.read_text()))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {path})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading with anchor #{anchor} in {file.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} has broken links"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing anchor are both reported."""
    (tmp_path / "other.md").write_text("# A heading — `with code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading--with-code) [gone](missing.md) [bad anchor](other.md#nothing)\n"
        "```bash\n[in a command](not-a-link.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md (no file missing.md)",
        "other.md#nothing (no heading with anchor #nothing in other.md)",
    ]


def test_every_result_file_benchmarks_names_is_committed() -> None:
    """A result quoted in BENCHMARKS.md (outside a command that would write it) must be there to check."""
    named = set(re.findall(r"bench/results/[\w.-]+\.json", prose((ROOT / "BENCHMARKS.md").read_text())))
    assert named, "BENCHMARKS.md names no result file"
    assert sorted(name for name in named if not (ROOT / name).exists()) == []


def test_every_committed_result_file_is_named_in_benchmarks() -> None:
    """Each result JSON committed before provenance was recorded says "BENCHMARKS.md gives the command": so
    every file in bench/results/ must be named there (its command beside it, or on the page it links)."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    committed = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.json"))
    assert [name for name in committed if name not in text] == []


def test_every_benchmark_script_has_a_headline_row() -> None:
    """The table at the top of BENCHMARKS.md lists every script in bench/ (its own row, its own section)."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    table = text.split("## Headline results", 1)[1].split("\n## ", 1)[0]
    scripts = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "common.py")
    assert [s for s in scripts if f"bench/{s}" not in table] == []
    assert [s for s in scripts if not re.search(rf"^## .*`bench/{re.escape(s)}`", text, re.MULTILINE)] == []


def named_paths(page: Path) -> list[str]:
    """The repository paths a page names in inline code, `file.py:function` included."""
    codes = INLINE_CODE.findall(prose(page.read_text()))
    return [code for code in codes if REPO_PATH.match(code.split(":")[0]) and not re.search(r"[*{]", code)]


def defines(file: Path, name: str) -> bool:
    """Whether a Python file defines `name` (a function, a class, or a module-level constant)."""
    escaped = re.escape(name)
    return bool(
        re.search(rf"^\s*(def|class)\s+{escaped}\b|^{escaped}\s*[:=]", file.read_text(), re.MULTILINE)
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_and_function_exists(page: Path) -> None:
    """`selftaught/scoring/curation.py:SelectionRule` names a file and a definition in it; both must exist."""
    missing = []
    for code in named_paths(page):
        path, _, name = code.partition(":")
        if not (ROOT / path).exists() or (name and not defines(ROOT / path, name)):
            missing.append(code)
    assert missing == [], f"{page.relative_to(ROOT)} names what does not exist"


def layout_entries() -> list[str]:
    """The paths the README's layout block names at its first two levels (`selftaught/cli.py`)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### Layout: every folder", 1)[1].split("```", 2)[1]
    entries, top = [], ""
    for line in block.splitlines():
        if match := re.match(r"^( {0,2})(\S+)\s", line + " "):
            indent, name = match.groups()
            top = top if indent else name
            entries.append(top + name if indent else name)
    return entries


def test_the_readme_layout_names_every_folder_and_subpackage() -> None:
    """A newcomer's map: every top-level folder and every part of the package is on it, and nothing else."""
    entries = layout_entries()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {f"{path.split('/')[0]}/" for path in tracked.splitlines() if "/" in path and path[0] != "."}
    package = {
        f"selftaught/{p.name}/" if p.is_dir() else f"selftaught/{p.name}"
        for p in (ROOT / "selftaught").iterdir()
        if (p / "__init__.py").exists() or (p.suffix == ".py" and p.name != "__init__.py")
    }
    assert sorted((folders | package) - set(entries)) == []
    assert [entry for entry in entries if not (ROOT / entry).exists()] == []
