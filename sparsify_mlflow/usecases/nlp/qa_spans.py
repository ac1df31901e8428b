"""Start/end logits of every window -> one answer span per question (numpy only).

A long context is cut into overlapping windows (doc stride), so one question has several rows
(features). Each row's n best start and end positions are paired; pairs outside the context,
reversed, or longer than `max_answer_length` tokens are skipped; the best-scoring pair over all
windows (start logit + end logit) is the answer, cut from the context by the offset mapping.

Evaluation (qa_answers) and the registered model's pyfunc (qa_pyfunc, where MLflow copies this file
as a code path) decode with this same code, so this module imports nothing but numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_BEST = 20
NOT_CONTEXT = -1  # offset value of question, special and padding tokens


@dataclass(frozen=True)
class Span:
    text: str         # "" when no window holds a valid span
    start: int        # character offsets into the context (-1 without a span)
    end: int
    score: float      # start probability x end probability within its window (softmax over the window)


def encode_windows(tokenizer: Any, questions: list[str], contexts: list[str], max_length: int,
                   stride: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Question + context windows as training saw them: (the tokenizer's encoding, offsets [features, seq, 2]
    into the context with NOT_CONTEXT outside it, and each window's question index)."""
    encoded = tokenizer([q.lstrip() for q in questions], contexts, truncation="only_second", max_length=max_length,
                        stride=stride, padding="max_length", return_overflowing_tokens=True,
                        return_offsets_mapping=True, return_tensors="np")
    n = len(encoded["input_ids"])
    offsets = np.full((n, max_length, 2), NOT_CONTEXT, dtype=np.int64)
    for f in range(n):
        context = np.array([s == 1 for s in encoded.sequence_ids(f)])
        offsets[f][context] = encoded["offset_mapping"][f][context]
    return encoded, offsets, np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
               feature_question: np.ndarray, contexts: list[str], *, n_best: int = N_BEST,
               max_answer_length: int = 30) -> list[Span]:
    """The answer of each question (contexts[i] is question i's context).

    start_logits/end_logits: [features, seq]; offsets: [features, seq, 2] character spans into the
    context, NOT_CONTEXT outside it; feature_question: [features] question index of each row.
    """
    best: dict[int, tuple[float, Span]] = {}
    for f in range(len(start_logits)):
        question, spans = int(feature_question[f]), offsets[f]
        p_start, p_end = _softmax(start_logits[f]), _softmax(end_logits[f])
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
                    first, last = int(spans[s, 0]), int(spans[e, 1])
                    best[question] = (score, Span(contexts[question][first:last], first, last,
                                                  float(p_start[s] * p_end[e])))
    return [best[i][1] if i in best else Span("", -1, -1, 0.0) for i in range(len(contexts))]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
