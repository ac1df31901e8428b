"""The use-case registry: every use case by name, where it lives and the aliases it answers to.

A use case's module is imported only when it is first asked for, so a bad `--use-case` is
reported before torch or transformers are imported. Adding a use case is a row here, its module
(a `UseCase` subclass, see base.py), a row in the contract test's settings and a docs page.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparsify_mlflow.errors import ConfigError

if TYPE_CHECKING:
    from sparsify_mlflow.usecases.base import UseCase


@dataclass(frozen=True)
class Entry:
    module: str                 # imported on first use
    cls: str                    # the UseCase subclass in it
    aliases: tuple[str, ...]


_PACKAGE = "sparsify_mlflow.usecases"
REGISTRY: dict[str, Entry] = {
    "cv-classification": Entry(
        f"{_PACKAGE}.image_classification", "ImageClassification",
        ("image_classification", "image-classification", "classification", "cv_classification", "ic")),
    "cv-detection": Entry(
        f"{_PACKAGE}.vision_dense.detection", "Detection",
        ("object_detection", "object-detection", "detection", "yolo", "cv_detection")),
    "cv-segmentation": Entry(
        f"{_PACKAGE}.vision_dense.segmentation", "Segmentation",
        ("image_segmentation", "image-segmentation", "segmentation", "cv_segmentation")),
    "nlp-text_classification": Entry(
        f"{_PACKAGE}.nlp.text_classification", "TextClassification",
        ("text_classification", "text-classification", "nlp_text_classification", "nlp-text-classification")),
    "nlp-sentiment_analysis": Entry(
        f"{_PACKAGE}.nlp.text_classification", "SentimentAnalysis",
        ("sentiment_analysis", "sentiment-analysis", "sentiment", "nlp_sentiment_analysis", "nlp-sentiment-analysis")),
    "nlp-token_classification": Entry(
        f"{_PACKAGE}.nlp.token_classification", "TokenClassification",
        ("token_classification", "token-classification", "nlp_token_classification", "nlp-token-classification")),
    "nlp-named_entity_recognition": Entry(
        f"{_PACKAGE}.nlp.token_classification", "NamedEntityRecognition",
        ("ner", "named_entity_recognition", "named-entity-recognition", "nlp_named_entity_recognition",
         "nlp-named-entity-recognition", "nlp-ner")),
    "nlp-question_answering": Entry(
        f"{_PACKAGE}.nlp.question_answering", "QuestionAnswering",
        ("question_answering", "question-answering", "qa", "nlp_question_answering", "nlp-question-answering",
         "extractive_question_answering")),
}
_LOADED: dict[str, UseCase] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def aliases() -> dict[str, str]:
    """Every accepted spelling (lower case) -> canonical name."""
    out: dict[str, str] = {}
    for name, entry in REGISTRY.items():
        for alias in (name, *entry.aliases):
            owner = out.setdefault(_key(alias), name)
            if owner != name:
                raise ValueError(f"alias {alias!r} of {name} already belongs to {owner}")
    return out


def names() -> list[str]:
    """Canonical names, sorted."""
    return sorted(REGISTRY)


def canonical(name_or_alias: str) -> str:
    """The canonical name for a name or alias (case-insensitive); unknown names list the choices."""
    name = aliases().get(_key(name_or_alias))
    if name is None:
        raise ConfigError(f"unknown use case {name_or_alias!r}; supported: {', '.join(names())}")
    return name


def resolve(name_or_alias: str) -> UseCase:
    """The use case for a name or alias, its module imported the first time."""
    name = canonical(name_or_alias)
    if name not in _LOADED:
        entry = REGISTRY[name]
        _LOADED[name] = getattr(importlib.import_module(entry.module), entry.cls)(name)
    return _LOADED[name]
