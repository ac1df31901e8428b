"""Benchmark a registered model (`models:/NAME@ALIAS` or `models:/NAME/VERSION`) and log it to MLflow.

The ONNX file comes from the registry (the onnx flavor's model.onnx, or the model.onnx artifact
of a pyfunc such as the text classifier). Inputs are the model's input example when it holds the
graph's tensors, else generated from the graph's input shapes and types. DeepSparse is probed in
a child process first (it can abort the process on some graphs). The result goes to a new run
tagged with the model version, and the version gets the run id as its `benchmark_run_id` tag.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sparsify_mlflow import remote, tracking
from sparsify_mlflow.benchmark import BenchmarkResult
from sparsify_mlflow.engines import cpu_info, deepsparse_status, openvino_status
from sparsify_mlflow.errors import ConfigError, UserError
from sparsify_mlflow.headline import MB
from sparsify_mlflow.qdq import QDQ_FILE
from sparsify_mlflow.speed_session import DEFAULT_ROUNDS, Entrant, Reliability, plan_session, run_session

LABEL = "model"

DEFAULT_EXPERIMENT = "sparsify-benchmarks"
ENGINE_CHOICES = ("deepsparse", "onnxruntime", "openvino", "both")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w\-]+)|/(?P<version>\d+))$")


@dataclass
class RegisteredBenchmark:
    model_uri: str
    name: str
    version: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    input_source: str                       # "input_example" or "generated"
    results: dict[str, BenchmarkResult]     # "deepsparse.bs1", ...
    reliability: Reliability
    notes: list[str] = field(default_factory=list)


def parse_batch_sizes(text: str | None) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in (text or "").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--batch-size must be comma-separated positive integers, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--batch-size must be comma-separated positive integers, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def resolve_model_uri(client: MlflowClient, model_uri: str) -> ModelVersion:
    match = _URI.match(model_uri.strip())
    if not match:
        raise ConfigError(f"--model-uri must look like models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")
    name = match["name"]
    try:
        if match["alias"]:
            return client.get_model_version_by_alias(name, match["alias"])
        return client.get_model_version(name, match["version"])
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else type(exc).__name__
        raise UserError(f"{model_uri} is not in the registry of {remote.redact_uri(mlflow.get_tracking_uri())} "
                        f"({first})") from None


def benchmark_registered(model_uri: str, *, batch_sizes: tuple[int, ...] = (1, 16), engine: str = "deepsparse",
                         iterations: int = 30, rounds: int | None = None, num_cores: int | None = None,
                         tracking_uri: str | None = None, experiment_name: str = DEFAULT_EXPERIMENT,
                         working_dir: Path = Path(".")) -> RegisteredBenchmark:
    """Time the version's ONNX file in one interleaved session (speed_session), as an experiment does."""
    rounds = rounds or DEFAULT_ROUNDS
    if engine not in ENGINE_CHOICES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
    for option, value in (("--iterations", iterations), ("--rounds", rounds), ("--num-cores", num_cores)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    working_dir = Path(working_dir).resolve()
    uri = tracking.resolve_tracking_uri(tracking_uri, working_dir)
    tracking.require_existing_store(uri)
    tracking.connect(uri)
    client = MlflowClient()
    mv = resolve_model_uri(client, model_uri)
    name, version = mv.name, str(mv.version)
    experiment_id = tracking.ensure_experiment(experiment_name, working_dir)
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        onnx_path = find_onnx(local)
        rows, source = model_inputs(local, onnx_path, max(batch_sizes))
        entrants, notes = engine_plan(onnx_path, engine, batch_sizes, num_cores, qdq_file(local))
        tags = {"sparsify.role": "benchmark", "sparsify.model_uri": model_uri, "sparsify.registered_model": name,
                "sparsify.registered_version": version, "sparsify.source_run_id": mv.run_id or ""}
        with tracking.run(f"benchmark-{name}-v{version}", experiment_id=experiment_id, tags=tags) as run:
            cpu = cpu_info()
            tracking.log_params({"model_uri": model_uri, "registered_model": name, "registered_version": version,
                                 "engine": engine, "batch_sizes": ",".join(map(str, batch_sizes)),
                                 "iterations": iterations, "rounds": rounds, "input_source": source,
                                 # only when given: `mlflow run` logged the raw '' under the same name
                                 **({"num_cores": num_cores} if num_cores else {}),
                                 **{f"cpu.{k}": v for k, v in cpu.items()}})
            if notes:
                mlflow.set_tag("sparsify.engine_fallback", "; ".join(notes)[:5000])
            print(f"Benchmarking {name} version {version} on {', '.join(dict.fromkeys(e for e, _ in entrants[0].settings))}"
                  f" in one session: {rounds} alternating rounds at batch sizes {', '.join(map(str, batch_sizes))}...")
            speed = run_session(entrants, rows, iterations=iterations, rounds=rounds, num_cores=num_cores)
            results = speed.results(LABEL)
            reliability = speed.reliability()
            metrics = {"size.onnx_mb": onnx_path.stat().st_size / MB, **speed.load.as_metrics()}
            for key, result in results.items():
                metrics.update(result.as_metrics(key))
            _log_metrics(mv, metrics)
            mlflow.set_tags(reliability.tags())
            run_id = run.info.run_id
    summary = "; ".join(f"{k} {r.latency_ms_median:.2f} ms, {r.items_per_second:.1f} items/s"
                        for k, r in results.items())
    for key, value in {"benchmark_run_id": run_id, "benchmark_summary": f"{summary} ({cpu.get('model')})",
                       "benchmark_at": datetime.now(UTC).isoformat(timespec="seconds"),
                       "benchmark_run_reliable": str(reliability.reliable).lower()}.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    return RegisteredBenchmark(model_uri, name, version, run_id, experiment_id, uri, source, results, reliability,
                               notes)


def find_onnx(model_dir: Path) -> Path:
    """The ONNX file of a downloaded MLflow model: the onnx flavor's, else the only/first *.onnx."""
    from mlflow.models import Model

    try:
        flavor = Model.load(str(model_dir)).flavors.get("onnx")
    except Exception:  # noqa: BLE001 - no MLmodel file: fall back to searching
        flavor = None
    if flavor and (model_dir / flavor.get("data", "model.onnx")).is_file():
        return model_dir / flavor.get("data", "model.onnx")
    found = sorted(model_dir.rglob("*.onnx"), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise UserError(f"the registered model has no ONNX file (looked in {model_dir})")
    return found[0]


def qdq_file(model_dir: Path) -> Path | None:
    """The version's QDQ INT8 twin (the onnx flavor's extra_files/, a pyfunc's artifacts/), if it has one."""
    return next(iter(sorted(model_dir.rglob(QDQ_FILE))), None)


def model_inputs(model_dir: Path, onnx_path: Path, rows: int) -> tuple[list[np.ndarray], str]:
    """Arrays for the graph's inputs: the model's input example if it holds them, else generated."""
    names, specs = graph_inputs(onnx_path)
    example = _input_example(model_dir)
    if isinstance(example, dict) and all(n in example for n in names):
        arrays = [np.asarray(example[n]) for n in names]
        if all(a.dtype.kind in "fiub" and a.ndim == len(specs[n][0]) and len(a) > 0
               for a, n in zip(arrays, names)):
            return [a.astype(specs[n][1], copy=False) for a, n in zip(arrays, names)], "input_example"
    return generate_inputs(onnx_path, rows), "generated"


def _input_example(model_dir: Path) -> object:
    from mlflow.models import Model

    try:
        return Model.load(str(model_dir)).load_input_example(str(model_dir))
    except Exception:  # noqa: BLE001 - no or unreadable example: generate inputs instead
        return None


def graph_inputs(onnx_path: Path) -> tuple[list[str], dict[str, tuple[list[int | None], np.dtype]]]:
    """Input names in order and, per input, (shape with None for symbolic dims, numpy dtype)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names, specs = [], {}
    for value in graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        specs[value.name] = (shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
        names.append(value.name)
    return names, specs


def generate_inputs(onnx_path: Path, rows: int, seed: int = 0) -> list[np.ndarray]:
    """Inputs with the graph's shapes and types: the batch dimension is `rows`, other symbolic dims
    128 (a sequence length); floats are standard normal (normalised images), token ids are
    mid-vocabulary, attention masks ones, token type ids zeros."""
    rng = np.random.default_rng(seed)
    names, specs = graph_inputs(onnx_path)
    out = []
    for name in names:
        dims, dtype = specs[name]
        shape = [rows if i == 0 else (d if d else 128) for i, d in enumerate(dims)]
        lowered = name.lower()
        if dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        elif "mask" in lowered:
            array = np.ones(shape, dtype)
        elif "type" in lowered or dtype.kind == "b":
            array = np.zeros(shape, dtype)
        else:
            array = rng.integers(1000, 2000, size=shape).astype(dtype)
        out.append(array)
    return out


def engine_plan(onnx_path: Path, engine: str, batch_sizes: tuple[int, ...], num_cores: int | None = None,
                qdq: Path | None = None) -> tuple[list[Entrant], list[str]]:
    """The session's one entrant with its (engine, batch size) pairs (see speed_session.plan_session),
    with the notes printed. OpenVINO runs the `qdq` twin where the version has one."""
    wanted = ("deepsparse", "onnxruntime") if engine == "both" else (engine,)
    plan, notes = plan_session({LABEL: onnx_path}, {LABEL: wanted}, batch_sizes, num_cores=num_cores,
                               engine_files={LABEL: {"openvino": qdq}} if qdq else None)
    for name, (usable, why) in (("DeepSparse", deepsparse_status()), ("OpenVINO", openvino_status())):
        if name.lower() in wanted and not usable:
            notes.insert(0, f"{name} unavailable ({why}); ONNX Runtime measured instead")
    for note in notes:
        print(f"note: {note}")
    return plan, notes


def _log_metrics(mv: ModelVersion, metrics: dict[str, float]) -> None:
    """Log to the active run and, in MLflow 3, link the figures to the version's logged model so
    that its page in the UI shows them too."""
    model_id = getattr(mv, "model_id", None)
    if not model_id and str(mv.source or "").startswith("models:/m-"):  # source models:/<logged model id>
        model_id = str(mv.source).removeprefix("models:/")
    if model_id:
        try:
            mlflow.log_metrics(metrics, model_id=model_id)
            return
        except MlflowException:
            pass
    tracking.log_metrics(metrics)
