"""Inference engines behind one interface: DeepSparse (the point), ONNX Runtime (fallback), OpenVINO.

DeepSparse 1.8 only runs on x86-64 with AVX2+ (INT8 is only fast with AVX-512 VNNI), its
license allows evaluation, not production, and ``import deepsparse`` raises ``OSError`` on CPUs it
cannot classify, so it is imported lazily here and every caller can fall back to ONNX Runtime,
which reads the same exported file. OpenVINO (Apache-2.0) runs the QDQ INT8 twin
(``qdq.export_qdq``) with integer kernels, the converted INT8 file only at float precision; where
it is missing or cannot compile a file, ONNX Runtime takes over too. No engine is imported at
module import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "ENGINES",
    "Engine",
    "EngineUnavailable",
    "computes_int8",
    "cpu_info",
    "deepsparse_status",
    "layer_timings",
    "load_engine",
    "load_openvino",
    "openvino_facts",
    "openvino_status",
    "plan_benchmarks",
    "predict_batches",
    "probe_deepsparse",
    "unsupported_op_types",
]

_LOG = logging.getLogger(__name__)
ENGINES = ("deepsparse", "onnxruntime", "openvino")
# CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE where the CPU has AMX: INT8 FullyConnected layers at least this
# sparse use packed sparse weights (70%-sparse BERT-base at bs1: 32.4 -> 23.2 ms on one AMX Xeon; on
# another, 2026-12-03, on or off within 3%: docs/engines.md).
OPENVINO_SPARSE_RATE = 0.5
# Ops that compute in INT8: a graph with one is an INT8 model (the file, not the recipe, says so).
INT8_OPS = frozenset({"QuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"})
# OpenVINO precision for the ops of an INT8 file that stay in float: its default, bf16 on AVX512_BF16 and
# AMX CPUs, is a second approximation on top of the INT8 the run trained and measured. The packaged
# MiniLM's 70% INT8 QDQ file on the docstring set (AMD Zen 4): 0.737 accuracy at bf16, 0.760 at f32,
# 0.765 on ONNX Runtime, 0.763 for the DeepSparse file.
INT8_FILE_PRECISION = "f32"
DISABLE_ENV = "SPARSIFY_DISABLE_DEEPSPARSE"
_SEEN_NATIVE_WARNINGS: set[str] = set()


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run here (not installed, unsupported CPU, disabled, failed to compile)."""


class Engine(Protocol):
    name: str  # "deepsparse" | "onnxruntime" | "openvino"
    batch_size: int
    num_cores: int
    input_names: tuple[str, ...]
    fraction_of_supported_ops: float | None  # DeepSparse's figure; None for ORT and OpenVINO

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Exactly ``batch_size`` rows per input in, the graph's outputs out."""
        ...


def deepsparse_status() -> tuple[bool, str]:
    """(usable, reason). Never raises: the answer decides between DeepSparse and the fallback."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False, f"DeepSparse disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # it phones home otherwise
    try:
        import deepsparse
        from deepsparse.cpu import cpu_architecture

        arch = cpu_architecture()
    except ImportError as exc:
        return False, f"deepsparse is not installed ({exc})"
    except OSError as exc:  # raised at import on unsupported CPUs / operating systems
        return False, f"DeepSparse does not support this CPU/OS: {exc}"
    except Exception as exc:  # noqa: BLE001 - any import-time failure means "use the fallback"
        return False, f"deepsparse failed to import: {type(exc).__name__}: {exc}"
    int8 = "VNNI: fast INT8" if arch.vnni else "no VNNI: INT8 is emulated, expect slow quantized models"
    return True, f"deepsparse {deepsparse.__version__} on {arch.isa} ({int8})"


def openvino_status() -> tuple[bool, str]:
    """(usable, reason), like deepsparse_status: whether ``import openvino`` works here."""
    try:
        import openvino as ov
    except ImportError as exc:
        return False, f"openvino is not installed ({exc}); pip install openvino"
    except Exception as exc:  # noqa: BLE001 - any import-time failure means "use the fallback"
        return False, f"openvino failed to import: {type(exc).__name__}: {exc}"
    return True, f"openvino {ov.__version__.split('-')[0]}"


def openvino_facts() -> dict[str, str]:
    """What an OpenVINO figure means here: its version, default CPU precision (bf16 on CPUs with
    AVX512_BF16 or AMX, so "dense" is then a bf16 figure), the precision of an INT8 file's float ops
    and whether sparse weights are used (AMX only)."""
    import openvino as ov

    precision = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()  # "bf16", "f32"
    sparse = (f"yes (AMX: INT8 layers >= {OPENVINO_SPARSE_RATE:.0%} sparse)" if _has_amx()
              else "no (needs AMX; sparsity brings OpenVINO no speed on this CPU)")
    return {"version": ov.__version__.split("-")[0], "precision": precision,
            "int8_files_float_ops": INT8_FILE_PRECISION, "sparse_weights": sparse}


def cpu_info() -> dict[str, object]:
    """What the benchmark ran on: vendor/model, cores, ISA, VNNI, AMX (logged next to every figure)."""
    if deepsparse_status()[0]:
        from deepsparse.cpu import cpu_architecture

        arch = cpu_architecture()
        return {
            "vendor": arch.get("vendor"),
            "model": arch.get("vendor_model"),
            "cores": int(arch.get("available_num_cores") or arch.get("num_cores") or _physical_cores()),
            "threads": int(arch.get("available_num_hw_threads") or os.cpu_count() or 1),
            "isa": arch.get("isa"),
            "vnni": bool(arch.get("vnni")),
            "amx": _has_amx(),
            "source": "deepsparse",
        }
    fields = _proc_cpuinfo_first()
    flags = set(fields.get("flags", "").split())
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "unknown"
    return {
        "vendor": fields.get("vendor_id"),
        "model": fields.get("model name"),
        "cores": _physical_cores(),
        "threads": _threads(),
        "isa": isa,
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "amx": "amx_int8" in flags,
        "source": "/proc/cpuinfo",
    }


def load_engine(path: Path, engine: str, batch_size: int, num_cores: int | None = None) -> Engine:
    """Compile/open ``path`` for a fixed batch size on ``num_cores`` (default: all physical cores)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cores = int(num_cores) if num_cores else _physical_cores()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    dtypes = _input_dtypes(path)
    if engine == "deepsparse":
        return _load_deepsparse(path, batch_size, cores, dtypes)
    if engine == "openvino":
        return load_openvino(path, batch_size, cores)
    return _load_onnxruntime(path, batch_size, cores, dtypes)


def load_openvino(path: Path, batch_size: int, num_cores: int | None = None, *, precision: str | None = None
                  ) -> Engine:
    """Compile ``path`` on OpenVINO's CPU plugin: one stream of ``num_cores`` threads, ``batch_size`` rows a run.

    ``precision`` sets ``INFERENCE_PRECISION_HINT`` (f32, bf16, f16); None keeps OpenVINO's default
    (openvino_facts) for a float file and INT8_FILE_PRECISION for an INT8 one. Sparse weights are
    switched on where the CPU has AMX (OPENVINO_SPARSE_RATE).
    The file keeps its dynamic batch dimension: reshaped to a static batch, OpenVINO 2026.4.1's
    INT8 attention kernel returned wrong logits for a QDQ BERT at batch 4, 6 and 8.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    ok, reason = openvino_status()
    if not ok:
        raise EngineUnavailable(reason)
    import openvino as ov

    cores = int(num_cores) if num_cores else _physical_cores()
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": cores, "NUM_STREAMS": 1}
    if precision is None and computes_int8(path):
        precision = INT8_FILE_PRECISION
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if _has_amx():
        config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = OPENVINO_SPARSE_RATE
    dtypes = _input_dtypes(path)
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # noqa: BLE001 - a conversion/compile failure is "use another engine"
        raise EngineUnavailable(f"OpenVINO could not compile {path.name}: {_openvino_reason(exc)}") from exc
    names = tuple(i.get_any_name() for i in compiled.inputs)
    return _OpenVinoEngine(
        name="openvino",
        batch_size=batch_size,
        num_cores=cores,
        input_names=names,
        input_dtypes=tuple(dtypes.get(n, np.float32) for n in names),
        fraction_of_supported_ops=None,
        _impl=compiled.create_infer_request(),
    )


def _openvino_reason(exc: Exception) -> str:
    """The lines of OpenVINO's multi-line report that say what failed, as one line (not "Exception from
    <file>:"): e.g. "Model wasn't fully converted. No conversion rule found for operations: ai.onnx.ml.Scaler"."""
    lines = [ln.strip().removeprefix("-- ") for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '")) and not ln.endswith(":")]
    return " ".join(useful[:2] or lines[:1] or [type(exc).__name__])


def _has_amx() -> bool:
    """AMX INT8 tiles: the only CPUs where OpenVINO's CPU plugin packs sparse weights."""
    return "amx_int8" in _proc_cpuinfo_first().get("flags", "").split()


# Every DeepSparse child starts so: no analytics, and no torch. `import deepsparse` pulls torch in for its
# TorchScript benchmark (1.2 of a child's 4.8 s on a 2-core Xeon); compiling and per-layer analysis never use it.
_CHILD_PRELUDE = """
import os, sys
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
sys.modules["torch"] = None
import deepsparse
"""


_PROBE_SCRIPT = _CHILD_PRELUDE + """
path, cores = sys.argv[1], int(sys.argv[2])
for bs in map(int, sys.argv[3:]):
    deepsparse.compile_model(path, batch_size=bs, num_cores=cores)
    print("OK", bs, flush=True)
"""


def probe_deepsparse(path: Path, batch_sizes: Sequence[int], num_cores: int | None = None,
                     timeout: float = 900.0) -> dict[int, str | None]:
    """Compile `path` at each batch size in a child process; {batch size: None if safe, else why}.

    DeepSparse 1.8 kills the whole process on some graphs (a native assertion, no Python
    exception; seen on AVX2 with 1x1 feature maps at batch >= 16). Compiling in the experiment's
    own process would end it mid-run, leaving the MLflow run RUNNING; a child process finds out safely.
    """
    cores = int(num_cores) if num_cores else _physical_cores()
    verdicts: dict[int, str | None] = {}
    remaining = sorted(set(batch_sizes))
    while remaining:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PROBE_SCRIPT, str(path), str(cores), *map(str, remaining)],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            verdicts[remaining[0]] = f"compiling took over {timeout:.0f} s"
            remaining = remaining[1:]
            continue
        compiled = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("OK ")]
        verdicts.update({bs: None for bs in compiled})
        remaining = [bs for bs in remaining if bs not in compiled]
        if remaining:  # the first one not compiled is the one that failed
            failed = remaining.pop(0)
            verdicts[failed] = _crash_reason(proc.stdout + proc.stderr, proc.returncode)
    return verdicts


def plan_benchmarks(path: Path, engines: Sequence[str], batch_sizes: Sequence[int], num_cores: int | None = None
                    ) -> tuple[list[tuple[str, int]], set[int], list[str]]:
    """(engine, batch size) pairs to measure, the batch sizes DeepSparse compiles safely, notes.

    DeepSparse is used wherever it is installed, supports the CPU and compiles the file at that
    batch size (probed in a child process, once per file, size and cores); OpenVINO wherever it is
    installed and compiles the file (checked here, once per file: a failure raises, it does not abort,
    and the batch stays dynamic). Elsewhere ONNX Runtime takes over, with a note.
    """
    notes: list[str] = []
    safe: set[int] = set()
    name = f"{path.parent.name}/{path.name}"
    if "deepsparse" in engines and deepsparse_status()[0]:
        for bs, why in _probe_once(Path(path), batch_sizes, num_cores).items():
            if why is None:
                safe.add(bs)
            else:
                notes.append(f"DeepSparse cannot compile {name} at batch size {bs} "
                             f"on this CPU ({why}); ONNX Runtime measured it instead")
    openvino_ok = False  # not installed: the caller says so once (as for DeepSparse), not once per file
    if "openvino" in engines and openvino_status()[0]:
        openvino_ok = (why := _openvino_compiles(Path(path), num_cores)) is None
        if not openvino_ok:
            notes.append(f"OpenVINO cannot compile {name} ({why}); ONNX Runtime measured it instead")
    plan: list[tuple[str, int]] = []
    for engine in engines:
        for bs in batch_sizes:
            falls_back = (engine == "deepsparse" and bs not in safe) or (engine == "openvino" and not openvino_ok)
            actual = "onnxruntime" if falls_back else engine
            if (actual, bs) not in plan:
                plan.append((actual, bs))
    return plan, safe, notes


_PROBED: dict[tuple[str, int, int, int, int], str | None] = {}


def _probe_once(path: Path, batch_sizes: Sequence[int], num_cores: int | None) -> dict[int, str | None]:
    """probe_deepsparse, remembered for this process: the ONNX check and the benchmark session ask
    about the same file (identified by path, size and modification time)."""
    stat = path.stat()
    cores = int(num_cores) if num_cores else _physical_cores()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, cores)
    missing = [bs for bs in dict.fromkeys(batch_sizes) if (*key, bs) not in _PROBED]
    if missing:
        for bs, why in probe_deepsparse(path, missing, cores).items():
            _PROBED[(*key, bs)] = why
    return {bs: _PROBED[(*key, bs)] for bs in dict.fromkeys(batch_sizes)}


_OPENVINO_CHECKED: dict[tuple[str, int, int, int], str | None] = {}


def _openvino_compiles(path: Path, num_cores: int | None) -> str | None:
    """None when OpenVINO compiles `path` here, else why not (one line); remembered like _probe_once."""
    stat = path.stat()
    cores = int(num_cores) if num_cores else _physical_cores()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, cores)
    if key not in _OPENVINO_CHECKED:
        try:
            load_openvino(path, 1, cores)
            _OPENVINO_CHECKED[key] = None
        except EngineUnavailable as exc:  # the reason alone: the note names the file
            _OPENVINO_CHECKED[key] = _openvino_reason(exc.__cause__) if isinstance(exc.__cause__, Exception) else str(exc)
    return _OPENVINO_CHECKED[key]


_LAYERS_SCRIPT = _CHILD_PRELUDE + """
import json
import numpy as np
rows, bs, cores, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
data = np.load(rows)
inputs = [data[k][:bs] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
for path in paths:
    report = deepsparse.model_debug_analysis(path, inputs, batch_size=bs, num_cores=cores, num_iterations=20,
                                             num_warmup_iterations=5)
    layers = [{"layer": i, "name": l["name"], "kind": l["name"].rstrip("_0123456789").split("-")[0].rstrip("_"),
               "canonical_name": l["canonical_name"], "ms": l["average_run_time_in_ms"],
               "kernel_sparsity": l["kernel_sparsity"], "kernel": l.get("kernel_dims") or {},
               "teraflops_per_second": l.get("average_teraflops_per_second")}
              for i, l in enumerate(report["layer_info"])]
    print("LAYERS " + json.dumps({"total_ms": report["average_total_time"], "layers": layers}), flush=True)
"""


def layer_timings(paths: Mapping[str, Path], rows: list[np.ndarray], batch_size: int, num_cores: int | None = None,
                  timeout: float = 900.0) -> dict[str, dict[str, Any]]:
    """DeepSparse's own per-layer analysis (`deepsparse.model_debug_analysis`) of each file at `batch_size`:
    {label: {total_ms, layers: [{name, kind, ms, kernel_sparsity, ...}]}} in execution order, leaving out
    the files it could not analyse. In one child process for all files, as compiling can abort the process
    (probe_deepsparse); a file after one that did is analysed in a new child."""
    if not deepsparse_status()[0]:
        return {}
    cores = int(num_cores) if num_cores else _physical_cores()
    reports: dict[str, dict[str, Any]] = {}
    remaining = list(paths.items())
    with tempfile.TemporaryDirectory(prefix="sparsify-layers-") as tmp:
        arrays = Path(tmp) / "rows.npz"
        np.savez(arrays, **{f"input_{i}": np.repeat(a[:1], batch_size, axis=0) for i, a in enumerate(rows)})
        while remaining:
            try:
                proc = subprocess.run([sys.executable, "-c", _LAYERS_SCRIPT, str(arrays), str(batch_size), str(cores),
                                       *(str(path) for _, path in remaining)], capture_output=True, text=True,
                                      timeout=timeout)
                output, why = proc.stdout, _crash_reason(proc.stdout + proc.stderr, proc.returncode)
            except subprocess.TimeoutExpired as exc:
                output, why = exc.stdout or "", f"it took over {timeout:.0f} s"
                output = output.decode() if isinstance(output, bytes) else output
            done = [json.loads(ln.removeprefix("LAYERS ")) for ln in output.splitlines() if ln.startswith("LAYERS ")]
            reports.update({label: report for (label, _), report in zip(remaining, done)})
            remaining = remaining[len(done):]
            if remaining:  # the first one not analysed is the one that failed
                _LOG.warning("DeepSparse's per-layer analysis of %s failed: %s", remaining.pop(0)[1].name, why)
    return reports


_DIAGNOSE_SCRIPT = _CHILD_PRELUDE + """
deepsparse.compile_model(sys.argv[1], batch_size=1, num_cores=int(sys.argv[2]))
"""
_NODE_LINE = re.compile(r"^Node (\d+): (\S+)")


def unsupported_op_types(path: Path, num_cores: int | None = None, timeout: float = 900.0) -> dict[str, int]:
    """Op types (with counts) of the nodes DeepSparse leaves outside its optimized subgraphs.

    DeepSparse's Python API only reports `fraction_of_supported_ops`; at logging level
    `diagnose` its compiler prints the whole graph and then each subgraph it takes over, so the
    nodes missing from every subgraph are the unsupported ones. Compiled in a child process, as
    in `probe_deepsparse`. Empty when the log could not be read.
    """
    cores = int(num_cores) if num_cores else _physical_cores()
    try:
        proc = subprocess.run([sys.executable, "-c", _DIAGNOSE_SCRIPT, str(path), str(cores)], capture_output=True,
                              text=True, timeout=timeout, env=os.environ | {"NM_LOGGING_LEVEL": "diagnose"})
    except subprocess.TimeoutExpired:
        return {}
    return parse_unsupported_ops(proc.stdout + proc.stderr)


def parse_unsupported_ops(log: str) -> dict[str, int]:
    """From a `diagnose` compile log: op type -> count of graph nodes in no supported subgraph."""
    graph: dict[int, str] = {}
    supported: set[int] = set()
    section = None
    for line in log.splitlines():
        if "Printing GraphViewer main_graph" in line:
            section = "graph" if not graph else None  # the first listing is the whole model
        elif "Printing subgraph:" in line:
            section = "subgraph"
        elif (match := _NODE_LINE.match(line.strip())) and section:
            index = int(match.group(1))
            if section == "graph":
                graph[index] = match.group(2)
            else:
                supported.add(index)
        elif not line.strip() or line.startswith("["):
            section = None
    return dict(Counter(op for index, op in graph.items() if index not in supported).most_common())


def _crash_reason(output: str, returncode: int) -> str:
    """The line of DeepSparse's report that says what failed (an assertion or a Python error)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("Assertion at") or "Error:" in line:
            return f"{line} (exit code {returncode})"
    return f"exit code {returncode}" + (f": {lines[-1]}" if lines else "")


def predict_batches(engine: Engine, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run any number of rows through a fixed-batch engine.

    Rows are split into ``engine.batch_size`` batches; the last batch is padded by repeating its
    own rows (real data, so no NaN/overflow surprises) and the padding is cut from the outputs.
    """
    if not inputs:
        raise ValueError("predict_batches needs at least one input array")
    n = len(inputs[0])
    if n == 0 or any(len(a) != n for a in inputs):
        raise ValueError(f"inputs need the same, non-zero number of rows; got {[len(a) for a in inputs]}")
    bs = engine.batch_size
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, bs):
        rows = min(bs, n - start)
        batch = [a[start : start + rows] for a in inputs]
        if rows < bs:
            idx = np.arange(bs) % rows
            batch = [b[idx] for b in batch]
        chunks.append([o[:rows] for o in engine.run(batch)])
    return [np.concatenate(parts, axis=0) for parts in zip(*chunks)]


@dataclass
class _BaseEngine:
    name: str
    batch_size: int
    num_cores: int
    input_names: tuple[str, ...]
    input_dtypes: tuple[Any, ...]
    fraction_of_supported_ops: float | None
    _impl: Any = field(repr=False)

    def _prepare(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Same checks and conversions for both engines, so their timings stay comparable."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.name} expects {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        out = []
        for a, dtype in zip(inputs, self.input_dtypes):
            if len(a) != self.batch_size:
                raise ValueError(f"{self.name} engine compiled for batch_size={self.batch_size}, got {len(a)} rows")
            out.append(np.ascontiguousarray(a, dtype=dtype))
        return out


class _DeepSparseEngine(_BaseEngine):
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._impl.run(self._prepare(inputs), val_inp=False)


class _OrtEngine(_BaseEngine):
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._impl.run(None, dict(zip(self.input_names, self._prepare(inputs))))


class _OpenVinoEngine(_BaseEngine):
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return list(self._impl.infer(self._prepare(inputs)).to_tuple())  # copies (share_outputs=False)


def _load_deepsparse(path: Path, batch_size: int, cores: int, dtypes: dict[str, Any]) -> Engine:
    ok, reason = deepsparse_status()
    if not ok:
        raise EngineUnavailable(reason)
    import deepsparse

    try:
        with _native_output_to_log():
            eng = deepsparse.compile_model(str(path), batch_size=batch_size, num_cores=cores)
    except Exception as exc:  # noqa: BLE001 - a compile failure is "use the other engine"
        raise EngineUnavailable(f"DeepSparse could not compile {path.name}: {type(exc).__name__}: {exc}") from exc
    names = tuple(eng.input_names)
    return _DeepSparseEngine(
        name="deepsparse",
        batch_size=batch_size,
        num_cores=int(eng.num_cores),
        input_names=names,
        input_dtypes=tuple(dtypes.get(n, np.float32) for n in names),
        # Engine.fraction_of_supported_ops (1.8.0: a property, rounded to 4 digits): the share of
        # graph ops DeepSparse runs itself; below 1.0 the rest falls back to slow paths.
        fraction_of_supported_ops=float(eng.fraction_of_supported_ops),
        _impl=eng,
    )


def _load_onnxruntime(path: Path, batch_size: int, cores: int, dtypes: dict[str, Any]) -> Engine:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineUnavailable(f"onnxruntime is not installed ({exc})") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cores
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    # No spin-waiting between runs: ORT's idle threads otherwise keep spinning and slow whichever engine
    # runs next in a benchmark session (a 0.6-ms DeepSparse model measured 0.6-3.2 ms beside it, 0.6-1.1 without)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = tuple(i.name for i in sess.get_inputs())
    return _OrtEngine(
        name="onnxruntime",
        batch_size=batch_size,
        num_cores=cores,
        input_names=names,
        input_dtypes=tuple(dtypes.get(n, np.float32) for n in names),
        fraction_of_supported_ops=None,
        _impl=sess,
    )


def computes_int8(path: Path) -> bool:
    """Whether the ONNX file at `path` has an INT8 op (INT8_OPS)."""
    import onnx

    return any(node.op_type in INT8_OPS for node in onnx.load(str(path), load_external_data=False).graph.node)


def _input_dtypes(path: Path) -> dict[str, Any]:
    """Graph input name -> numpy dtype, so callers may pass float64/int32 arrays safely."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    to_np = onnx.helper.tensor_dtype_to_np_dtype
    return {i.name: to_np(i.type.tensor_type.elem_type) for i in graph.input if i.name not in inits}


@contextlib.contextmanager
def _native_output_to_log() -> Iterator[None]:
    """Route what the C++ engine prints on fds 1/2 (banner, INT8-emulation notice) to logging.

    If the engine aborts the process inside this block, its report stays in the temp file named
    in the DEBUG log line (``sparsify-deepsparse-*.log``).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = tempfile.NamedTemporaryFile(prefix="sparsify-deepsparse-", suffix=".log", delete=False)
    _LOG.debug("DeepSparse native output goes to %s while compiling", tmp.name)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        tmp.close()
        text = Path(tmp.name).read_text(errors="replace")
        os.unlink(tmp.name)
        for line in filter(None, (ln.strip() for ln in text.splitlines())):
            if ">WARN<" in line or "ERROR" in line:
                msg = line.split("] ", 1)[-1]
                if msg not in _SEEN_NATIVE_WARNINGS:
                    _SEEN_NATIVE_WARNINGS.add(msg)
                    _LOG.warning("DeepSparse: %s", msg)
            else:
                _LOG.debug("DeepSparse: %s", line)


def _proc_cpuinfo_first() -> dict[str, str]:
    """The key/value pairs of the first processor block of /proc/cpuinfo ({} elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _physical_cores() -> int:
    """Physical cores this process may use: the default thread count for both engines."""
    try:
        pairs, phys, core = set(), "", ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
                pairs.add((phys, core))
        physical = len(pairs) or (os.cpu_count() or 1)
    except OSError:
        physical = os.cpu_count() or 1
    return max(1, min(physical, _threads()))


def _threads() -> int:
    """Hardware threads this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
