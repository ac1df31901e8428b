"""Export -> engines -> benchmark on tiny real models (a dense conv net and a QAT + 80%-pruned one)."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsify_mlflow.benchmark import BenchmarkResult, benchmark
from sparsify_mlflow.engines import (
    EngineUnavailable,
    cpu_info,
    deepsparse_status,
    load_engine,
    predict_batches,
)
from sparsify_mlflow.export import ExportedModel, export_onnx, onnx_weight_sparsity

RECIPE = """
modifiers:
  - !GMPruningModifier
    params: ["conv2.weight"]
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
  - !QuantizationModifier
    start_epoch: 0.0
"""


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU x2, pool, Linear on 3x16x16 (convs keep their default bias on purpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.relu2 = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _ort(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> tuple[TinyNet, ExportedModel]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    return model, export_onnx(model, (torch.randn(1, 3, 16, 16),), tmp_path_factory.mktemp("dense"))


@pytest.fixture(scope="module")
def sparse_qat(tmp_path_factory) -> tuple[TinyNet, ExportedModel]:
    from sparseml.pytorch.optim import ScheduledModifierManager

    torch.manual_seed(0)
    model = TinyNet()
    work = tmp_path_factory.mktemp("qat")
    with contextlib.chdir(work):  # the manager writes ./sparse_logs
        manager = ScheduledModifierManager.from_yaml(RECIPE)
        # modify() returns the wrapped optimizer that drives the modifiers: step *that* one.
        optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.01), steps_per_epoch=4)
        model.train()
        for _ in range(8):  # 2 epochs x 4 steps
            x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        manager.finalize(model)
    model.eval()
    return model, export_onnx(model, (torch.randn(1, 3, 16, 16),), work / "export")


def test_dense_export_is_dynamic_and_matches_pytorch(dense) -> None:
    model, exported = dense
    assert exported.path.is_file() and exported.path.name == "model.onnx"
    assert exported.input_names == ("input",) and exported.output_names == ("output",)
    assert 0 < exported.gzip_size_bytes < exported.size_bytes == exported.path.stat().st_size
    assert 0.0 <= exported.weight_sparsity < 0.05
    assert set(exported.layer_sparsity) == {"conv1.weight", "conv2.weight", "fc.weight"}  # no biases/BN

    graph = onnx.load(str(exported.path)).graph
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name} has a fixed batch dim"

    x = _rows(5, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(exported.path, x), expected, atol=1e-4)

    # 7 rows through a batch-4 engine: two batches, the last padded and trimmed.
    engine = load_engine(exported.path, "onnxruntime", batch_size=4, num_cores=1)
    x7 = _rows(7, seed=2)
    (out,) = predict_batches(engine, [x7.astype(np.float64)])  # dtype cast by the engine
    assert out.shape == (7, 10)
    np.testing.assert_allclose(out, _ort(exported.path, x7), atol=1e-5)


def test_qat_pruned_export_measures_int8_sparsity(sparse_qat) -> None:
    model, exported = sparse_qat
    conv2 = [v for k, v in exported.layer_sparsity.items() if "conv2" in k]
    assert len(conv2) == 1 and conv2[0] == pytest.approx(0.8, abs=0.02), exported.layer_sparsity
    assert 0.3 < exported.weight_sparsity < 0.8
    ops = {n.op_type for n in onnx.load(str(exported.path)).graph.node}
    assert ops & {"ConvInteger", "QLinearConv"}, ops
    assert "BatchNormalization" not in ops, "QAT conv bias not folded: DeepSparse would abort"
    assert model.conv2.module.bias is not None, "export must not mutate the caller's model"

    x = _rows(16, seed=3)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert (np.argmax(_ort(exported.path, x), 1) == expected.argmax(1)).mean() >= 0.8


def test_weight_sparsity_uses_per_channel_zero_points(tmp_path) -> None:
    w = np.array([[[[7]], [[3]]], [[[9]], [[9]]]], dtype=np.uint8)  # (2, 2, 1, 1)
    zp = np.array([7, 9], dtype=np.uint8)  # per output channel
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "", "w_zp"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 2, 1, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(zp, "w_zp")],
    )
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph), str(path))
    overall, layers = onnx_weight_sparsity(path)
    assert layers == {"w": 0.75} and overall == 0.75


def test_deepsparse_runs_both_exports(dense, sparse_qat) -> None:
    ok, reason = deepsparse_status()
    if not ok:
        pytest.skip(f"DeepSparse unusable here: {reason}")
    x7 = _rows(7, seed=4)
    for (_, exported), quantized in ((dense, False), (sparse_qat, True)):
        engine = load_engine(exported.path, "deepsparse", batch_size=4, num_cores=1)
        assert engine.name == "deepsparse" and engine.fraction_of_supported_ops == 1.0
        (out,) = predict_batches(engine, [x7])
        reference = _ort(exported.path, x7)
        if quantized:  # INT8 kernels (emulated without VNNI) round differently from ORT
            assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.8
        else:
            np.testing.assert_allclose(out, reference, atol=1e-4)
    info = cpu_info()
    assert info["isa"] and int(info["cores"]) >= 1


def test_benchmark_result_and_metrics(dense, sparse_qat) -> None:
    rows = [_rows(3, seed=5)]
    result = benchmark(dense[1].path, rows, engine="onnxruntime", batch_size=2, iterations=5, warmup_iterations=1)
    assert isinstance(result, BenchmarkResult) and result.engine == "onnxruntime"
    assert result.iterations == 5 and result.warmup_iterations == 1 and result.num_cores >= 1
    assert 0 < result.latency_ms_median <= result.latency_ms_p90 * 1.0001 and result.latency_ms_mean > 0
    assert result.items_per_second == pytest.approx(2 / (result.latency_ms_median / 1000))
    assert result.fraction_of_supported_ops is None and result.compile_seconds > 0

    metrics = result.as_metrics("dense.onnxruntime.bs2")
    assert metrics["dense.onnxruntime.bs2.latency_ms_median"] == result.latency_ms_median
    assert "dense.onnxruntime.bs2.items_per_second" in metrics
    assert not any(k.endswith((".engine", ".fraction_of_supported_ops")) for k in metrics)
    assert all(isinstance(v, float) for v in metrics.values())

    if deepsparse_status()[0]:
        ds = benchmark(sparse_qat[1].path, rows, engine="deepsparse", batch_size=1, iterations=3, warmup_iterations=1)
        assert ds.fraction_of_supported_ops == 1.0 and ds.latency_ms_median > 0
        assert ds.as_metrics("sparse.deepsparse.bs1")["sparse.deepsparse.bs1.fraction_of_supported_ops"] == 1.0

    with pytest.raises(ValueError, match="deepsparse, onnxruntime"):
        benchmark(dense[1].path, rows, engine="tensorrt", batch_size=1, iterations=1)


def test_deepsparse_can_be_disabled_by_configuration(dense, monkeypatch) -> None:
    monkeypatch.setenv("SPARSIFY_DISABLE_DEEPSPARSE", "1")
    ok, reason = deepsparse_status()
    assert not ok and "SPARSIFY_DISABLE_DEEPSPARSE" in reason
    with pytest.raises(EngineUnavailable, match="SPARSIFY_DISABLE_DEEPSPARSE"):
        load_engine(dense[1].path, "deepsparse", batch_size=1)
    assert cpu_info()["source"] == "/proc/cpuinfo"
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine(dense[1].path, "tensorrt", batch_size=1)
