"""The engine a registered pyfunc serves on: its model_config's, else ONNX Runtime; OpenVINO runs the QDQ twin."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsify_mlflow.engines import openvino_status
from sparsify_mlflow.usecases.serving_engine import ServingEngine, engine_name


def test_the_model_config_names_the_engine_and_a_bad_name_is_refused() -> None:
    assert engine_name(SimpleNamespace(model_config=None)) == "onnxruntime"
    assert engine_name(SimpleNamespace(model_config={"engine": "openvino"})) == "openvino"
    with pytest.raises(ValueError, match="serving engine 'tensorrt': must be one of onnxruntime, deepsparse, openvino"):
        engine_name(SimpleNamespace(model_config={"engine": "tensorrt"}))


def _linear(path: Path, scale: float) -> Path:
    """y = x @ W with a dynamic batch: W = scale * identity, so each file's answer is known."""
    weight = numpy_helper.from_array((scale * np.eye(4)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("engine", ["onnxruntime", "deepsparse", "openvino"])
def test_each_engine_answers_a_batch_and_openvino_runs_the_qdq_file(engine: str, tmp_path: Path) -> None:
    if engine == "openvino" and not openvino_status()[0]:
        pytest.skip(f"OpenVINO is not installed here: {openvino_status()[1]}")
    artifacts = {"model": str(_linear(tmp_path / "model.onnx", 1.0)),
                 "qdq_model": str(_linear(tmp_path / "model.qdq.onnx", 2.0))}  # tells the files apart
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = ServingEngine(engine, artifacts, ["input"]).run([x])
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, x * (2.0 if engine == "openvino" else 1.0), rtol=1e-5)


def test_ner_spans_join_b_and_i_tags_of_one_type() -> None:
    from sparsify_mlflow.usecases.nlp.token_pyfunc import entities

    words = ["Maria", "Lopez", "moved", "to", "New", "York", "and", "Acme", "Corp"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "I-ORG", "B-ORG"]
    assert entities(words, tags) == [
        {"text": "Maria Lopez", "type": "PER", "start": 0, "end": 2},
        {"text": "New York", "type": "LOC", "start": 4, "end": 6},
        {"text": "Acme", "type": "ORG", "start": 7, "end": 8},   # a stray I- opens a span
        {"text": "Corp", "type": "ORG", "start": 8, "end": 9},   # B- always opens a new one
    ]
