"""Token classification (NER) data: tagged sentences from JSON/JSONL or CoNLL text files.

Two formats:
- Hugging Face style JSON lines / JSON: one sentence per record with a list of `tokens` and a list
  of tags (`ner_tags` or `tags`), as strings ("B-PER") or integer ids. Integer ids need their
  names: a `labels.json` (a JSON list in id order) next to the data, or a hub dataset's ClassLabel.
- CoNLL text (.conll/.txt): one token per line, the token in the first column and its tag in the
  last, a blank line between sentences; `-DOCSTART-` lines are skipped.

Every problem is a DataError naming the file and the line of the sentence (token and tag lists of
different lengths, missing fields, empty tokens, tags unseen in training). Layouts as for text
classification: train + validation files in a folder, or one file split by seed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify_mlflow.data.splits import split_by_seed
from sparsify_mlflow.data.text_files import Row, find_split_files, read_rows, read_utf8
from sparsify_mlflow.errors import DataError

JSON_SUFFIXES = (".jsonl", ".json")
CONLL_SUFFIXES = (".conll", ".txt")
SUFFIXES = JSON_SUFFIXES + CONLL_SUFFIXES
TOKENS_COLUMNS = ("tokens", "words")
TAGS_COLUMNS = ("ner_tags", "tags", "labels")
LABELS_FILE = "labels.json"
_PREFIXED = re.compile(r"^(?P<prefix>[BIESLU])-(?P<type>.+)$")


@dataclass(frozen=True)
class Sentence:
    tokens: list[str]
    tags: list[int]          # ids into TokenSplits.label_names, one per token
    where: str               # file:line, for messages


@dataclass
class TokenSplits:
    train: list[Sentence]
    val: list[Sentence]
    label_names: list[str]
    tokens_column: str
    tags_column: str
    layout: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RawSentence:
    where: str
    tokens: list[str]
    tags: list[int | str]


def load_token_splits(data: Path, *, seed: int, tokens_column: str | None = None,
                      tags_column: str | None = None) -> TokenSplits:
    """Read a folder with train/validation files or a single file (split by seed) into sentences."""
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"data path {data} does not exist")
    if data.is_dir():
        train_file, eval_file, notes = find_split_files(data, SUFFIXES)
        files, layout = [train_file, eval_file], f"{train_file.name} + {eval_file.name}"
    else:
        files, layout, notes = [data], "single file split by seed", []
    columns = (tokens_column, tags_column)
    parts = [read_sentences(f, *columns) for f in files]
    if any(columns_ != parts[0][1] for _, columns_ in parts):
        raise DataError(f"{files[1]}: columns {parts[1][1]} differ from {files[0].name}'s {parts[0][1]}")
    names = _label_file(files[0].parent)
    return build_token_splits(parts[0][0], parts[1][0] if len(parts) > 1 else None, parts[0][1], seed=seed,
                              layout=layout, files=files, notes=notes, label_names=names)


def read_sentences(path: Path, tokens_column: str | None = None, tags_column: str | None = None
                   ) -> tuple[list[RawSentence], tuple[str, str]]:
    """Sentences of one file and the (tokens, tags) columns they came from."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return _read_conll(path), ("conll token column", "conll tag column")
    if suffix not in JSON_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'} for token classification; "
                        f"use one of {', '.join(SUFFIXES)}")
    return sentences_from_rows(read_rows(path), tokens_column, tags_column)


def sentences_from_rows(rows: list[Row], tokens_column: str | None = None, tags_column: str | None = None
                        ) -> tuple[list[RawSentence], tuple[str, str]]:
    """Records holding a token list and a tag list (local JSON or hub rows), checked one by one."""
    first = rows[0]
    tokens_column = tokens_column or _find_column(first, TOKENS_COLUMNS, "--tokens-column")
    tags_column = tags_column or _find_column(first, TAGS_COLUMNS, "--tags-column")
    return [_sentence(row, tokens_column, tags_column) for row in rows], (tokens_column, tags_column)


def _find_column(row: Row, candidates: tuple[str, ...], option: str) -> str:
    for name in candidates:
        if name in row.fields:
            return name
    raise DataError(f"{row.where}: none of the columns {', '.join(candidates)} found "
                    f"(columns: {', '.join(map(str, row.fields))}); name it with {option}")


def _sentence(row: Row, tokens_column: str, tags_column: str) -> RawSentence:
    for column in (tokens_column, tags_column):
        if column not in row.fields:
            raise DataError(f"{row.where}: no field {column!r} (fields: {', '.join(map(str, row.fields))})")
        if not isinstance(row.fields[column], list):
            raise DataError(f"{row.where}: field {column!r} holds {type(row.fields[column]).__name__}, "
                            "expected a list")
    tokens, tags = row.fields[tokens_column], row.fields[tags_column]
    if not tokens:
        raise DataError(f"{row.where}: empty sentence (no tokens in {tokens_column!r})")
    if len(tokens) != len(tags):
        raise DataError(f"{row.where}: {len(tokens)} tokens in {tokens_column!r} but {len(tags)} tags "
                        f"in {tags_column!r}; every token needs exactly one tag")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise DataError(f"{row.where}: token {i + 1} ({token!r}) is not a non-empty string")
    for i, tag in enumerate(tags):
        if isinstance(tag, bool) or not isinstance(tag, (int, str)) or (isinstance(tag, str) and not tag.strip()):
            raise DataError(f"{row.where}: tag {i + 1} ({tag!r}) of token {tokens[i]!r} is not a tag name or id")
    return RawSentence(row.where, list(tokens), [t.strip() if isinstance(t, str) else t for t in tags])


def _read_conll(path: Path) -> list[RawSentence]:
    """Blank-line separated sentences, one `token ... tag` line per token."""
    text = read_utf8(path)
    sentences: list[RawSentence] = []
    tokens: list[str] = []
    tags: list[int | str] = []
    start = 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        columns = line.split()
        if columns and columns[0] == "-DOCSTART-":
            continue
        if not columns:
            if tokens:
                sentences.append(RawSentence(f"{path}:{start}", tokens, tags))
            tokens, tags = [], []
            continue
        if len(columns) < 2:
            raise DataError(f"{path}:{number}: expected a token and its tag separated by whitespace, got {line.strip()!r}")
        if not tokens:
            start = number
        tokens.append(columns[0])
        tags.append(columns[-1])
    if not sentences:
        raise DataError(f"{path} has no sentences")
    return sentences


def _label_file(folder: Path) -> list[str] | None:
    """Tag names in id order from labels.json beside the data, for integer tags."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON list of tag names ({exc})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{path}: expected a JSON list of tag names in id order, e.g. [\"O\", \"B-PER\", \"I-PER\"]")
    return names


def build_token_splits(train: list[RawSentence], val: list[RawSentence] | None, columns: tuple[str, str], *, seed: int,
                       layout: str, files: list[Path], notes: list[str] | None = None,
                       label_names: list[str] | None = None) -> TokenSplits:
    """Map tags to ids and split. `label_names` gives the names of integer tags (labels.json, ClassLabel)."""
    every = [t for s in train + (val or []) for t in s.tags]
    kinds = {type(t) for t in every}
    if kinds == {int}:
        if label_names is None:
            raise DataError(f"{train[0].where}: tags are integer ids but their names are unknown; put "
                            f"{LABELS_FILE} (a JSON list in id order, e.g. [\"O\", \"B-PER\", \"I-PER\"]) "
                            "next to the data, or write the tags as names")
        names = list(label_names)
        index: dict[int | str, int] = {i: i for i in range(len(names))}
    elif kinds == {str}:
        names = tag_order({t for s in train for t in s.tags})  # type: ignore[arg-type]
        index = {n: i for i, n in enumerate(names)}
    else:
        raise DataError(f"{train[0].where}: tags mix names and integer ids; use one or the other")

    def convert(raw: list[RawSentence], split_of: str) -> list[Sentence]:
        out = []
        for sentence in raw:
            for tag in sentence.tags:
                if tag not in index:
                    known = f"ids 0-{len(names) - 1} of {LABELS_FILE}" if kinds == {int} else ", ".join(names)
                    raise DataError(f"{sentence.where}: tag {tag!r} does not occur in the training split "
                                    f"({split_of}); known tags: {known}")
            out.append(Sentence(sentence.tokens, [index[t] for t in sentence.tags], sentence.where))
        return out

    train_sentences = convert(train, train[0].where.rsplit(":", 1)[0])
    if val is None:
        train_sentences, val_sentences = split_by_seed(train_sentences, seed)
    else:
        val_sentences = convert(val, train[0].where.rsplit(":", 1)[0])
    if not val_sentences:
        raise DataError(f"{train[0].where.rsplit(':', 1)[0]}: too few sentences for a validation split")
    return TokenSplits(train_sentences, val_sentences, names, columns[0], columns[1], layout, files,
                       list(notes or []))


def tag_order(tags: set[str]) -> list[str]:
    """"O" first, then by entity type with its prefixes together (B-LOC, I-LOC, B-PER, ...)."""
    def key(tag: str) -> tuple[int, str, str]:
        match = _PREFIXED.match(tag)
        return (0, "", "") if tag == "O" else (1, match["type"], match["prefix"]) if match else (1, tag, "")
    return sorted(tags, key=key)


def hub_tag_names(features: Any, tags_column: str) -> list[str] | None:
    """The tag names of a hub dataset's Sequence(ClassLabel) column, if it has them."""
    feature = getattr(features.get(tags_column), "feature", None)
    return list(feature.names) if hasattr(feature, "names") else None
