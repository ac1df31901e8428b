"""The values an experiment hands from stage to stage and to its readers (logging, deployment,
summary, sweep): plain dataclasses in a leaf module, so that no reader imports the experiment."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sparsify_mlflow.benchmark import BenchmarkResult
from sparsify_mlflow.export import ExportedModel
from sparsify_mlflow.speed_session import Reliability
from sparsify_mlflow.usecases.base import Metrics

if TYPE_CHECKING:
    from sparsify_mlflow.config import ExperimentConfig
    from sparsify_mlflow.levels import RecipePlan
    from sparsify_mlflow.registry import RegisteredVersion


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

    def flat_metrics(self) -> dict[str, float]:
        """The same names on child runs (bare) and on the parent (prefixed dense./sparse.)."""
        out = {"main": self.metrics.main, **self.metrics.values}
        out.update({f"onnx.{k}": v for k, v in self.onnx_metrics.values.items()})
        if self.qdq is not None:
            out.update({f"onnx_qdq.{k}": v for k, v in self.qdq.metrics.values.items()})
            out["size.onnx_qdq_bytes"] = self.qdq.path.stat().st_size
        out.update({
            "sparsity.pruned_layers": self.sparsity,
            "sparsity.exported": self.exported.weight_sparsity,
            "size.onnx_bytes": self.exported.size_bytes,
            "size.onnx_gzip_bytes": self.exported.gzip_size_bytes,
            "train_seconds": self.train_seconds,
        })
        for key, result in self.benchmarks.items():
            out.update(result.as_metrics(key))
        return out


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
