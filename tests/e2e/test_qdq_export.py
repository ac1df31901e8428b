"""The QDQ INT8 twin of the converted export (qdq.export_qdq) on tiny real models trained under the
project's level-0.5 recipe (70% pruning + INT8 QAT, so the observers hold real scales): a
QAT-ready torchvision ResNet-18 on sklearn's digit images at 32 px and a 2-layer BERT on the
generated reviews, each with per-tensor weights (the project's scheme) and per-channel weights."""

from __future__ import annotations

import contextlib
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsify_mlflow.engines import (
    EngineUnavailable,
    deepsparse_status,
    load_engine,
    load_openvino,
    predict_batches,
)
from sparsify_mlflow.export import export_onnx
from sparsify_mlflow.levels import plan_recipe, recipe_yaml
from sparsify_mlflow.qdq import QdqError, export_qdq, integer_op_report

SEQ = 32
STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 3, 8  # QAT from epoch 2: observers see 3 batches before they freeze
WEIGHT_SCHEME = "      weights:\n        num_bits: 8\n        symmetric: true\n"
pytestmark = pytest.mark.e2e


class Built:
    """One trained model's two INT8 files and held-out inputs (one array per ONNX input)."""

    def __init__(self, kind: str, strategy: str, converted: Path, qdq: Path, rows: list[np.ndarray]) -> None:
        self.kind, self.strategy, self.converted, self.qdq, self.rows = kind, strategy, converted, qdq, rows


def _digits(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits, upscaled to 3x32x32 and normalised: real images the observers calibrate on."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[start:start + n].astype(np.float32) / 16.0
    images = np.kron(images, np.ones((4, 4), np.float32))[:, None].repeat(3, axis=1)
    return torch.from_numpy((images - 0.3) / 0.4), torch.from_numpy(digits.target[start:start + n])


def _cnn() -> tuple[torch.nn.Module, Any, Any, tuple[list[str], list[str]]]:
    import torchvision

    from sparsify_mlflow import usecases

    model = torchvision.models.quantization.resnet18(quantize=False, num_classes=10)

    def batches(start: int, n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        x, y = _digits(start, n)
        return [x], y

    def loss(m: torch.nn.Module, x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(x[0]), y)

    return model, usecases.resolve("cv-classification").pruning_scope(model), (batches, loss), (["input"], ["logits"])


def _bert() -> tuple[torch.nn.Module, Any, Any, tuple[list[str], list[str]]]:
    from transformers import BertConfig, BertForSequenceClassification

    from sparsify_mlflow.data.embedded_text import generate
    from sparsify_mlflow.usecases.nlp.transformers_models import (
        encoder_scope,
        load_tokenizer,
        make_qat_ready,
    )

    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                        num_labels=2)
    model = BertForSequenceClassification(config)
    make_qat_ready(model)  # QAT-ready attention matmuls (STACK.md)
    tokenizer = load_tokenizer("minilm", SEQ)
    reviews = generate(EPOCHS * STEPS_PER_EPOCH * BATCH + 16)
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def batches(start: int, n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        part = reviews[start:start + n]
        enc = tokenizer([r["text"] for r in part], padding="max_length", truncation=True, max_length=SEQ,
                        return_tensors="pt")
        return [enc[k] for k in names], torch.tensor([int(r["label"] == "positive") for r in part])

    def loss(m: torch.nn.Module, x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(*x)[0], y)

    return model, encoder_scope(model, "classifier"), (batches, loss), (names, ["logits"])


_BUILT: dict[tuple[str, str], Built] = {}


def _build(kind: str, strategy: str, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Level 0.5 through the project's recipe and a plain loop (per-channel: the scheme's weights
    get ``strategy: channel``), then export_onnx and export_qdq; once per model and module."""
    if (kind, strategy) in _BUILT:
        return _BUILT[kind, strategy]
    from sparseml.pytorch.optim import ScheduledModifierManager

    torch.manual_seed(0)
    model, scope, (batches, loss), (inputs, outputs) = _cnn() if kind == "cnn" else _bert()
    recipe = recipe_yaml(plan_recipe(0.5, EPOCHS, scope, 1e-3))
    if strategy == "channel":
        assert recipe.count(WEIGHT_SCHEME) == 1
        recipe = recipe.replace(WEIGHT_SCHEME, WEIGHT_SCHEME + "        strategy: channel\n")
    work = tmp_path_factory.mktemp(f"{kind}-{strategy}")
    with contextlib.chdir(work):  # the manager writes ./sparse_logs
        manager = ScheduledModifierManager.from_yaml(recipe)
        optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
                                   steps_per_epoch=STEPS_PER_EPOCH)
        model.train()
        for step in range(EPOCHS * STEPS_PER_EPOCH):
            x, y = batches(step * BATCH, BATCH)
            optimizer.zero_grad()
            loss(model, x, y).backward()
            optimizer.step()
        manager.finalize(model)
    model.eval()
    held_out, _ = batches(EPOCHS * STEPS_PER_EPOCH * BATCH, 16)
    exported = export_onnx(model, tuple(t[:1] for t in held_out), work / "export", input_names=inputs,
                           output_names=outputs)
    qdq = export_qdq(exported.path, work / "export" / "model.qdq.onnx")
    _BUILT[kind, strategy] = Built(kind, strategy, exported.path, qdq, [t.numpy() for t in held_out])
    return _BUILT[kind, strategy]


@pytest.fixture(scope="module", params=[("cnn", "tensor"), ("cnn", "channel"), ("bert", "tensor"), ("bert", "channel")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def built(request, tmp_path_factory) -> Built:
    return _build(*request.param, tmp_path_factory)


def _ort(path: Path, rows: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), rows)})[0]


def _weight_zeros(path: Path) -> dict[str, np.ndarray]:
    """Compute node name -> where its weight initializer equals its zero point (direct or behind a DQ)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    slots = {"ConvInteger": (1, 3, 0), "MatMulInteger": (1, 3, -1), "QLinearMatMul": (3, 5, -1),
             "Conv": (1, None, 0), "MatMul": (1, None, -1)}  # weight, zero point, channel axis
    masks = {}
    for node in graph.node:
        if node.op_type not in slots:
            continue
        w_idx, zp_idx, axis = slots[node.op_type]
        w_name, zp_name = node.input[w_idx], node.input[zp_idx] if zp_idx is not None else ""
        dq = producers.get(w_name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            w_name, zp_name = dq.input[0], dq.input[2]
        if w_name not in inits:
            continue  # activation x activation (attention)
        w, zp = inits[w_name], inits[zp_name]
        shape = [1] * w.ndim
        shape[axis] = -1
        masks[node.name] = w == (zp.reshape(shape) if zp.size > 1 else zp)
    return masks


def _last_output_step(path: Path) -> float:
    """The step of the last activation quantizer in the file (the grid the logits come from)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    last = [n for n in graph.node if n.op_type in ("QuantizeLinear", "QLinearMatMul")][-1]
    return float(inits[last.input[1] if last.op_type == "QuantizeLinear" else last.input[6]])


def _output_tolerance(path: Path) -> float:
    """How far two engines' logits may sit apart, in steps of the last quantizer, inclusive (a value exactly
    two steps off, computed in float32, can land a hair above 2 * step in float64: CI saw 0.02169997 fail).
    Without VNNI the engines emulate u8 x s8 dot products with vpmaddubsw, whose int16 pair sums saturate,
    so the per-channel CNN's logits moved up to 5 steps on an AVX2-only Zen 3; a wrong scale, zero point or
    bias moves them by many more."""
    from sparsify_mlflow.engines import cpu_info

    steps = 2 if cpu_info()["vnni"] else 6
    return steps * _last_output_step(path) * (1 + 1e-4)


def test_qdq_graph_is_the_canonical_form(built) -> None:
    model = onnx.load(str(built.qdq))
    onnx.checker.check_model(model)
    assert stat.S_IMODE(built.qdq.stat().st_mode) == stat.S_IMODE(built.converted.stat().st_mode)  # umask, not 0600
    assert model.ir_version <= onnx.IR_VERSION and model.opset_import[0].version >= 13  # per-axis DQ
    ops = Counter(n.op_type for n in model.graph.node)
    assert not {"BatchNormalization", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QLinearConv"} & set(ops), ops
    # every Conv/MatMul the QAT quantized multiplies DequantizeLinear outputs; only the FP32 head does not
    before, after = integer_op_report(built.converted), integer_op_report(built.qdq)
    assert sum(after["integer"].values()) == sum(before["integer"].values()) > 0
    assert after["float"] == before["float"] == (Counter({"Gemm": 1}) if built.kind == "bert" else Counter())

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul"):
            continue
        for slot in (0, 1):
            dq = producers[node.input[slot]]
            assert dq.op_type == "DequantizeLinear", f"{node.name} input {slot} is not dequantized"
            if dq.input[0] not in inits:  # an activation: QuantizeLinear -> DequantizeLinear in front
                assert producers[dq.input[0]].op_type == "QuantizeLinear", f"{node.name}: {dq.input[0]}"
                continue
            weights += 1
            w, scale, zp = (numpy_helper.to_array(inits[n]) for n in dq.input)
            assert slot == 1 and inits[dq.input[0]].data_type == TensorProto.INT8 and not zp.any()
            axis = next((a.i for a in dq.attribute if a.name == "axis"), None)
            if built.strategy == "channel":  # one scale per output channel: Conv dim 0, MatMul [K, N] dim 1
                assert axis == (0 if node.op_type == "Conv" else 1) and scale.shape == (w.shape[axis],)
            else:
                assert axis is None and scale.shape == () and zp.shape == ()
        if node.op_type == "Conv" and len(node.input) > 2:  # the folded BN's bias, int32 behind a DQ
            bias_dq = producers[node.input[2]]
            assert bias_dq.op_type == "DequantizeLinear" and inits[bias_dq.input[0]].data_type == TensorProto.INT32
    assert weights == len(_weight_zeros(built.converted))


def test_qdq_keeps_every_pruned_zero(built) -> None:
    before, after = _weight_zeros(built.converted), _weight_zeros(built.qdq)
    assert before.keys() == after.keys() and before
    for name, mask in before.items():
        np.testing.assert_array_equal(after[name], mask, err_msg=name)
    zeros = sum(int(m.sum()) for m in after.values()) / sum(m.size for m in after.values())
    assert zeros > 0.5, zeros  # 70% in the pruned layers; the stem conv and the heads stay dense


def test_qdq_outputs_match_the_converted_file(built) -> None:
    """Tolerance: 2 steps of the last activation quantizer before the logits (6 without VNNI, see
    _output_tolerance). Both files compute the same integer network; engines only differ in float rounding
    order (x_scale * w_scale folded differently, FP32 vs int32 accumulation of the bias), which moves a value
    lying on a rounding boundary by one step of its quantizer; a real mismatch (a wrong scale, zero point or bias) moves
    logits by many steps."""
    tolerance = _output_tolerance(built.converted)
    qdq = _ort(built.qdq, built.rows)
    references = {}
    if not (built.kind == "cnn" and built.strategy == "channel"):  # ORT's ConvInteger is per-tensor only
        references["onnxruntime"] = _ort(built.converted, built.rows)
    if deepsparse_status()[0]:
        # batch 4: DeepSparse 1.8 aborts the process compiling 1x1 feature maps at batch >= 16
        engine = load_engine(built.converted, "deepsparse", batch_size=4, num_cores=1)
        references["deepsparse"] = predict_batches(engine, built.rows)[0]
    assert references
    for name, reference in references.items():
        np.testing.assert_allclose(qdq, reference, rtol=0, atol=tolerance, err_msg=f"QDQ on ORT vs converted on {name}")


def test_onnxruntime_fuses_the_qdq_file_into_integer_kernels(built) -> None:
    """ORT fuses DQ -> MatMul into MatMulIntegerToFloat (or QLinearMatMul before a Q), but a Conv only
    when a QuantizeLinear reads its output (QLinearConv). sparseml's QAT observes conv inputs, not
    outputs: a conv feeding the residual Add has no output scale, so ORT runs those in FP32."""
    graph = onnx.load(str(built.qdq)).graph
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    requantized = sum(consumers.get(n.output[0]) == ["QuantizeLinear"] for n in graph.node if n.op_type == "Conv")
    convs = sum(n.op_type == "Conv" for n in graph.node)
    matmuls = sum(n.op_type == "MatMul" for n in graph.node)
    report = integer_op_report(built.qdq, "onnxruntime")
    fused_matmuls = report["integer"]["MatMulIntegerToFloat"] + report["integer"]["QLinearMatMul"]
    assert fused_matmuls == matmuls and report["integer"]["QLinearConv"] == requantized, report
    assert set(report["integer"]) <= {"MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv"}, report
    fp32_convs = sum(v for k, v in report["float"].items() if "Conv" in k)
    assert fp32_convs == convs - requantized and report["float"]["Gemm"] == int(built.kind == "bert"), report
    if built.kind == "cnn":
        assert 0 < requantized < convs  # the in-block convs fuse; the residual-branch ones cannot


def test_openvino_runs_every_quantized_op_in_int8(built) -> None:
    """Every op the QAT quantized runs on an integer kernel; only the FP32 head stays float. Without VNNI
    OpenVINO runs some activation x activation MatMuls (attention scores, context) in FP32: CI's AVX2-only
    machine ran 2 of the BERT's 4 there, every weight MatMul (FullyConnected) still in INT8."""
    from sparsify_mlflow.engines import cpu_info

    graph = integer_op_report(built.qdq)
    report = integer_op_report(built.qdq, "openvino")
    head = Counter({"FullyConnected": 1}) if built.kind == "bert" else Counter()
    fp32_attention = report["float"] - head if built.kind == "bert" and not cpu_info()["vnni"] else Counter()
    assert set(fp32_attention) <= {"MatMul"}, report
    assert sum(report["integer"].values()) + fp32_attention.total() == sum(graph["integer"].values()), report
    assert report["float"] == head + fp32_attention, report
    if built.strategy == "tensor":  # the converted file: OpenVINO dequantizes the weights and runs FP32
        before = integer_op_report(built.converted, "openvino")
        assert sum(before["float"].values()) > sum(before["integer"].values()), before

    engine = load_openvino(built.qdq, batch_size=4, num_cores=1, precision="f32")  # f32: like with like
    assert engine.name == "openvino" and engine.fraction_of_supported_ops is None
    rows7 = [a[:7] for a in built.rows]
    (out,) = predict_batches(engine, rows7)
    np.testing.assert_allclose(out, _ort(built.qdq, rows7), rtol=0, atol=_output_tolerance(built.converted))


def test_openvino_compile_failure_is_one_line(tmp_path_factory) -> None:
    converted = _build("bert", "channel", tmp_path_factory).converted
    # sparseml's per-channel QLinearMatMul (the pooler) is a node OpenVINO's ONNX reader rejects
    with pytest.raises(EngineUnavailable, match=r"^OpenVINO could not compile model\.onnx: [^\n]+$"):
        load_engine(converted, "openvino", batch_size=1, num_cores=1)


def test_unknown_patterns_raise_one_line_and_write_nothing(tmp_path_factory, tmp_path) -> None:
    model = onnx.load(str(_build("cnn", "tensor", tmp_path_factory).converted))
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    cast.op_type, cast.name = "Identity", "odd_identity"  # ConvInteger -> Add -> Identity -> Mul
    del cast.attribute[:]
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    out = tmp_path / "out" / "model.qdq.onnx"
    with pytest.raises(QdqError, match=r"^ConvInteger node '/conv1/module/Conv_quant': expected Cast to float "
                                       r"after it, found Identity 'odd_identity'$"):
        export_qdq(broken, out)

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 4, 4])
    one = [numpy_helper.from_array(np.array(v, dtype=t), n) for n, v, t in
           (("s", 0.1, np.float32), ("z", 0, np.uint8), ("w", [[[[1]]]], np.uint8))]
    node = helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv")
    odd = tmp_path / "qlinearconv.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y], one),
                                opset_imports=[helper.make_opsetid("", 13)]), str(odd))
    with pytest.raises(QdqError, match=r"^QLinearConv node 'qconv': the QDQ rewrite does not handle QLinearConv$"):
        export_qdq(odd, out)
    dense = export_onnx(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), (torch.randn(1, 4),), tmp_path / "dense")
    with pytest.raises(QdqError, match=r"^the graph has no ConvInteger/MatMulInteger/QLinearMatMul: not an INT8 export$"):
        export_qdq(dense.path, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())
