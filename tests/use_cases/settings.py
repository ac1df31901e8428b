"""Every registered use case's tiny setting: a data factory, a small model and its options.

The contract test runs each use case through the shared pipeline with these; a use case that is
registered without a setting here fails it (Composer's algorithm_settings, for use cases).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.data import make_image_folder, write_conll, write_flat_qa, write_jsonl
from sparsify_mlflow.data.synthetic_yolo import make_yolo_dataset


@dataclass(frozen=True)
class Setting:
    data: Callable[[Path], Path]           # writes the tiny dataset under the folder given, returns --data
    options: dict[str, Any] = field(default_factory=dict)   # build_config options (model, sizes, ...)
    tiny_bert: bool = False                 # --model: the session's 2-layer BERT (tests/conftest.py)


CV = {"model": "resnet18", "pretrained": False, "image_size": 32, "batch_size": 4}
NLP = {"max_seq_length": 32, "batch_size": 4}

SETTINGS: dict[str, Setting] = {
    "cv-classification": Setting(lambda d: make_image_folder(d / "images"), CV),
    "cv-detection": Setting(lambda d: make_yolo_dataset(d / "shapes", images=8, size=32, boxes=True), CV),
    "cv-segmentation": Setting(lambda d: make_yolo_dataset(d / "shapes", images=8, size=32), CV),
    "nlp-text_classification": Setting(lambda d: write_jsonl(d / "reviews.jsonl", rows=40), NLP, tiny_bert=True),
    "nlp-sentiment_analysis": Setting(lambda d: write_jsonl(d / "reviews.jsonl", rows=40), NLP, tiny_bert=True),
    "nlp-token_classification": Setting(lambda d: write_conll(d / "conll", 20), NLP, tiny_bert=True),
    "nlp-named_entity_recognition": Setting(lambda d: write_conll(d / "conll", 20), NLP, tiny_bert=True),
    "nlp-question_answering": Setting(lambda d: write_flat_qa(d / "qa.jsonl", 12), {**NLP, "max_seq_length": 64},
                                      tiny_bert=True),
}
