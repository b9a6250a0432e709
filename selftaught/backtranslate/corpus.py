"""The corpus that `segment` cuts: the user's documents (`read_corpus`) or, by default, the long
descriptions of the Python distributions installed here (`installed_package_descriptions`).

Readers yield documents {"text", "source"}, lazily. Bad input (decided per case): a file that is not UTF-8,
a malformed JSONL line, a missing text column, an empty folder, a path that does not exist: DataError
naming file, row and fix. Rows are named as `file:row`: the 1-based line for JSONL, the 0-based row index
for Parquet and Hub datasets (as in `dataset[row]`).

Why the default: Humpback needs unlabelled human-written text. Every installed distribution carries its
PyPI long description (usually its README) in its metadata, so any machine that can run this project
already holds a few hundred kilobytes of real prose, written by other people, in markdown and
reStructuredText, with the badges, link lists and tables that a segmenter has to cope with - and nothing
is downloaded. This project's own distribution is left out: the corpus must be text the project did not
write.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path

from selftaught.data.loading import DataError

# --- the user's corpus ----------------------------------------------------------------------------

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
TABLE_SUFFIXES = {".jsonl", ".parquet"}


def read_corpus(
    source: str | Path, text_column: str = "text", split: str = "train", config: str | None = None
) -> Iterator[dict]:
    """Documents from a folder or file (.txt/.md/.markdown/.rst, .jsonl, .parquet) or a Hub dataset.

    Paths are checked now, so a typo fails before a long run starts; the documents are read lazily.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and p.suffix.lower() in TEXT_SUFFIXES | TABLE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if not files:
            raise DataError(
                f"{path}: no corpus files; put .txt/.md/.markdown/.rst files, or .jsonl/.parquet files "
                f"with a '{text_column}' column, in it"
            )
        return (doc for file in files for doc in read_file(file, text_column))
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES | TABLE_SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type; use .txt, .md, .markdown, .rst, .jsonl or .parquet"
            )
        return read_file(path, text_column)
    if path.suffix.lower() in TEXT_SUFFIXES | TABLE_SUFFIXES or str(source).startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file or folder")
    return read_hub(str(source), text_column, split, config)


def read_file(path: Path, text_column: str = "text") -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from read_jsonl_texts(path, text_column)
    elif suffix == ".parquet":
        yield from read_parquet_texts(path, text_column)
    else:
        yield {"text": decode(path.read_bytes(), path), "source": str(path)}


def decode(data: bytes, path: Path, line: int | None = None) -> str:
    """UTF-8 (a leading BOM is fine); anything else is an error that says where, not mojibake."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        where = line if line is not None else data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{where}: not UTF-8 text ({err.reason} at byte {err.start}); re-encode the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or remove it"
        ) from err


def read_jsonl_texts(path: Path, text_column: str = "text") -> Iterator[dict]:
    """One JSON object per line, streamed (a corpus may not fit in memory); blank lines are ignored."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = decode(raw, path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{number}: malformed JSON ({err.msg}); fix or delete that line"
                ) from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            if text_column not in row:
                raise DataError(
                    f"{path}:{number}: no '{text_column}' field (fields: {', '.join(row) or 'none'}); "
                    "pass text_column= the field that holds the text"
                )
            yield {"text": row[text_column], "source": f"{path}:{number}"}


def read_parquet_texts(path: Path, text_column: str = "text") -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err}); rewrite it or remove it") from err
    names = table.schema_arrow.names
    if text_column not in names:
        raise DataError(
            f"{path}: no '{text_column}' column (columns: {', '.join(names)}); "
            "pass text_column= the column that holds the text"
        )
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[text_column]):
        for text in batch.column(0).to_pylist():
            yield {"text": text, "source": f"{path}:{row}"}
            row += 1


def read_hub(
    name: str, text_column: str = "text", split: str = "train", config: str | None = None
) -> Iterator[dict]:
    """A Hub dataset, streamed: a web-scale corpus is read only as far as `max_segments` needs."""
    import datasets

    rows = datasets.load_dataset(name, config, split=split, streaming=True)
    for index, row in enumerate(rows):
        if text_column not in row:
            raise DataError(
                f"{name}:{index}: no '{text_column}' column (columns: {', '.join(row)}); "
                "pass text_column= the column that holds the text"
            )
        yield {"text": row[text_column], "source": f"{name}:{index}"}


# --- the embedded default: installed package descriptions ------------------------------------------

MIN_DESCRIPTION_CHARS = 200  # "UNKNOWN", one-line summaries and "See README" are not worth segmenting
OWN_NAME = "selftaught"


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: `Typing_Extensions` and `typing-extensions` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def description(dist: importlib.metadata.Distribution) -> str:
    """The long description: the message body (metadata 2.1+) or the older `Description` header."""
    metadata = dist.metadata
    body = metadata.get_payload() if hasattr(metadata, "get_payload") else None
    if isinstance(body, str) and body.strip():
        return body
    header = metadata.get("Description") or ""
    # Header continuation lines are indented by 8 spaces, or by 7 and a "|" (setuptools).
    return re.sub(r"\n(?: {7}\|| {8})", "\n", header)


def installed_package_descriptions(limit: int | None = None) -> list[dict]:
    """Documents {text, source="pypi-metadata:name==version"}, sorted by name, one per distribution.

    A distribution found twice on sys.path (an egg-info next to a dist-info, say) counts once, and so does
    a description shared word for word by several distributions.
    """
    found = []
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata.get("Name"), dist.metadata.get("Version")
        if not name or canonical_name(name) == OWN_NAME:
            continue
        text = description(dist).replace("\r\n", "\n").strip()
        if len(text) >= MIN_DESCRIPTION_CHARS and text != "UNKNOWN":
            found.append((canonical_name(name), str(version), text, name))
    documents, names, texts = [], set(), set()
    for key, version, text, name in sorted(found):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if key in names or digest in texts:
            continue
        names.add(key)
        texts.add(digest)
        documents.append({"text": text, "source": f"pypi-metadata:{name}=={version}"})
    return documents[:limit] if limit is not None else documents
