"""Extractive QA: start/end logits of every window -> one answer span per question, and SQuAD EM/F1.

A long context is cut into overlapping windows (doc stride), so one question has several rows
(features). Each row's n best start and end positions are paired; pairs outside the context,
reversed, or longer than `max_answer_length` tokens are skipped; the best-scoring pair over all
windows (start logit + end logit) is the answer, cut from the context by the offset mapping. The
same code runs on PyTorch outputs and on the exported ONNX model's outputs.
"""
from __future__ import annotations

import numpy as np

from sparsify_mlflow.usecases.base import Metrics

N_BEST = 20
NOT_CONTEXT = -1  # offset value of question, special and padding tokens


def best_answers(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                 feature_question: np.ndarray, contexts: list[str], *, n_best: int = N_BEST,
                 max_answer_length: int = 30) -> list[str]:
    """The answer text of each question (contexts[i] is question i's context; "" if no valid span).

    start_logits/end_logits: [features, seq]; offsets: [features, seq, 2] character spans into the
    context, NOT_CONTEXT outside it; feature_question: [features] question index of each row.
    """
    best: dict[int, tuple[float, str]] = {}
    for f in range(len(start_logits)):
        question, spans = int(feature_question[f]), offsets[f]
        starts = np.argsort(start_logits[f])[::-1][:n_best]
        ends = np.argsort(end_logits[f])[::-1][:n_best]
        for s in starts:
            if spans[s, 0] == NOT_CONTEXT:
                continue
            for e in ends:
                if spans[e, 0] == NOT_CONTEXT or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[f, s] + end_logits[f, e])
                if question not in best or score > best[question][0]:
                    best[question] = (score, contexts[question][spans[s, 0]:spans[e, 1]])
    return [best[i][1] if i in best else "" for i in range(len(contexts))]


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
