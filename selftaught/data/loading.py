"""Read rows from a JSONL/Parquet file, a folder of them, or a Hub dataset, as a `datasets.Dataset`.

Folders follow the Hub's convention: files whose names start with a split name (`train.jsonl`,
`test-00000.parquet`) form that split; anything else is `train`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, concatenate_datasets, load_dataset

SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the file, the row and the fix."""


def read_jsonl(path: Path) -> Dataset:
    """One JSON object per line. Written here (datasets' reader does not say which line is bad).

    Lines are split on bytes (\\n, \\r\\n), not with `str.splitlines`, which also breaks at U+2028, U+0085
    and other characters that JSON strings may hold unescaped; a leading UTF-8 BOM is accepted.
    """
    rows, numbers = [], []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start}); "
                "re-encode the file as UTF-8"
            ) from err
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg}); fix or delete that line") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
        numbers.append(number)
    if not rows:
        raise DataError(f"{path}: no rows; write one JSON object per line")
    # Dataset.from_list takes its columns from the first row; give every row every key instead.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{key: row.get(key) for key in columns} for row in rows]
    for column in columns:
        one_type_per_column(rows, numbers, column, path)
    try:
        return Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # types mixed deeper, inside lists or objects
        raise DataError(
            f"{path}: the rows do not share one type per field ({err}); write them alike"
        ) from err


KINDS = {
    str: "text",
    int: "a number",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
}


def one_type_per_column(rows: list[dict], numbers: list[int], column: str, path: Path) -> None:
    """Arrow stores one type per column. Numbers, true/false and text mixed in a column are read as text
    (an answer 2 on one line and "4" on another: "2" and "4"); a list or an object beside anything else
    has no one reading, so the first row that differs is named."""
    shapes: dict[type, tuple[str, int]] = {}  # scalar, list or dict: how its first value reads, and where
    scalar_kinds = set()
    for number, row in zip(numbers, rows, strict=True):
        value = row[column]
        if value is None:
            continue
        kind = KINDS[type(value)]
        shape = type(value) if isinstance(value, (list, dict)) else str
        shapes.setdefault(shape, (kind, number))
        if shape is str:
            scalar_kinds.add(kind)
    if len(shapes) > 1:
        (first, line), (other, number) = sorted(shapes.values(), key=lambda seen: seen[1])[:2]
        raise DataError(
            f"{path}:{number}: `{column}` is {other} here but {first} on line {line}; write every row's "
            f"`{column}` as {first}"
        )
    if len(scalar_kinds) > 1:
        for row in rows:
            if row[column] is not None and not isinstance(row[column], str):
                row[column] = json.dumps(row[column])


def read_file(path: Path) -> Dataset:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type; use .jsonl, .json or .parquet")
    if path.suffix == ".parquet":
        try:
            pq.read_metadata(path)  # the footer only: a file that is not Parquet fails here, in milliseconds
        except pa.ArrowException as err:
            raise DataError(f"{path}: not a Parquet file ({err}); write it as Parquet, or as .jsonl") from err
    return load_dataset(SUFFIXES[path.suffix], data_files=str(path), split="train")


def split_files(folder: Path) -> dict[str, list[Path]]:
    """Data files in a folder grouped by split, by file-name prefix."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no .jsonl, .json or .parquet files")
    groups: dict[str, list[Path]] = {}
    for path in files:
        split = next((s for s in SPLITS if path.stem.startswith(s)), "train")
        groups.setdefault(split, []).append(path)
    return groups


def available_splits(source: str, config: str | None = None) -> list[str]:
    path = Path(source).expanduser()
    if path.is_dir():
        return sorted(split_files(path))
    if path.is_file():
        return ["train"]
    from datasets import get_dataset_split_names

    return get_dataset_split_names(source, config)


def load_rows(source: str, split: str = "train", config: str | None = None) -> Dataset:
    """Rows of one split of `source` (a file, a folder, or a Hub dataset name)."""
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path)
    if path.is_dir():
        groups = split_files(path)
        if split not in groups:
            raise DataError(f"{path}: no '{split}' split (found {sorted(groups)}); name files {split}.jsonl")
        return concatenate_datasets([read_file(p) for p in groups[split]])
    if path.suffix in SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file or folder")
    return load_dataset(source, config, split=split)


def content_fingerprint(source: str | None) -> str | None:
    """What a local file or folder holds: '<bytes> bytes, sha256 <16 hex digits>' (a folder: over the names
    and contents of its files, hidden ones aside), so that a stage which skips finished work notices a file
    whose content changed behind the same name. None for a Hub dataset: hashing it would mean downloading
    it, so a stage records its name and split instead (`load_rows` pins no revision). None for no source."""
    path = Path(source).expanduser() if source else None
    if path is not None and path.is_file():
        files = {"": path}  # the content alone: a renamed copy is the same input
    elif path is not None and path.is_dir():
        files = {
            p.relative_to(path).as_posix(): p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        }
    else:
        return None
    digest, size = hashlib.sha256(), 0
    for name, file in files.items():
        digest.update(name.encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        digest.update(b"\0")
    return f"{size} bytes, sha256 {digest.hexdigest()[:16]}"
