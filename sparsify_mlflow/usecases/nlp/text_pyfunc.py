"""MLflow pyfunc for a registered text classifier: raw text in, labels out (MLflow "models from code").

MLflow copies this file into the registered model next to its artifacts (model.onnx, the tokenizer
folder, config.json) and serving_engine.py, so the model loads without sparsify_mlflow installed: it
needs numpy, pandas, transformers (for the tokenizer) and onnxruntime (or deepsparse, openvino).

    model = mlflow.pyfunc.load_model("models:/<name>@candidate")
    model.predict(pd.DataFrame({"text": ["a wonderful film", "dull and far too long"]}))
    model.predict({"text": [...]})                          # pairs: columns "text" and "text_pair"
    # DeepSparse or OpenVINO (its QDQ twin) instead of ONNX Runtime (serving: $MLFLOW_PYFUNC_INFERENCE_CONFIG):
    mlflow.pyfunc.load_model(uri, model_config={"engine": "deepsparse"})

The result is a DataFrame with `label`, `score` (softmax probability of that label) and
`label_id`. This file must not import sparsify_mlflow.
"""
from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class TextClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from transformers import AutoTokenizer

        with open(context.artifacts["config"], encoding="utf-8") as fh:
            self.config = json.load(fh)
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        self.labels = list(self.config["labels"])
        self.max_length = int(self.config["max_seq_length"])
        self.input_names = list(self.config["input_names"])
        from serving_engine import ServingEngine, engine_name  # a code path of the logged model

        self.engine = ServingEngine(engine_name(context), context.artifacts, self.input_names)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        from serving_engine import classified

        texts, pairs = _texts(model_input)
        encoded = self.tokenizer(texts, pairs, padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="np")
        arrays = [np.ascontiguousarray(encoded[n], dtype=np.int64) for n in self.input_names]
        return classified(self.engine.run(arrays), self.labels)


def _texts(model_input: Any) -> tuple[list[str], list[str] | None]:
    """Accept a DataFrame (text[, text_pair] or a single column), a dict, a list or one string.

    MLflow turns `{"text": ["a", "b"]}` into one row holding a list: such cells are flattened.
    """
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: v if isinstance(v, (list, tuple, np.ndarray)) else [v]
                                    for k, v in model_input.items()})
    if isinstance(model_input, pd.Series):
        return _flat(model_input), None
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        pairs = model_input["text_pair"] if "text_pair" in model_input.columns else None
        return _flat(model_input[column]), None if pairs is None else _flat(pairs)
    return _flat(model_input), None


def _flat(values: Any) -> list[str]:
    out: list[str] = []
    for value in values:
        out.extend(str(v) for v in value) if isinstance(value, (list, tuple, np.ndarray)) else out.append(str(value))
    return out


mlflow.models.set_model(TextClassifier())
