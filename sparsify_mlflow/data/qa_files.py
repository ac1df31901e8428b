"""Extractive question answering data: SQuAD nested JSON and flat JSONL/JSON/CSV records.

- SQuAD JSON: {"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]} (SQuAD v1.1; the official files work as they are).
- Flat records (Hugging Face `squad` rows): `id`, `question`, `context` and `answers` as
  {"text": [...], "answer_start": [...]} (or a list of {"text", "answer_start"}); in CSV the
  `answers` cell holds that JSON. `id` may be omitted (the file:line is used).

Every answer must be found in its context at `answer_start`: a mismatch, an empty context or
question, missing fields, duplicate ids or a question without answers (SQuAD v2's unanswerable
questions are not supported) is a DataError naming the file, the line and the question id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify_mlflow.data.splits import split_by_seed
from sparsify_mlflow.data.text_files import Row, find_split_files, read_rows
from sparsify_mlflow.errors import DataError

NESTED = "SQuAD JSON (data/paragraphs/qas)"
FLAT = "flat records (id, question, context, answers)"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: list[str]          # reference answer texts (training uses the first)
    starts: list[int]           # their character offsets in `context`
    where: str                  # file:line (question id), for messages


@dataclass
class QASplits:
    train: list[Question]
    val: list[Question]
    layout: str
    format: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def load_qa_splits(data: Path, *, seed: int) -> QASplits:
    """A folder with train/validation files or one file split by seed (by context: no paragraph in both)."""
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"data path {data} does not exist")
    if data.is_dir():
        train_file, eval_file, notes = find_split_files(data)
        train, fmt = questions_from_rows(read_rows(train_file))
        val, _ = questions_from_rows(read_rows(eval_file))
        return QASplits(train, val, f"{train_file.name} + {eval_file.name}", fmt, [train_file, eval_file], notes)
    questions, fmt = questions_from_rows(read_rows(data))
    train, val = split_by_seed(questions, seed, group=lambda q: q.context)
    if not val:
        raise DataError(f"{data}: too few contexts for a validation split (need at least two)")
    return QASplits(train, val, "single file split by seed (by context)", fmt, [data])


def questions_from_rows(rows: list[Row]) -> tuple[list[Question], str]:
    """Questions of SQuAD articles or flat records, checked; ids must be unique within the file."""
    nested = "paragraphs" in rows[0].fields
    questions = [q for row in rows for q in (_article(row) if nested else [_flat(row)])]
    seen: dict[str, str] = {}
    for q in questions:
        if q.id in seen:
            raise DataError(f"{q.where}: question id {q.id!r} is used twice (also at {seen[q.id]}); ids must be unique")
        seen[q.id] = q.where
    if not questions:
        raise DataError(f"{rows[0].path} has no questions")
    return questions, NESTED if nested else FLAT


def _article(row: Row) -> list[Question]:
    paragraphs = row.fields["paragraphs"]
    if not isinstance(paragraphs, list):
        raise DataError(f"{row.where}: 'paragraphs' holds {type(paragraphs).__name__}, expected a list")
    out = []
    for p_index, paragraph in enumerate(paragraphs, start=1):
        where = f"{row.where} (paragraph {p_index})"
        if not isinstance(paragraph, dict) or "context" not in paragraph or "qas" not in paragraph:
            raise DataError(f"{where}: expected an object with 'context' and 'qas'")
        for q_index, qa in enumerate(paragraph["qas"], start=1):
            if not isinstance(qa, dict):
                raise DataError(f"{where}: question {q_index} is not an object")
            qid = str(qa.get("id", f"{row.path.name}:{row.line}:{p_index}:{q_index}"))
            out.append(_question(f"{row.where} (question id {qid!r})", qid, qa.get("question"),
                                 paragraph["context"], qa.get("answers")))
    return out


def _flat(row: Row) -> Question:
    qid = str(row.fields.get("id") or f"{row.path.name}:{row.line}")
    where = f"{row.where} (question id {qid!r})"
    for name in ("question", "context", "answers"):
        if name not in row.fields:
            raise DataError(f"{where}: no field {name!r} (fields: {', '.join(map(str, row.fields))}); "
                            "flat records need question, context and answers")
    answers = row.fields["answers"]
    if isinstance(answers, str):  # CSV: the cell holds JSON
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'answers' is not JSON ({exc.msg}); expected "
                            '{"text": ["..."], "answer_start": [0]}') from None
    return _question(where, qid, row.fields["question"], row.fields["context"], answers)


def _question(where: str, qid: str, question: Any, context: Any, answers: Any) -> Question:
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str):
            raise DataError(f"{where}: {name} is {'missing' if value is None else type(value).__name__}, expected text")
        if not value.strip():
            raise DataError(f"{where}: empty {name}")
    texts, starts = _answer_lists(where, answers)
    if not texts:
        raise DataError(f"{where}: no answer (unanswerable questions, as in SQuAD v2, are not supported)")
    for text, start in zip(texts, starts):
        found = context[start:start + len(text)]
        if found != text:
            raise DataError(f"{where}: answer {text!r} at answer_start {start} does not match the context "
                            f"(it reads {found!r} there)")
    return Question(qid, question, context, texts, starts, where)


def _answer_lists(where: str, answers: Any) -> tuple[list[str], list[int]]:
    """({"text": [...], "answer_start": [...]} or [{"text", "answer_start"}, ...]) -> (texts, starts)."""
    if isinstance(answers, dict) and "text" in answers and "answer_start" in answers:
        texts, starts = answers["text"], answers["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where}: answers needs lists 'text' and 'answer_start' of the same length")
    elif isinstance(answers, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in answers):
        texts, starts = [a["text"] for a in answers], [a["answer_start"] for a in answers]
    else:
        raise DataError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}} or a list of "
                        f"{{\"text\", \"answer_start\"}}, got {json.dumps(answers)[:80]}")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: empty answer text {text!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise DataError(f"{where}: answer_start {start!r} is not a character offset")
    return list(texts), list(starts)
