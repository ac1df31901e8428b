"""Tiny real datasets the tests write: images, text, tagged sentences, questions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsify_mlflow.data.embedded_entities import generate_ner, generate_qa
from sparsify_mlflow.data.embedded_text import generate
from sparsify_mlflow.errors import DataError


def write_image(path: Path, label: int, rng: np.random.Generator, size: int = 24) -> None:
    """A learnable picture: class k draws a bright square in the k-th quadrant on noise."""
    from PIL import Image

    pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    row, col = divmod(label % 4, 2)
    pixels[row * half:(row + 1) * half, col * half:(col + 1) * half] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_image_folder(root: Path, classes: int = 2, per_class: int = 12, split: bool = True,
                      seed: int = 0) -> Path:
    """A tiny ImageFolder: root/train/<class>/*.png + root/val/<class>/*.png (or one flat level)."""
    rng = np.random.default_rng(seed)
    names = [f"class_{chr(ord('a') + k)}" for k in range(classes)]
    for k, name in enumerate(names):
        for i in range(per_class):
            if split:
                sub = "val" if i % 4 == 0 else "train"
                write_image(root / sub / name / f"{i:03d}.png", k, rng)
            else:
                write_image(root / name / f"{i:03d}.png", k, rng)
    return root


def write_jsonl(path: Path, rows: int = 80) -> Path:
    """Generated reviews; 80 rows give 64 training rows, 4 steps of 16: QAT starts within 1 epoch."""
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(rows)), encoding="utf-8")
    return path


def write_csv(folder: Path, rows: int = 80) -> Path:
    """train.csv + validation.csv with integer labels (0 negative, 1 positive)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    data = generate(rows)
    cut = rows * 4 // 5
    for name, part in (("train.csv", data[:cut]), ("validation.csv", data[cut:])):
        with open(folder / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sentence", "label"])
            writer.writerows([r["text"], int(r["label"] == "positive")] for r in part)
    return folder


def write_conll(folder: Path, sentences: int = 100) -> Path:
    """train.conll + validation.conll (80/20) of generated PER/LOC/ORG sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = generate_ner(sentences)
    cut = sentences * 4 // 5
    for name, part in (("train.conll", rows[:cut]), ("validation.conll", rows[cut:])):
        blocks = ["\n".join(f"{t} {g}" for t, g in zip(r["tokens"], r["ner_tags"])) for r in part]
        (folder / name).write_text("-DOCSTART- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return folder


def write_flat_qa(path: Path, questions: int = 100) -> Path:
    """Flat JSONL records (id, question, context, answers) from generated SQuAD articles."""
    rows = [{"id": qa["id"], "question": qa["question"], "context": p["context"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in generate_qa(questions) for p in article["paragraphs"] for qa in p["qas"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


def csv_file(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def expect_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert match in message, message
    assert "\n" not in message
    return message
