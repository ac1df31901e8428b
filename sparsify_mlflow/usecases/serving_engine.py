"""The engine a served model runs on: ONNX Runtime (default), DeepSparse or OpenVINO.

Logged beside the pyfuncs (image, text, token and QA) as an MLflow code path, so a registered
model loads it without sparsify_mlflow installed; this file must not import sparsify_mlflow.

    mlflow.pyfunc.load_model(uri, model_config={"engine": "openvino"})
    MLFLOW_PYFUNC_INFERENCE_CONFIG='{"engine": "openvino"}' mlflow models serve -m models:/<name>@champion ...

(MLflow's own override of a logged model_config; the model is logged with engine onnxruntime.)

OpenVINO runs the QDQ INT8 twin (`qdq_model`) where the version has one: the form its integer
kernels take (the converted INT8 file would run at float precision there), with its float ops at f32.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

ENGINES = ("onnxruntime", "deepsparse", "openvino")


def engine_name(context: Any) -> str:
    """model_config's `engine` (load_model's model_config or $MLFLOW_PYFUNC_INFERENCE_CONFIG over the logged
    one), else onnxruntime."""
    name = (getattr(context, "model_config", None) or {}).get("engine") or "onnxruntime"
    if name not in ENGINES:
        raise ValueError(f"serving engine {name!r}: must be one of {', '.join(ENGINES)} (model_config 'engine')")
    return name


class ServingEngine:
    """One compiled model: `run(arrays)` -> the first output, for a batch of any size."""

    def __init__(self, name: str, artifacts: dict[str, str], input_names: Sequence[str]) -> None:
        self.name, self.input_names = name, list(input_names)
        path = (artifacts.get("qdq_model") or artifacts["model"]) if name == "openvino" else artifacts["model"]
        if name == "deepsparse":
            import deepsparse

            self._compiled = deepsparse.compile_model(path, batch_size=1)
        elif name == "openvino":
            import openvino

            # the INT8 file's float ops at f32, as the run evaluated it (engines.INT8_FILE_PRECISION)
            config = {"INFERENCE_PRECISION_HINT": "f32"} if artifacts.get("qdq_model") else {}
            self._compiled = openvino.Core().compile_model(path, "CPU", config)
        else:
            import onnxruntime as ort

            self._compiled = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        print(f"serving on {name}: {os.path.basename(path)}", file=sys.stderr, flush=True)  # in the server's log

    def run(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        return self.outputs(arrays)[0]

    def outputs(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every output of the model, in the file's order (QA: start and end logits)."""
        if self.name == "deepsparse":  # compiled for batch size 1
            rows = [self._compiled.run([a[i:i + 1] for a in arrays]) for i in range(len(arrays[0]))]
            return [np.concatenate([row[k] for row in rows]) for k in range(len(rows[0]))]
        if self.name == "openvino":
            result = self._compiled(list(arrays))
            return [np.asarray(result[output]) for output in self._compiled.outputs]
        return list(self._compiled.run(None, dict(zip(self.input_names, arrays))))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def classified(logits: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """One row per input: `label`, `score` (its softmax probability) and `label_id`."""
    probs = softmax(logits)
    ids = probs.argmax(axis=1)
    return pd.DataFrame({"label": [labels[i] for i in ids], "score": probs[np.arange(len(ids)), ids].astype(float),
                         "label_id": ids.astype(int)})
