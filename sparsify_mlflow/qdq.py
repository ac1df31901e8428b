"""A canonical QDQ INT8 ONNX file, beside the converted one, for engines other than DeepSparse.

Why: sparseml's converted INT8 export (``ConvInteger/MatMulInteger -> Cast -> Mul``) is the
form DeepSparse runs fully, but OpenVINO and ONNX Runtime run it at FP32 precision, slower than
the dense model. What they fuse into integer kernels is the form
``onnxruntime.quantization.quantize_static`` writes: int8 weight initializers ->
DequantizeLinear -> Conv/MatMul, and QuantizeLinear -> DequantizeLinear on the activations in
front (../shared/STACK.md).

Why a rewrite of the converted graph (and not torch.ao's eager QAT + ``torch.onnx.export``): the
converted file already holds all the QDQ form needs, from the same trained model and one training
path: BatchNormalization folded into the weights and the int32 bias, the QAT observers' activation
scales and zero points, the pruned INT8 weights and the rescale ``x_scale * w_scale``. Each
``ConvInteger/MatMulInteger(x_q, w, x_zp, w_zp) [-> Add(int32 bias)] -> Cast -> Mul(scale)``
becomes ``DequantizeLinear(x_q) -> Conv/MatMul(DequantizeLinear(w_int8), bias)`` and each
``QLinearMatMul`` becomes ``DequantizeLinear -> MatMul -> QuantizeLinear``, so the QDQ file
computes what DeepSparse computes. sparseml stores symmetric int8 weights as uint8 with zero point
128; they become int8 with zero point 0 (``w - 128``), so every pruned weight stays exactly 0.
The graph is written with onnx.helper because ``onnxruntime.quantization`` does not import with
the onnx 1.14 sparseml needs.

What the engines make of it (``integer_op_report``): OpenVINO runs every quantized conv/matmul at
u8/i8. ONNX Runtime fuses every matmul, but a Conv only where a QuantizeLinear reads its output
(QLinearConv): sparseml's QAT observes conv inputs, not outputs, so the convs feeding a residual
Add (20 of ResNet-50's 53) have no output scale and stay FP32 there.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["QDQ_FILE", "QdqError", "export_qdq", "integer_op_report"]

QDQ_FILE = "model.qdq.onnx"  # beside model.onnx in the training artifacts, the deployment folder and the registry

_INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QLinearMatMul"}  # what sparseml's INT8 export holds
# Conv/MatMul-like op types by the data they multiply, in our files and in the graph ONNX Runtime
# runs after ORT_ENABLE_ALL (its CPU fusions; NchwcConv/FusedConv/FusedMatMul are FP32 kernels).
_INTEGER_KERNELS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat",
                    "DynamicQuantizeMatMul", "QGemm", "QAttention"}
_FLOAT_KERNELS = {"Conv", "FusedConv", "NchwcConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm"}


class QdqError(ValueError):
    """The converted graph holds a pattern the QDQ rewrite does not know (the message names the node)."""


def export_qdq(converted: Path, out: Path) -> Path:
    """Write the QDQ INT8 twin of ``converted`` (an ``export_onnx`` INT8 file) to ``out``.

    The file is written under a temporary name and renamed, so a failure leaves no half file.
    """
    converted, out = Path(converted), Path(out)
    model = _Rewriter(onnx.load(str(converted))).run()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise QdqError(f"the rewritten graph of {converted.name} is not valid ONNX: {first}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")  # not mkstemp: its 0600 mode would stick
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def integer_op_report(path: Path, engine: Literal["graph", "onnxruntime", "openvino"] = "graph",
                      num_threads: int = 1) -> dict[str, Counter[str]]:
    """Conv/MatMul-like ops of ``path`` split into ``{"integer": Counter, "float": Counter}`` by kernel type.

    Whether an engine fuses the QDQ form shows only in what it runs, so ``engine`` picks the view:
    ``graph``: the file itself; a Conv/MatMul/Gemm counts as integer when both multiplied inputs
    come from DequantizeLinear. ``onnxruntime``: the op types of the graph the CPU provider runs
    after ORT_ENABLE_ALL (QLinearConv, MatMulIntegerToFloat, ... vs Conv, FusedConv, ...).
    ``openvino``: each Conv/MatMul/Gemm-like node of the file, counted under the ``layerType`` of
    the compiled CPU op that runs it, integer where that op's ``runtimePrecision`` is u8/i8.
    """
    path = Path(path)
    if engine == "onnxruntime":
        return _ort_report(path, num_threads)
    graph = onnx.load(str(path), load_external_data=False).graph
    compute = [n for n in graph.node if n.op_type in _INTEGER_KERNELS | _FLOAT_KERNELS]
    if engine == "openvino":
        return _openvino_report(path, compute, num_threads)
    producers = {out: node for node in graph.node for out in node.output}
    report: dict[str, Counter[str]] = {"integer": Counter(), "float": Counter()}
    for node in compute:
        dq = all(i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input[:2])
        report["integer" if node.op_type in _INTEGER_KERNELS or dq else "float"][node.op_type] += 1
    return report


def _ort_report(path: Path, num_threads: int) -> dict[str, Counter[str]]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="sparsify-ort-opt-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.intra_op_num_threads = num_threads
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node)
    return {"integer": Counter({k: v for k, v in ops.items() if k in _INTEGER_KERNELS}),
            "float": Counter({k: v for k, v in ops.items() if k in _FLOAT_KERNELS})}


def _openvino_report(path: Path, compute: list[onnx.NodeProto], num_threads: int) -> dict[str, Counter[str]]:
    """OpenVINO fuses and renames ops; ``originalLayersNames`` says which file nodes each runtime op runs."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": num_threads})
    runs: dict[str, tuple[str, str]] = {}  # file node/tensor name -> (layerType, runtimePrecision)
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        for name in info["originalLayersNames"].astype(str).split(","):
            runs.setdefault(name, (kind, precision))
    report: dict[str, Counter[str]] = {"integer": Counter(), "float": Counter()}
    for node in compute:  # a node is named after itself, or after its output where it feeds a graph output
        kind, precision = next((runs[n] for n in (node.name, *node.output) if n in runs), ("not found", ""))
        report["integer" if precision in ("u8", "i8") else "float"][kind] += 1
    return report


class _Rewriter:
    """One pass over the converted graph in its (topological) order, emitting the QDQ graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 13:
            raise QdqError(f"the graph uses opset {opset}; per-channel DequantizeLinear needs opset 13+")
        self.inits = {i.name: i for i in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.graph_outputs = {o.name for o in graph.output}
        # uint8/int8 activation tensor -> (scale, zero point) of the op that quantized it
        self.quantized: dict[str, tuple[str, str]] = {}
        for node in graph.node:
            if node.op_type == "QuantizeLinear":
                self.quantized[node.output[0]] = (node.input[1], _input(node, 2))
            elif node.op_type == "QLinearMatMul":
                self.quantized[node.output[0]] = (node.input[6], node.input[7])
        self.taken = ({n.name for n in graph.node} | set(self.inits)
                      | {t for n in graph.node for t in [*n.input, *n.output]})
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.dequantized: dict[str, str] = {}  # activation tensor -> its DequantizeLinear output
        self.absorbed: set[int] = set()  # ids of the Add/Cast/Mul nodes folded into a rewritten op

    def run(self) -> onnx.ModelProto:
        for node in self.model.graph.node:
            if id(node) in self.absorbed:
                continue
            if node.op_type in ("ConvInteger", "MatMulInteger"):
                self._integer(node)
            elif node.op_type == "QLinearMatMul":
                self._qlinear_matmul(node)
            elif node.op_type == "BatchNormalization" or node.op_type.startswith("QLinear") \
                    or node.op_type.endswith("Integer"):
                raise QdqError(f"{_who(node)}: the QDQ rewrite does not handle {node.op_type}")
            else:
                self.nodes.append(node)
        if not any(n.op_type in _INTEGER_OPS for n in self.model.graph.node):
            raise QdqError("the graph has no ConvInteger/MatMulInteger/QLinearMatMul: not an INT8 export")
        return self._model()

    # ---- the two rewritten patterns -----------------------------------------------------------

    def _integer(self, node: onnx.NodeProto) -> None:
        """``ConvInteger/MatMulInteger [-> Add(int32 bias)] -> Cast -> Mul(scale)`` as a float Conv/MatMul."""
        bias, rescale, out = self._rescale_chain(node)
        x = self._activation(node.input[0], node, zero_point=_input(node, 2))
        x_scale = self._array(self.quantized[node.input[0]][0], node)
        if x_scale.size != 1:
            raise QdqError(f"{_who(node)}: activation scale of {node.input[0]} is not per tensor")
        conv = node.op_type == "ConvInteger"
        w_name = node.input[1]
        if w_name in self.inits:  # a weight: w_scale = (x_scale * w_scale) / x_scale
            w = self._weight(w_name, _input(node, 3), rescale.reshape(-1) / x_scale.reshape(()),
                             axis=0 if conv else -1, node=node)
        elif conv:
            raise QdqError(f"{_who(node)}: weight {w_name} is not an initializer")
        else:  # activation x activation (attention): the rescale must be the two scales' product
            w = self._activation(w_name, node, zero_point=_input(node, 3))
            product = x_scale * self._array(self.quantized[w_name][0], node)
            if not np.allclose(rescale, product, rtol=1e-5, atol=0):
                raise QdqError(f"{_who(node)}: rescale {rescale.ravel()[:3]} is not the inputs' scale product")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if conv:
            inputs = [x, w]
            if bias is not None:
                inputs.append(self._conv_bias(bias, rescale, node))
            self.nodes.append(helper.make_node("Conv", inputs, [out], name=node.name, **attrs))
        elif bias is None:
            self.nodes.append(helper.make_node("MatMul", [x, w], [out], name=node.name))
        else:  # MatMul has no bias input: an FP32 Add after it (ORT fuses it into MatMulIntegerToFloat)
            mm = self._fresh(f"{out}_matmul")
            b = self._init(f"{node.name}.bias", (bias.astype(np.float32) * rescale.astype(np.float32)).reshape(-1))
            self.nodes.append(helper.make_node("MatMul", [x, w], [mm], name=node.name))
            self.nodes.append(helper.make_node("Add", [mm, b], [out], name=self._fresh(f"{node.name}_bias_add")))

    def _qlinear_matmul(self, node: onnx.NodeProto) -> None:
        """``QLinearMatMul`` as ``DequantizeLinear -> MatMul -> QuantizeLinear`` (same scales)."""
        x_name, x_scale, x_zp, w_name, w_scale, w_zp, y_scale, y_zp = node.input
        x = self._activation(x_name, node, zero_point=x_zp, scale=x_scale)
        if w_name in self.inits:
            w = self._weight(w_name, w_zp, self._array(w_scale, node).reshape(-1), axis=-1, node=node)
        else:
            w = self._activation(w_name, node, zero_point=w_zp, scale=w_scale)
        mm = self._fresh(f"{node.output[0]}_matmul")
        self.nodes.append(helper.make_node("MatMul", [x, w], [mm], name=node.name))
        self.nodes.append(helper.make_node("QuantizeLinear", [mm, y_scale, y_zp], [node.output[0]],
                                           name=self._fresh(f"{node.name}_output_quant")))

    # ---- pieces -----------------------------------------------------------------------------

    def _rescale_chain(self, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray, str]:
        """(int32 bias or None, float rescale, the Mul's output) of the chain after an integer op."""
        nxt = self._only_consumer(node.output[0], node)
        bias = None
        if nxt.op_type == "Add":
            other = next(i for i in nxt.input if i != node.output[0])
            bias = self._array(other, node)
            if bias.dtype != np.int32:
                raise QdqError(f"{_who(node)}: bias {other} is {bias.dtype}, expected int32")
            self.absorbed.add(id(nxt))
            nxt = self._only_consumer(nxt.output[0], node)
        to = next((a.i for a in nxt.attribute if a.name == "to"), None)
        if nxt.op_type != "Cast" or to != TensorProto.FLOAT:
            raise QdqError(f"{_who(node)}: expected Cast to float after it, found {nxt.op_type} {nxt.name!r}")
        self.absorbed.add(id(nxt))
        mul = self._only_consumer(nxt.output[0], node)
        if mul.op_type != "Mul":
            raise QdqError(f"{_who(node)}: expected the rescale Mul after its Cast, found {mul.op_type} {mul.name!r}")
        self.absorbed.add(id(mul))
        rescale = self._array(next(i for i in mul.input if i != nxt.output[0]), node)
        return bias, rescale.astype(np.float32), mul.output[0]

    def _only_consumer(self, tensor: str, node: onnx.NodeProto) -> onnx.NodeProto:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs:
            raise QdqError(f"{_who(node)}: its integer result {tensor} has {len(users)} consumers, expected one")
        return users[0]

    def _activation(self, tensor: str, node: onnx.NodeProto, zero_point: str, scale: str | None = None) -> str:
        """The DequantizeLinear output of a quantized activation (one per tensor, shared by its users)."""
        if tensor not in self.quantized:
            raise QdqError(f"{_who(node)}: input {tensor} does not come from a QuantizeLinear, its scale is unknown")
        q_scale, q_zp = self.quantized[tensor]
        if not np.array_equal(self._array(zero_point, node), self._array(q_zp, node)) or (
                scale is not None and not np.array_equal(self._array(scale, node), self._array(q_scale, node))):
            raise QdqError(f"{_who(node)}: input {tensor} is read with another scale/zero point than it was quantized with")
        if tensor not in self.dequantized:
            out = self._fresh(f"{tensor}_dequantized")
            inputs = [tensor, q_scale] + ([q_zp] if q_zp else [])
            self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out],
                                               name=self._fresh(f"{out}/DequantizeLinear")))
            self.dequantized[tensor] = out
        return self.dequantized[tensor]

    def _weight(self, name: str, zp_name: str, scale: np.ndarray, axis: int, node: onnx.NodeProto) -> str:
        """int8 initializer -> DequantizeLinear (per channel on ``axis`` when the scale or zero point is)."""
        w = self._array(name, node)
        zp = self._array(zp_name, node) if zp_name else np.zeros((), w.dtype)
        if w.dtype == np.uint8:  # sparseml's symmetric int8 as uint8 + 128: the same values minus 128
            w, zp = (w.astype(np.int16) - 128).astype(np.int8), (zp.astype(np.int16) - 128).astype(np.int8)
        elif w.dtype != np.int8:
            raise QdqError(f"{_who(node)}: weight {name} is {w.dtype}, expected uint8 or int8")
        axis = axis % w.ndim
        channels = w.shape[axis]
        scale, zp = scale.astype(np.float32).reshape(-1), zp.reshape(-1)
        per_channel = scale.size > 1 or zp.size > 1
        if per_channel:
            if {scale.size, zp.size} - {1, channels}:
                raise QdqError(f"{_who(node)}: {scale.size} scales / {zp.size} zero points for {channels} channels")
            scale, zp = np.broadcast_to(scale, (channels,)).copy(), np.broadcast_to(zp, (channels,)).copy()
        else:
            scale, zp = scale.reshape(()), zp.reshape(())
        inputs = [self._init(f"{name}_int8", w), self._init(f"{name}_scale", scale), self._init(f"{name}_zero_point", zp)]
        out = self._fresh(f"{name}_dequantized")
        attrs = {"axis": axis} if per_channel else {}
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out],
                                           name=self._fresh(f"{node.name}_weight_dq"), **attrs))
        return out

    def _conv_bias(self, bias: np.ndarray, rescale: np.ndarray, node: onnx.NodeProto) -> str:
        """int32 bias -> DequantizeLinear(scale = x_scale * w_scale), as quantize_static writes it: the
        exact integers the converted file adds (ORT 1.26 fuses an FP32 bias too)."""
        bias, scale = bias.reshape(-1), rescale.reshape(-1)
        attrs = {"axis": 0} if scale.size > 1 else {}
        if scale.size == 1:
            scale = scale.reshape(())
        elif scale.size != bias.size:
            raise QdqError(f"{_who(node)}: {scale.size} rescales for a bias of {bias.size}")
        inputs = [self._init(f"{node.name}.bias_int32", bias), self._init(f"{node.name}.bias_scale", scale)]
        out = self._fresh(f"{node.name}.bias_dequantized")
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out],
                                           name=self._fresh(f"{node.name}_bias_dq"), **attrs))
        return out

    def _array(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if not name:  # an omitted zero point: uint8 0
            return np.zeros((), np.uint8)
        if name not in self.inits:
            raise QdqError(f"{_who(node)}: {name} is not a constant initializer")
        return numpy_helper.to_array(self.inits[name])

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def _init(self, base: str, value: np.ndarray) -> str:
        name = self._fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _model(self) -> onnx.ModelProto:
        graph = self.model.graph
        used = {i for n in self.nodes for i in n.input} | {i.name for i in graph.input} | self.graph_outputs
        present = used | {o for n in self.nodes for o in n.output}
        new_graph = helper.make_graph(
            self.nodes, graph.name, list(graph.input), list(graph.output),
            [i for i in graph.initializer if i.name in used] + self.new_inits,
            value_info=[v for v in graph.value_info if v.name in present],
        )
        self.model.graph.CopyFrom(new_graph)  # keeps ir_version, opsets and metadata
        return self.model


def _input(node: onnx.NodeProto, idx: int) -> str:
    return node.input[idx] if idx < len(node.input) else ""


def _who(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name!r}"
