"""MLflow pyfunc for a registered question answerer: question + context in, answer span out
(MLflow "models from code").

MLflow copies this file into the registered model next to its artifacts (model.onnx, the tokenizer
folder, config.json with the windowing settings), serving_engine.py and qa_spans.py (the decoding
evaluation uses), so the model loads without sparsify_mlflow installed: it needs numpy, pandas,
transformers (for the tokenizer) and onnxruntime (or deepsparse, openvino).

    model = mlflow.pyfunc.load_model("models:/<name>@candidate")
    model.predict(pd.DataFrame({"question": ["Where does Maria live?"], "context": ["Maria lives in Lisbon."]}))

A context longer than max_seq_length is cut into windows overlapping by doc_stride tokens, as in
training; the best span over all windows wins. One row per question: `answer` ("" when no span is
valid), `score` (start x end probability within the answer's window), `start` and `end` (character
offsets into the context, -1 without an answer). This file must not import sparsify_mlflow.
"""
from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class QuestionAnswerer(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from serving_engine import ServingEngine, engine_name  # code paths of the logged model
        from transformers import AutoTokenizer

        with open(context.artifacts["config"], encoding="utf-8") as fh:
            self.config = json.load(fh)
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        self.input_names = list(self.config["input_names"])
        self.engine = ServingEngine(engine_name(context), context.artifacts, self.input_names)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        from qa_spans import best_spans, encode_windows

        questions, contexts = _pairs(model_input)
        cfg = self.config
        encoded, offsets, feature_question = encode_windows(self.tokenizer, questions, contexts,
                                                            int(cfg["max_seq_length"]), int(cfg["doc_stride"]))
        start_logits, end_logits = self.engine.outputs(
            [np.ascontiguousarray(encoded[n], dtype=np.int64) for n in self.input_names])[:2]
        spans = best_spans(start_logits, end_logits, offsets, feature_question, contexts,
                           n_best=int(cfg["n_best"]), max_answer_length=int(cfg["max_answer_length"]))
        return pd.DataFrame({"answer": [s.text for s in spans], "score": [s.score for s in spans],
                             "start": [s.start for s in spans], "end": [s.end for s in spans]})


def _pairs(model_input: Any) -> tuple[list[str], list[str]]:
    """Questions and contexts from a DataFrame or dict with `question` and `context` (one row, or one list
    each: MLflow turns {"question": [...]} into a single row holding lists)."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: v if isinstance(v, (list, tuple, np.ndarray)) else [v]
                                    for k, v in model_input.items()})
    missing = {"question", "context"} - set(getattr(model_input, "columns", []))
    if missing:
        raise ValueError(f"question answering takes columns question and context; missing {', '.join(sorted(missing))}")
    flat: dict[str, list[str]] = {"question": [], "context": []}
    for column, values in flat.items():
        for value in model_input[column]:
            many = isinstance(value, (list, tuple, np.ndarray))
            values.extend(str(v) for v in value) if many else values.append(str(value))
    if len(flat["question"]) != len(flat["context"]):
        raise ValueError(f"{len(flat['question'])} questions but {len(flat['context'])} contexts")
    return flat["question"], flat["context"]


mlflow.models.set_model(QuestionAnswerer())
