"""Extractive QA: one answer per question from the windows' logits (qa_spans), and SQuAD EM/F1.

The same code runs on PyTorch outputs and on the exported ONNX model's outputs.
"""
from __future__ import annotations

import numpy as np

from sparsify_mlflow.usecases.base import Metrics
from sparsify_mlflow.usecases.nlp.qa_spans import N_BEST, best_spans


def best_answers(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                 feature_question: np.ndarray, contexts: list[str], *, n_best: int = N_BEST,
                 max_answer_length: int = 30) -> list[str]:
    """The answer text of each question ("" if no valid span); see qa_spans.best_spans."""
    return [span.text for span in best_spans(start_logits, end_logits, offsets, feature_question, contexts,
                                             n_best=n_best, max_answer_length=max_answer_length)]


def squad_metrics(predictions: list[str], references: list[list[str]], ids: list[str]) -> Metrics:
    """SQuAD v1.1 exact match and F1 (best over the references), as fractions; main `f1`.

    torchmetrics' SQuAD is a port of the official evaluation script (lower case, no punctuation,
    no articles, collapsed whitespace; token-overlap F1).
    """
    from torchmetrics.functional.text import squad

    scores = squad([{"prediction_text": p, "id": i} for p, i in zip(predictions, ids)],
                   [{"answers": {"text": refs, "answer_start": [0] * len(refs)}, "id": i}
                    for refs, i in zip(references, ids)])
    values = {"exact_match": float(scores["exact_match"]) / 100, "f1": float(scores["f1"]) / 100}
    return Metrics("f1", values)
