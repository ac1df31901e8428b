"""Export a (dense, pruned and/or QAT) PyTorch model to a DeepSparse-ready ONNX file.

One exporter for every variant: sparseml's ``ModuleExporter`` with ``convert_qat=True`` turns
QAT fake-quant graphs into ConvInteger/MatMulInteger graphs (the only form DeepSparse runs
fully) and leaves dense FP32 models as plain FP32 graphs. The sparsity reported here is measured
on the exported file, so it is what the engine actually gets, not what the trainer intended.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sparsify_mlflow.engines import INT8_OPS

__all__ = ["ExportError", "ExportedModel", "export_onnx", "is_quantized", "onnx_weight_sparsity"]

_LOG = logging.getLogger(__name__)

# node op -> (weight input index, zero-point input index or None, zero-point channel axis)
# for the inputs that can hold a weight; a candidate counts only if it is an initializer.
_WEIGHT_INPUTS: dict[str, tuple[tuple[int, int | None, int], ...]] = {
    "Conv": ((1, None, 0),),
    "ConvInteger": ((1, 3, 0),),
    "QLinearConv": ((3, 5, 0),),
    "Gemm": ((0, None, 0), (1, None, 0)),
    "MatMul": ((0, None, 0), (1, None, -1)),
    "MatMulInteger": ((0, 2, 0), (1, 3, -1)),
    "QLinearMatMul": ((0, 2, 0), (3, 5, -1)),
}


class ExportError(RuntimeError):
    """The model could not be exported to ONNX (the message is one line, the cause is chained)."""


@dataclass(frozen=True)
class ExportedModel:
    path: Path  # the .onnx file
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    size_bytes: int  # the .onnx file plus any external-data files it references
    gzip_size_bytes: int  # gzip (level 6) of the same bytes: what sparsity buys on disk
    weight_sparsity: float  # zeros / elements over all Conv/Gemm/MatMul(-Integer) weights
    layer_sparsity: dict[str, float]  # weight initializer name -> fraction of zeros
    quantized: bool = False  # the graph holds INT8 ops (QuantizeLinear, ConvInteger, ...): what "INT8" means


def export_onnx(
    model: torch.nn.Module,
    sample_inputs: tuple[torch.Tensor, ...],
    out_dir: Path,
    *,
    name: str = "model.onnx",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> ExportedModel:
    """Export ``model`` (on a CPU/eval copy; the caller's model is left untouched).

    Every input and output gets a symbolic batch dimension ("batch"), so ONNX Runtime runs
    any batch size and DeepSparse compiles the file for any batch size.
    """
    from sparseml.pytorch.utils import ModuleExporter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = tuple(t.detach().cpu() for t in sample_inputs)
    if not samples:
        raise ExportError("export_onnx needs at least one sample input tensor")
    if input_names is None:
        input_names = ["input"] if len(samples) == 1 else [f"input_{i}" for i in range(len(samples))]
    kwargs: dict[str, object] = {"input_names": list(input_names)}
    if output_names is not None:
        kwargs["output_names"] = list(output_names)

    path = out_dir / name
    try:
        module = _fold_qat_conv_bias_into_bn(model)
        with _quiet_export():
            ModuleExporter(module, str(out_dir)).export_onnx(
                samples[0] if len(samples) == 1 else samples,
                name=name,
                convert_qat=True,  # without it DeepSparse gets QDQ graphs it cannot run
                **kwargs,
            )
        _ensure_dynamic_batch(path)
    except Exception as exc:  # noqa: BLE001 - anything from torch.onnx/sparseml is an export failure
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {type(exc).__name__}: {first}") from exc

    proto = onnx.load(str(path), load_external_data=False)
    files = _model_files(path, proto)
    overall, layers = onnx_weight_sparsity(path)
    return ExportedModel(
        path=path,
        input_names=tuple(i.name for i in proto.graph.input),
        output_names=tuple(o.name for o in proto.graph.output),
        size_bytes=sum(f.stat().st_size for f in files),
        gzip_size_bytes=_gzip_size(files),
        weight_sparsity=overall,
        layer_sparsity=layers,
        quantized=is_quantized(proto),
    )


def is_quantized(proto: onnx.ModelProto) -> bool:
    """Whether the graph computes in INT8: the file, not the recipe, says whether a model is INT8
    (a QAT phase that saw no optimizer step leaves an FP32 graph)."""
    return any(node.op_type in INT8_OPS for node in proto.graph.node)


def onnx_weight_sparsity(path: Path) -> tuple[float, dict[str, float]]:
    """(overall, per-weight) fraction of zeros over the weights of Conv/Gemm/MatMul-like nodes.

    Quantized weights count as zero where they equal the node's weight zero point: sparseml's
    export stores symmetric int8 weights as uint8 with zero point 128, so a pruned weight is 128.
    Weights reached through a DequantizeLinear (QDQ graphs) use that node's zero point.
    """
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    zeros: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        for w_idx, zp_idx, axis in _WEIGHT_INPUTS.get(node.op_type, ()):
            if w_idx >= len(node.input):
                continue
            w_name, zp_name = node.input[w_idx], _input(node, zp_idx)
            dq = producers.get(w_name)
            if w_name not in inits and dq is not None and dq.op_type == "DequantizeLinear":
                w_name, zp_name = dq.input[0], _input(dq, 2)
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            if w_name not in inits or w_name in zeros:
                continue
            weight = numpy_helper.to_array(inits[w_name])
            if weight.ndim < 2:
                continue
            zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else None
            zeros[w_name] = (int(np.count_nonzero(weight == _broadcast(zp, weight, axis))), weight.size)
    total = sum(n for _, n in zeros.values())
    overall = sum(z for z, _ in zeros.values()) / total if total else 0.0
    return overall, {k: z / n for k, (z, n) in zeros.items()}


def _input(node: onnx.NodeProto, idx: int | None) -> str:
    return node.input[idx] if idx is not None and idx < len(node.input) else ""


def _broadcast(zp: np.ndarray | None, weight: np.ndarray, axis: int) -> np.ndarray | int:
    """A scalar or per-channel zero point shaped to compare against ``weight``."""
    if zp is None or zp.size == 1:
        return 0 if zp is None else zp.reshape(()).astype(weight.dtype)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return zp.astype(weight.dtype).reshape(shape)


def _fold_qat_conv_bias_into_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Return a copy of ``model`` whose QAT Conv-BN modules carry no conv bias.

    torch 2.3 exports a QAT ConvBn with a conv bias as Conv/Div/Add/BatchNormalization; sparseml's
    FoldConvDivBn only matches Conv/Div/BatchNormalization, so the BN stays in the INT8 graph and
    DeepSparse 1.8 aborts the whole process compiling it (seen on AVX2). In eval mode
    BN(y + b) == BN'(y) with running_mean' = running_mean - b, so folding is exact.
    """
    from torch.ao.nn.intrinsic.qat.modules.conv_fused import _ConvBnNd

    if not any(isinstance(m, _ConvBnNd) and m.bias is not None for m in model.modules()):
        return model  # ModuleExporter deep-copies anyway; no need for a second copy
    model = copy.deepcopy(model).cpu().eval()
    for m in model.modules():
        if isinstance(m, _ConvBnNd) and m.bias is not None and m.bn.running_mean is not None:
            with torch.no_grad():
                m.bn.running_mean.sub_(m.bias.detach())
            m.bias = None
    return model


def _ensure_dynamic_batch(path: Path) -> None:
    """Make dim 0 of every graph input and output symbolic (a guard; ModuleExporter already does)."""
    model = onnx.load(str(path), load_external_data=False)
    changed = False
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            dims[0].Clear()
            dims[0].dim_param = "batch"
            changed = True
    if changed:
        onnx.save(model, str(path))


def _model_files(path: Path, proto: onnx.ModelProto) -> list[Path]:
    """The .onnx file and the external-data files it references (large models)."""
    locations = {
        entry.value
        for init in proto.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    return [path, *sorted(path.parent / loc for loc in locations)]


class _Counter:
    """A write-only sink that only counts bytes (gzip size without holding the output)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _gzip_size(files: Sequence[Path]) -> int:
    """gzip's default level 6: level 9 took 45 s of a 173 s BERT-base INT8 export for 1% less."""
    sink = _Counter()
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as gz:  # type: ignore[arg-type]
        for f in files:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    gz.write(chunk)
    return sink.n


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence sparseml's per-transform INFO lines and torch's tracer/constant-folding warnings."""
    loggers = [logging.getLogger("sparseml.exporters"), logging.getLogger("sparseml.pytorch.utils.exporter")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(logging.WARNING, lg.level))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
