"""OpenVINO as an engine on tiny real files: it runs what ONNX Runtime runs, and where it is missing or
cannot compile a file, the plan falls back to ONNX Runtime with one line (or none, where the caller says it)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers.onnx_files import openvino_refuses
from sparsify_mlflow.engines import (
    EngineUnavailable,
    cpu_info,
    load_engine,
    load_openvino,
    openvino_facts,
    openvino_status,
    plan_benchmarks,
    predict_batches,
)


def conv_net(path: Path, int8: bool = False) -> Path:
    """Conv -> Relu -> global pool -> flatten -> MatMul on 3x8x8: the op kinds the exported models hold;
    `int8`: activations and conv weights in QDQ form, as the project's QDQ twins hold them."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "F")]
    front = []
    if int8:
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "Wq"),
                  numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        front = [helper.make_node("QuantizeLinear", ["input", "xs", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "z"], ["x"]),
                 helper.make_node("DequantizeLinear", ["Wq", "ws", "z"], ["W"])]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"))
    nodes = [*front, helper.make_node("Conv", ["x" if int8 else "input", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "F"], ["logits"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


ROWS = [np.random.default_rng(1).standard_normal((7, 3, 8, 8)).astype(np.float32)]


def test_openvino_computes_what_onnxruntime_computes(tmp_path: Path) -> None:
    path = conv_net(tmp_path / "net.onnx")
    reference = predict_batches(load_engine(path, "onnxruntime", batch_size=7, num_cores=1), ROWS)[0]
    exact = load_openvino(path, batch_size=4, num_cores=1, precision="f32")  # 7 rows: one padded batch
    assert exact.name == "openvino" and exact.fraction_of_supported_ops is None and exact.input_names == ("input",)
    np.testing.assert_allclose(predict_batches(exact, ROWS)[0], reference, rtol=1e-4, atol=1e-4)
    default = load_engine(path, "openvino", batch_size=2, num_cores=1)  # bf16 on CPUs with AVX512_BF16/AMX
    np.testing.assert_allclose(predict_batches(default, ROWS)[0], reference, rtol=0.05, atol=0.05)
    facts = openvino_facts()
    assert facts["version"].startswith("2026.4") and facts["precision"] in ("bf16", "f32", "f16"), facts
    assert plan_benchmarks(path, ("openvino",), (1, 4), 1) == ([("openvino", 1), ("openvino", 4)], set(), [])


def test_a_file_openvino_cannot_compile_is_one_line_and_onnxruntime_takes_it(tmp_path: Path) -> None:
    path = openvino_refuses(tmp_path / "odd" / "scaler.onnx")
    reason = "Model wasn't fully converted. No conversion rule found for operations: ai.onnx.ml.Scaler"
    with pytest.raises(EngineUnavailable) as info:
        load_engine(path, "openvino", batch_size=1, num_cores=1)
    assert str(info.value) == f"OpenVINO could not compile scaler.onnx: {reason}"
    plan, _, notes = plan_benchmarks(path, ("openvino",), (1, 4), 1)
    assert plan == [("onnxruntime", 1), ("onnxruntime", 4)]
    assert notes == [f"OpenVINO cannot compile odd/scaler.onnx ({reason}); ONNX Runtime measured it instead"]
    rows = [np.ones((3, 8), np.float32)]
    assert predict_batches(load_engine(path, plan[0][0], batch_size=1, num_cores=1), rows)[0].shape == (3, 3)


def test_openvino_missing_is_one_line_and_the_plan_falls_back_without_a_note_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = conv_net(tmp_path / "net.onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)  # an import of it fails, as where it is not installed
    usable, reason = openvino_status()
    assert not usable and reason.startswith("openvino is not installed (") and reason.endswith("); pip install openvino")
    with pytest.raises(EngineUnavailable, match=r"^openvino is not installed \([^\n]*\); pip install openvino$"):
        load_engine(path, "openvino", batch_size=1)
    assert plan_benchmarks(path, ("openvino",), (1, 4), 1) == ([("onnxruntime", 1), ("onnxruntime", 4)], set(), [])


def test_an_int8_file_keeps_its_float_ops_at_f32_on_openvino(tmp_path: Path) -> None:
    """OpenVINO's default bf16 (AVX512_BF16/AMX CPUs) would be a second approximation on top of the INT8
    the run trained; a float file keeps the default, the fastest dense deployment."""
    def precision(engine) -> str:
        return engine._impl.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").to_string()

    int8 = load_engine(conv_net(tmp_path / "qdq.onnx", int8=True), "openvino", batch_size=1, num_cores=1)
    assert precision(int8) == "f32"
    dense = load_engine(conv_net(tmp_path / "net.onnx"), "openvino", batch_size=1, num_cores=1)
    assert precision(dense) == openvino_facts()["precision"]
    reference = predict_batches(load_engine(tmp_path / "qdq.onnx", "onnxruntime", batch_size=7, num_cores=1), ROWS)[0]
    # Without VNNI OpenVINO sums the u8 x s8 products in int16 pairs, which saturate: on an AVX2 AMD EPYC its
    # logits differed from ONNX Runtime's (exact to 1e-6 against numpy) by up to 0.10 in 4 of 7 rows
    atol = 1e-2 if cpu_info()["vnni"] else 0.15
    np.testing.assert_allclose(predict_batches(int8, ROWS)[0], reference, rtol=1e-3, atol=atol)
