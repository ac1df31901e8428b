"""The values an experiment hands from stage to stage and to its readers (logging, deployment,
summary, sweep): plain dataclasses in a leaf module, so that no reader imports the experiment."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sparsify_mlflow.benchmark import BenchmarkResult
from sparsify_mlflow.export import ExportedModel
from sparsify_mlflow.headline import MB, headline_speedup
from sparsify_mlflow.speed_session import Reliability
from sparsify_mlflow.usecases.base import Metrics

if TYPE_CHECKING:
    from sparsify_mlflow.config import ExperimentConfig
    from sparsify_mlflow.levels import RecipePlan
    from sparsify_mlflow.registry import LoggedModel, RegisteredVersion


@dataclass
class EpochStats:
    epoch: int                 # 1-based
    train_loss: float
    val: Metrics
    lr: float
    sparsity: float            # over the pruning scope
    seconds: float
    step_seconds: float = 0.0  # mean wall time of one optimizer step (forward, backward, step)


def epoch_stats_from_dict(row: dict, main_metric: str | None) -> EpochStats:
    """An EpochStats back from its asdict() form (history.json, checkpoints)."""
    return EpochStats(**(row | {"val": Metrics(**row["val"]).with_main(main_metric)}))


@dataclass
class Qdq:
    """The canonical QDQ INT8 file written beside an INT8 export (qdq.export_qdq), and its check."""

    path: Path
    metrics: Metrics                       # validation split, on `engine`
    engine: str                            # OpenVINO where it compiles the file, else ONNX Runtime


@dataclass
class ModelReport:
    """One side of the comparison (dense baseline or training-aware model), as logged."""

    role: str
    run_id: str
    metrics: Metrics                       # PyTorch, validation split
    onnx_metrics: Metrics                  # the exported file on the deployment engine
    onnx_engine: str
    exported: ExportedModel
    benchmarks: dict[str, BenchmarkResult]  # "deepsparse.bs1", "onnxruntime.bs16", ...
    history: list[EpochStats]
    layer_sparsity: dict[str, float]
    sparsity: float                        # over the pruned layers, PyTorch
    train_seconds: float
    reused_from_run: str | None = None
    qdq: Qdq | None = None                 # the QDQ twin of an INT8 export (what OpenVINO runs)
    notes: list[str] = field(default_factory=list)
    logged_model: LoggedModel | None = None  # the file as an MLflow LoggedModel, once logged

    def flat_metrics(self) -> dict[str, float]:
        """The same names on child runs (bare) and on the parent (prefixed dense./sparse.)."""
        out = {"main": self.metrics.main, **self.metrics.values}
        out.update({f"onnx.{k}": v for k, v in self.onnx_metrics.values.items()})
        if self.qdq is not None:
            out.update({f"onnx_qdq.{k}": v for k, v in self.qdq.metrics.values.items()})
            out["size.onnx_qdq_mb"] = self.qdq.path.stat().st_size / MB
        out.update({
            "sparsity.pruned_layers": self.sparsity,
            "sparsity.exported": self.exported.weight_sparsity,
            "size.onnx_mb": self.exported.size_bytes / MB,
            "size.onnx_gzip_mb": self.exported.gzip_size_bytes / MB,
            "train_seconds": self.train_seconds,
        })
        for key, result in self.benchmarks.items():
            out.update(result.as_metrics(key))
        return out

    def headline(self, comparison: dict[str, float] | None, engine: str, batch_size: int) -> dict[str, float]:
        """The headline figures (sparsify_mlflow.headline). `comparison` is this model's comparison with the
        dense one; None for the dense model itself (no drop, speedup 1 by definition). Latency and throughput
        come from the engine whose speedup is the headline, so they describe the same measurement."""
        # in the order the Models page shows them (first logged, first shown; it renders the columns in view):
        # metric, drop and the same-engine speedups first, then what the file is, then the other references
        out = {
            "metric": self.onnx_metrics.main,  # the use case's main metric, on the exported file
            "metric_drop_pt": 0.0 if comparison is None else comparison["main_drop"],
        }
        more: dict[str, float] = {}
        for batch in (1, batch_size):
            found = (engine, 1.0) if comparison is None else headline_speedup(comparison, engine, batch)
            if found is None:
                continue
            out[f"speedup_bs{batch}"] = found[1]
            best = 1.0 if comparison is None else comparison.get(f"speedup_vs_best_dense.bs{batch}")
            if best is not None:
                more[f"speedup_vs_best_dense_bs{batch}"] = best
            over_int8 = None if comparison is None else comparison.get(f"speedup_vs_int8_only.bs{batch}")
            if over_int8 is not None:
                more[f"speedup_vs_int8_only_bs{batch}"] = over_int8
            result = self.benchmarks.get(f"{found[0]}.bs{batch}")
            if result is not None:
                more[f"latency_ms_bs{batch}" if batch == 1 else f"throughput_bs{batch}"] = (
                    result.latency_ms_median if batch == 1 else result.items_per_second)
        out |= {"sparsity": self.exported.weight_sparsity, "size_mb": self.exported.size_bytes / MB,
                "int8": float(self.exported.quantized)}
        return out | more

    def engine_figures(self) -> dict[str, float]:
        """Latency and throughput of the file on each engine and batch size it was timed at."""
        out: dict[str, float] = {}
        for key, result in self.benchmarks.items():
            out[f"{key}.latency_ms"] = result.latency_ms_median
            out[f"{key}.items_per_second"] = result.items_per_second
        return out


@dataclass
class Int8Only:
    """The post-training INT8 reference (post_training.py): the dense model quantized without training.

    `failure` says why it is not compared against (it could not be built, is not INT8, or lost more than
    INT8_ONLY_MAX_DROP_PT); `report` is kept when it was built, so its figures are still shown."""

    report: ModelReport | None
    failure: str | None = None
    linked: bool = False  # its LoggedModel's metrics are linked (once: a sweep concludes many levels)

    @property
    def usable(self) -> ModelReport | None:
        return self.report if self.failure is None else None


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    plan: RecipePlan
    dense: ModelReport
    sparse: ModelReport
    comparison: dict[str, float]
    experiment_dir: Path
    deployment_dir: Path
    reliability: Reliability
    registered: RegisteredVersion | None = None
    notes: list[str] = field(default_factory=list)
    int8_only: Int8Only | None = None   # None: not asked for (--no-int8-reference, level 0)
