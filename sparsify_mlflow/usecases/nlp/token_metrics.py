"""NER metrics: entity-level precision / recall / F1 (seqeval, conlleval rules) and token accuracy.

An entity counts as found only if its type and its exact span match (seqeval's default mode,
the CoNLL-2003 evaluation); the overall figures are micro averages over entities. Tags without a
B-/I-/E-/S- prefix ("PER", IO tagging) are read as I- tags, so consecutive words of one type form
one entity instead of being misparsed.
"""
from __future__ import annotations

import re
import warnings

from sparsify_mlflow.usecases.base import Metrics

_PREFIXED = re.compile(r"^[BIESLU]-.")
_METRIC_NAME = re.compile(r"[^\w\-. /]")


def as_iob(tags: list[str]) -> list[str]:
    return [t if t == "O" or _PREFIXED.match(t) else f"I-{t}" for t in tags]


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> Metrics:
    """Word-level tags per sentence (gold and predicted, same lengths) -> Metrics with main `f1`.

    Values: f1, precision, recall (micro over entities), token_accuracy (every word, O included)
    and f1.<TYPE> per entity type; the `per_entity` table has each type's figures and support.
    """
    from seqeval.metrics import accuracy_score, classification_report

    gold, pred = [as_iob(s) for s in gold], [as_iob(s) for s in pred]
    with warnings.catch_warnings():  # "Mean of empty slice" when a side has no entity at all
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
    overall = report["micro avg"]
    values = {"f1": float(overall["f1-score"]), "precision": float(overall["precision"]),
              "recall": float(overall["recall"]), "token_accuracy": float(accuracy_score(gold, pred))}
    table = []
    for entity, row in report.items():
        if entity.endswith(" avg"):
            continue
        values[f"f1.{_METRIC_NAME.sub('_', entity)}"] = float(row["f1-score"])
        table.append({"entity": entity, "precision": round(float(row["precision"]), 4),
                      "recall": round(float(row["recall"]), 4), "f1": round(float(row["f1-score"]), 4),
                      "support": int(row["support"])})
    return Metrics("f1", values, {"per_entity": table})
