"""Tiny hand-written ONNX files with a property a test needs (what an engine accepts or refuses)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def openvino_refuses(path: Path) -> Path:
    """logits = Scaler(input) @ W: valid ONNX that ONNX Runtime runs and OpenVINO 2026.4 has no conversion
    rule for (ai.onnx.ml.Scaler), the way a graph it cannot compile looks to the engines' fallbacks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Scaler", ["input"], ["scaled"], domain="ai.onnx.ml", offset=[0.0] * 8, scale=[1.0] * 8),
             helper.make_node("MatMul", ["scaled", "W"], ["logits"])]
    graph = helper.make_graph(nodes, "scaler", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
