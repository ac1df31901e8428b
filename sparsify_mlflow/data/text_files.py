"""Hugging Face style text datasets from local files: JSON lines, JSON and CSV/TSV (UTF-8).

One example per row, with a text column (optionally a second one for sentence pairs) and a label
column. Every problem is a DataError naming the file and the line, so a user can open the file
at the right place: rows that are not JSON, missing columns, empty text, labels of the validation
split unseen in training, bytes that are not UTF-8, a single class.

Layouts: a folder with train.<ext> and validation.<ext> (also val/dev/valid/test as the second
split), or a single file split by seed (stratified, 20% validation). Readers are shared by the
NLP use cases (token classification and question answering reuse `read_rows`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify_mlflow.data.splits import stratified_split
from sparsify_mlflow.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
TRAIN_NAMES = ("train",)
EVAL_NAMES = ("validation", "val", "dev", "valid", "test")  # the first one found is the eval split
# (text, pair) column pairs tried in order when the user names no text column.
AUTO_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
    ("question", "sentence"), ("text", None), ("sentence", None),
)
DEFAULT_LABEL_COLUMN = "label"
_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Row:
    """One example as read: where it came from (for error messages) and its fields."""

    path: Path
    line: int          # 1-based line where the example starts (row number for in-memory data)
    fields: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: int          # id into TextSplits.label_names


@dataclass
class TextSplits:
    train: list[Example]
    val: list[Example]
    label_names: list[str]
    text_column: str
    pair_column: str | None
    label_column: str
    layout: str                       # "train/validation files", "single file split by seed", ...
    files: list[Path]                 # for the fingerprint
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading rows


def read_rows(path: Path) -> list[Row]:
    """Rows of a .jsonl/.json/.csv/.tsv file; DataError with file:line for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")
    text = read_utf8(path)
    if suffix == ".jsonl":
        rows = list(_json_lines(path, text))
    elif suffix == ".json":
        rows = _json_document(path, text)
    else:
        rows = list(_delimited(path, text, "\t" if suffix == ".tsv" else ","))
    if not rows:
        raise DataError(f"{path} has no examples")
    return rows


def read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a BOM is valid UTF-8 but not part of the first field


def _json_lines(path: Path, text: str) -> Iterator[Row]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        yield Row(path, number, _object(value, path, number))


def _json_document(path: Path, text: str) -> list[Row]:
    """A JSON list of objects, or {"data": [...]} (Hugging Face / SQuAD style); JSON lines also work."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.lineno > 1 and text.lstrip().startswith("{"):
            return list(_json_lines(path, text))  # a .json file holding JSON lines (as `datasets` allows)
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        items, start = document["data"], _array_start(text, "data")
    elif isinstance(document, list):
        items, start = document, text.index("[")
    elif isinstance(document, dict):  # one example in a .json file
        return [Row(path, 1, document)]
    else:
        raise DataError(f"{path}:1: expected a list of objects or {{\"data\": [...]}}, got {type(document).__name__}")
    lines = _element_lines(text, start, len(items))
    return [Row(path, line, _object(item, path, line)) for item, line in zip(items, lines)]


def _object(value: Any, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{path}:{line}: expected a JSON object with named fields, got {type(value).__name__}")
    return value


def _array_start(text: str, key: str) -> int:
    """Offset of the '[' that opens the value of a top-level `key` (the document is valid JSON)."""
    decoder = json.JSONDecoder()
    pos = text.index("{") + 1
    while True:
        pos = _skip(text, pos, " \t\r\n,")
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos, " \t\r\n:")
        if name == key:
            return pos
        _, pos = decoder.raw_decode(text, pos)


def _element_lines(text: str, start: int, count: int) -> list[int]:
    """1-based line of each element of the JSON array opening at `start`."""
    decoder = json.JSONDecoder()
    lines, pos, line, last = [], start + 1, 1 + text.count("\n", 0, start + 1), start + 1
    for _ in range(count):
        pos = _skip(text, pos, " \t\r\n,")
        line += text.count("\n", last, pos)
        lines.append(line)
        last = pos
        _, pos = decoder.raw_decode(text, pos)
    return lines


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _delimited(path: Path, text: str, delimiter: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    dupes = sorted(h for h, n in Counter(header).items() if n > 1)
    if dupes:
        raise DataError(f"{path}:1: duplicate column name(s) in the header: {', '.join(dupes)}")
    start = reader.line_num + 1
    try:
        for values in reader:
            if values and any(v.strip() for v in values):
                if len(values) != len(header):
                    raise DataError(
                        f"{path}:{start}: {len(values)} field(s) but the header has {len(header)} "
                        f"({', '.join(header)}); quote fields that contain '{delimiter}'"
                    )
                yield Row(path, start, dict(zip(header, values)))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from None


# --------------------------------------------------------------------------------------------
# Columns and labels


def pick_columns(row: Row, text_column: str | None, pair_column: str | None,
                 label_column: str | None) -> tuple[str, str | None, str]:
    """The (text, pair, label) column names for this data; auto-detected from the first row."""
    label_column = label_column or DEFAULT_LABEL_COLUMN
    if text_column is None:
        if pair_column is not None:
            raise DataError("--text-pair-column needs --text-column too")
        for text, pair in AUTO_COLUMNS:
            if text in row.fields and (pair is None or pair in row.fields):
                text_column, pair_column = text, pair
                break
        else:
            raise DataError(
                f"{row.where}: no text column found (tried {', '.join(t for t, _ in AUTO_COLUMNS)}; "
                f"columns: {', '.join(map(str, row.fields))}); name it with --text-column"
            )
    header = row.path.suffix.lower() in (".csv", ".tsv")  # columns are named once, on line 1
    for column in (text_column, pair_column, label_column):
        if column is not None and column not in row.fields:
            where = f"{row.path}:1" if header else row.where
            raise DataError(f"{where}: no column {column!r}{' in the header' if header else ''} "
                            f"(columns: {', '.join(map(str, row.fields))})")
    return text_column, pair_column, label_column


def _text(row: Row, column: str) -> str:
    if column not in row.fields:
        raise DataError(f"{row.where}: no column {column!r} (columns: {', '.join(map(str, row.fields))})")
    value = row.fields[column]
    if not isinstance(value, str):
        raise DataError(f"{row.where}: column {column!r} holds {type(value).__name__} {value!r}, expected text")
    if not value.strip():
        raise DataError(f"{row.where}: empty text in column {column!r}")
    return value


def _label(row: Row, column: str) -> int | str:
    """A label as int (ints and integer strings) or stripped str; bools, floats, blanks rejected."""
    if column not in row.fields:
        raise DataError(f"{row.where}: no column {column!r} (columns: {', '.join(map(str, row.fields))})")
    value = row.fields[column]
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise DataError(f"{row.where}: label {value!r} in column {column!r} is not a class name or id")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise DataError(f"{row.where}: label {value!r} is not a class (regression targets are not supported)")
        return int(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        raise DataError(f"{row.where}: empty label in column {column!r}")
    return int(text) if _INT.match(text) else text


def label_order(labels: Sequence[int | str]) -> list[int | str]:
    """Distinct labels in id order: numerically if all are integers, else as sorted strings."""
    distinct = set(labels)
    if all(isinstance(v, int) for v in distinct):
        return sorted(distinct)
    return sorted({str(v) for v in distinct})


def _key(label: int | str, numeric: bool) -> int | str:
    return label if numeric else str(label)


# --------------------------------------------------------------------------------------------
# Splits


def load_text_splits(data: Path, *, seed: int, text_column: str | None = None,
                     pair_column: str | None = None, label_column: str | None = None) -> TextSplits:
    """Read a folder with train/validation files or a single file (split by seed) into examples."""
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"data path {data} does not exist")
    if data.is_dir():
        train_file, eval_file, notes = find_split_files(data)
        train_rows, val_rows = read_rows(train_file), read_rows(eval_file)
        layout, files = f"{train_file.name} + {eval_file.name}", [train_file, eval_file]
    else:
        train_rows, val_rows, notes = read_rows(data), None, []
        layout, files = "single file split by seed", [data]
    columns = pick_columns(train_rows[0], text_column, pair_column, label_column)
    return build_splits(train_rows, val_rows, columns, seed=seed, layout=layout, files=files, notes=notes)


def find_split_files(folder: Path, suffixes: Sequence[str] = SUFFIXES) -> tuple[Path, Path, list[str]]:
    """train.<ext> and the first of validation/val/dev/valid/test.<ext> in `folder` (ext in `suffixes`)."""
    def find(stem: str) -> Path | None:
        found = [folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()]
        if len(found) > 1:
            raise DataError(f"{folder} has several {stem} files ({', '.join(p.name for p in found)}); keep one")
        return found[0] if found else None

    train = find("train")
    evals = [(name, find(name)) for name in EVAL_NAMES]
    evals = [(name, path) for name, path in evals if path is not None]
    if train is None:
        raise DataError(
            f"data folder {folder} has no train file (expected one of "
            f"{', '.join('train' + s for s in suffixes)} next to validation.<ext>), "
            "or pass a single file to split by seed"
        )
    if not evals:
        raise DataError(f"data folder {folder} has {train.name} but no validation file "
                        f"({', '.join(n + '.<ext>' for n in EVAL_NAMES)}); or pass {train} alone to split it")
    notes = [f"{path.name} is not used (validation is {evals[0][1].name})" for _, path in evals[1:]]
    return train, evals[0][1], notes


def build_splits(train_rows: list[Row], val_rows: list[Row] | None, columns: tuple[str, str | None, str], *,
                 seed: int, layout: str, files: list[Path], notes: list[str] | None = None,
                 label_names: list[str] | None = None) -> TextSplits:
    """Check rows, map labels to ids (sorted order unless `label_names` fixes it) and split.

    `label_names` is for data whose ids are already defined (a Hugging Face ClassLabel): integer
    labels are then ids into it.
    """
    text_col, pair_col, label_col = columns
    train_labels = [_label(r, label_col) for r in train_rows]
    if label_names is None:
        order = label_order(train_labels)
        numeric = all(isinstance(v, int) for v in order)
        names = [str(v) for v in order]
        index = {v: i for i, v in enumerate(order)}
    else:
        numeric, names = True, list(label_names)
        index = {i: i for i in range(len(names))} | {n: i for i, n in enumerate(names)}
    if len(set(train_labels)) < 2:
        only = names[0] if names else "?"
        raise DataError(
            f"{train_rows[0].path}: only one class ({only!r} in column {label_col!r}, lines "
            f"{train_rows[0].line}-{train_rows[-1].line}); classification needs at least two"
        )

    def examples(rows: list[Row], labels: list[int | str], split_of: str) -> list[Example]:
        out = []
        for row, label in zip(rows, labels):
            text = _text(row, text_col)
            pair = _text(row, pair_col) if pair_col else None
            key = _key(label, numeric) if label_names is None else label
            if key not in index:
                raise DataError(
                    f"{row.where}: label {label!r} does not occur in the training split "
                    f"({split_of}); known labels: {', '.join(names)}"
                )
            out.append(Example(text, pair, index[key]))
        return out

    train = examples(train_rows, train_labels, str(train_rows[0].path))
    if val_rows is None:
        train, val = stratified_split(train, lambda ex: ex.label, seed)
    else:
        val = examples(val_rows, [_label(r, label_col) for r in val_rows], str(train_rows[0].path))
    if not val:
        raise DataError(f"{train_rows[0].path}: too few examples for a validation split")
    return TextSplits(train, val, names, text_col, pair_col, label_col, layout, files, list(notes or []))
