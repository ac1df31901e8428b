"""What an experiment hands over: `deployment/` (model.onnx, its QDQ twin model.qdq.onnx for an INT8
model, recipe, config, a README saying which engine runs which file and how) and
`training_artifacts/metrics.yaml`.

Both are written into the experiment folder before that folder is logged to MLflow, so the copy
under the run's `experiment/` artifacts is the same set of files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sparsify_mlflow.engines import cpu_info
from sparsify_mlflow.qdq import QDQ_FILE
from sparsify_mlflow.speed_session import Reliability

if TYPE_CHECKING:
    from sparsify_mlflow.levels import RecipePlan
    from sparsify_mlflow.results import ModelReport
    from sparsify_mlflow.usecases.base import DataBundle, UseCase

README = "README.md"
METRICS_FILE = "metrics.yaml"


@dataclass(frozen=True)
class Handover:
    """Everything the deployment README and metrics.yaml describe."""

    title: str                 # e.g. "cv-classification resnet18, optim level 0.5"
    run_id: str                # the parent MLflow run
    plan: RecipePlan
    dense: ModelReport
    sparse: ModelReport
    comparison: dict[str, float]
    notes: list[str]
    reliability: Reliability


def write_deployment(folder: Path, use_case: UseCase, data: DataBundle, recipe: str, handover: Handover) -> Path:
    """model.onnx (+ model.qdq.onnx) + recipe.yaml + config.json + README.md (+ the use case's files, e.g. a
    tokenizer)."""
    sparse = handover.sparse
    deployment = folder / "deployment"
    deployment.mkdir(parents=True, exist_ok=True)
    (deployment / "model.onnx").write_bytes(sparse.exported.path.read_bytes())
    if sparse.qdq is not None:
        (deployment / QDQ_FILE).write_bytes(sparse.qdq.path.read_bytes())
    (deployment / "recipe.yaml").write_text(recipe)
    config = use_case.deployment_config(data) | {"metrics": {sparse.metrics.main_name: sparse.metrics.main}}
    (deployment / "config.json").write_text(json.dumps(config, indent=2))
    use_case.deployment_files(data, deployment)  # e.g. the tokenizer of NLP use cases
    (deployment / README).write_text(deployment_readme(handover, sorted(p.name for p in deployment.iterdir())))
    return deployment


def write_metrics(folder: Path, handover: Handover) -> Path:
    """training_artifacts/metrics.yaml: final figures of both models, the comparison, per-epoch history."""
    dense, sparse = handover.dense, handover.sparse
    doc = {
        "main_metric": sparse.metrics.main_name,
        "optim_level": handover.plan.optim_level,
        "recipe_source": handover.plan.source,
        "target_sparsity": handover.plan.target_sparsity,
        "dense": _plain(dense.flat_metrics()),
        "sparse": _plain(sparse.flat_metrics()),
        "comparison": _plain(handover.comparison),
        "history": {side.role: [{"epoch": h.epoch, "train_loss": round(h.train_loss, 6), "lr": h.lr,
                                 "sparsity": round(h.sparsity, 4), **_plain(h.val.values)} for h in side.history]
                    for side in (dense, sparse)},
    }
    path = folder / "training_artifacts" / METRICS_FILE
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def deployment_readme(h: Handover, files: list[str]) -> str:
    """Which engine takes which file, how to run it on DeepSparse, ONNX Runtime and OpenVINO, this run's figures."""
    sparse, dense, plan = h.sparse, h.dense, h.plan
    inputs, outputs = graph_io(sparse.exported.path)
    main = sparse.metrics.main_name
    arrays = ", ".join(_zeros(shape, dtype) for _, dtype, shape in inputs)
    feed = ", ".join(f'"{name}": {_zeros(shape, dtype)}' for name, dtype, shape in inputs)
    lines = [
        f"# {h.title}: deployment",
        "",
        f"Written by `sparsify.run training-aware` on {datetime.now():%Y-%m-%d %H:%M}, MLflow run `{h.run_id}`.",
        "",
        f"Files: {', '.join(f'`{f}`' for f in files)}. `config.json` holds the labels and the preprocessing "
        "the inputs need; `recipe.yaml` is the sparseml recipe the model was trained with.",
        "",
        "## The model",
        "",
        f"- target sparsity {plan.target_sparsity:.0%}, measured on the exported weights "
        f"{sparse.exported.weight_sparsity:.1%}; INT8 quantization: {'yes' if sparse.exported.quantized else 'no'} "
        f"(read from the graph)",
        f"- {main}: {sparse.metrics.main:.4f} in PyTorch, {sparse.onnx_metrics.main:.4f} for this file on "
        f"{sparse.onnx_engine}; the dense baseline had {dense.onnx_metrics.main:.4f} "
        f"({h.comparison['main_drop']:+.2f} points drop on the exported files)",
        f"- size {sparse.exported.size_bytes / 2**20:.2f} MiB ({sparse.exported.gzip_size_bytes / 2**20:.2f} MiB gzipped)",
        *([f"- `{QDQ_FILE}`, the same INT8 model in QDQ form: {main} {sparse.qdq.metrics.main:.4f} on "
           f"{sparse.qdq.engine}"] if sparse.qdq else []),
        "",
        "## Which engine takes which file",
        "",
        "| engine | file | why |",
        "|---|---|---|",
        "| DeepSparse | `model.onnx` | its INT8 form (ConvInteger/MatMulInteger) is what DeepSparse runs fully, "
        "with its sparse kernels |",
        *([f"| OpenVINO | `{QDQ_FILE}` | QDQ form (int8 weights -> DequantizeLinear -> Conv/MatMul): OpenVINO "
           "runs it with integer kernels, `model.onnx` only at float precision |",
           f"| ONNX Runtime | `model.onnx` or `{QDQ_FILE}` | it fuses the QDQ file's MatMuls and the convs whose "
           "output is re-quantized into integer kernels |"] if sparse.qdq else
          ["| OpenVINO, ONNX Runtime | `model.onnx` | |"]),
        "",
        "## Inputs and outputs",
        "",
        "| | name | type | shape |",
        "|---|---|---|---|",
        *[f"| input | `{n}` | {d} | {_shape(s)} |" for n, d, s in inputs],
        *[f"| output | `{n}` | {d} | {_shape(s)} |" for n, d, s in outputs],
        "",
        "`batch` is free: ONNX Runtime takes any batch size, DeepSparse compiles for the one you give it.",
        "The zeros below only show shapes and types; feed preprocessed data (see `config.json`).",
        "",
        "## Run it with DeepSparse",
        "",
        "```python",
        "import numpy as np",
        "from deepsparse import compile_model",
        "",
        'engine = compile_model("model.onnx", batch_size=1)',
        f"outputs = engine.run([{arrays}])",
        "```",
        "",
        "DeepSparse needs x86-64 with AVX2 (INT8 is fast with AVX-512 VNNI); its Community License allows "
        "evaluation, not production use.",
        "",
        "## Run it with ONNX Runtime",
        "",
        "```python",
        "import numpy as np",
        "import onnxruntime as ort",
        "",
        'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
        f"outputs = session.run(None, {{{feed}}})",
        "```",
        "",
        "## Run it with OpenVINO",
        "",
        "```python",
        "import numpy as np",
        "import openvino as ov",
        "",
        (f'compiled = ov.Core().compile_model("{QDQ_FILE}", "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})'
         if sparse.qdq else 'compiled = ov.Core().compile_model("model.onnx", "CPU")'),
        f"outputs = compiled([{arrays}])",
        "```",
        "",
        "OpenVINO's default CPU precision is bf16 where the CPU has AVX512_BF16 or AMX"
        + ("; the INT8 file runs with its float ops at f32, as this run evaluated and timed it (bf16 on top of "
           "INT8 cost a MiniLM 2.3 points)" if sparse.qdq else "")
        + ". OpenVINO uses weight sparsity only on AMX CPUs.",
        "",
        "## Measured by this run",
        "",
        _machine_line(),
        "",
        "| model | engine | batch | latency median (ms) | p90 (ms) | items/s |",
        "|---|---|---|---|---|---|",
        *[f"| {side.role} | {r.engine} | {r.batch_size} | {r.latency_ms_median:.2f} | {r.latency_ms_p90:.2f} | "
          f"{r.items_per_second:.1f} |" for side in (dense, sparse) for r in side.benchmarks.values()],
        "",
        "Both models were timed in one session, in alternating rounds; speedups (median [min-max] of the "
        "per-round ratios, same engine on both sides): "
        + ", ".join(f"{name.removeprefix('speedup.')} {value:.2f}x [{h.comparison[name + '.min']:.2f}-"
                    f"{h.comparison[name + '.max']:.2f}]" for name, value in h.comparison.items()
                    if name.startswith("speedup.") and not name.endswith((".min", ".max"))) + ".",
        "",
        *[f"- fastest sparse deployment over the fastest dense one, batch {name.rsplit('.bs', 1)[1]}: {value:.2f}x "
          f"(sparse on {_fastest(sparse, name.rsplit('.', 1)[1])}, dense on {_fastest(dense, name.rsplit('.', 1)[1])})."
          for name, value in h.comparison.items() if name.startswith("speedup_vs_best_dense.")
          and not name.endswith((".min", ".max"))],
        *([] if h.reliability.reliable else ["", f"**Unreliable**: {h.reliability.reason}."]),
    ]
    if h.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in h.notes]]
    return "\n".join(lines) + "\n"


def _fastest(side: ModelReport, setting: str) -> str:
    """The engine of `side`'s lowest median latency at `setting` ("bs1")."""
    timed = {key: r.latency_ms_median for key, r in side.benchmarks.items() if key.endswith(f".{setting}")}
    return min(timed, key=timed.__getitem__).split(".")[0] if timed else "-"


def graph_io(path: Path) -> tuple[list[tuple[str, str, list[int | str]]], list[tuple[str, str, list[int | str]]]]:
    """(name, numpy dtype name, shape with symbolic dims as names) of the graph's inputs and outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values: list) -> list[tuple[str, str, list[int | str]]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append((value.name, dtype, [d.dim_param or d.dim_value for d in tensor.shape.dim]))
        return out

    return describe([i for i in graph.input if i.name not in initializers]), describe(list(graph.output))


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _zeros(shape: list[int | str], dtype: str) -> str:
    concrete = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)
    return f"np.zeros({concrete}, dtype=np.{dtype})"


def _machine_line() -> str:
    cpu = cpu_info()
    return (f"On {cpu['model'] or 'an unknown CPU'} ({cpu['cores']} cores, {cpu['isa']}, "
            f"VNNI {'yes' if cpu['vnni'] else 'no'}); your machine's figures will differ.")


def _plain(values: dict[str, float]) -> dict[str, float]:
    """Plain floats for YAML (no numpy scalars), rounded for reading."""
    return {k: round(float(v), 6) for k, v in values.items()}
