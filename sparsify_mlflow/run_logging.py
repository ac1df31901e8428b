"""What an experiment's runs show beyond metrics: epoch curves, figures, checkpoints, warnings
and notes, each logged to the active MLflow run (experiment.py decides when)."""
from __future__ import annotations

from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from sparsify_mlflow import report, tracking
from sparsify_mlflow.benchmark import BenchmarkResult
from sparsify_mlflow.checkpoint import ARTIFACT_DIR as CHECKPOINT_ARTIFACT_DIR
from sparsify_mlflow.engines import deepsparse_status, unsupported_op_types
from sparsify_mlflow.levels import PruningScope, RecipePlan
from sparsify_mlflow.results import EpochStats, ModelReport
from sparsify_mlflow.training import OomRetry, torch_predictor
from sparsify_mlflow.usecases.base import DataBundle, UseCase


def log_checkpoint(path: Path) -> None:
    """Only the latest checkpoint is kept: each epoch's replaces the last one in the run's artifacts."""
    mlflow.log_artifact(str(path), CHECKPOINT_ARTIFACT_DIR)


def log_oom_retry(retry: OomRetry) -> None:
    print(f"warning: out of memory at batch size {retry.failed_batch_size} ({retry.error}); retrying the stage "
          f"with batch size {retry.next_batch_size} (retry {retry.retry})")
    mlflow.set_tag(f"sparsify.oom_retry.{retry.retry}",
                   f"batch size {retry.failed_batch_size} -> {retry.next_batch_size}: {retry.error}"[:5000])


def supported_ops_warning(path: Path, role: str, benchmarks: dict[str, BenchmarkResult], run_id: str) -> list[str]:
    """A note (and a tag on `run_id`) naming the op types DeepSparse could not take over, when it ran below 100%."""
    fractions = [r.fraction_of_supported_ops for r in benchmarks.values() if r.fraction_of_supported_ops is not None]
    if not fractions or min(fractions) >= 1.0:
        return []
    ops = unsupported_op_types(path)
    listed = ", ".join(f"{op} x{n}" for op, n in ops.items()) or "op types not reported"
    MlflowClient().set_tag(run_id, "sparsify.unsupported_ops", listed[:5000])
    warning = (f"DeepSparse runs only {min(fractions):.0%} of the {role} model's ops in its optimized runtime; "
               f"the rest run on slower fallback paths (unsupported: {listed})")
    print(f"warning: {warning}")
    return [warning]


def log_epoch(stats: EpochStats) -> None:
    tracking.log_metrics({"train.loss": stats.train_loss, "lr": stats.lr, "sparsity.overall": stats.sparsity,
                          "train.step_seconds": stats.step_seconds,
                          **{f"val.{k}": v for k, v in stats.val.values.items()}}, step=stats.epoch)


def log_datasets(data: DataBundle) -> None:
    """The training and validation data as MLflow datasets of the active run: the runs list's Dataset
    column and the run page say what a model saw; the same data gives the same digest (fingerprint)."""
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    path = Path(data.source).expanduser()
    if path.exists():
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(path.resolve()))
        name = path.stem
    else:  # embedded data or a hub dataset: its description
        source, name = CodeDatasetSource({"description": data.source}), data.source.split()[-1]
    for context, split in (("training", data.train), ("validation", data.val)):
        dataset = MetaDataset(source, name=f"{name}-{context}", digest=data.fingerprint[:16])
        try:
            mlflow.log_input(dataset, context=context, tags={"rows": str(len(split))})
        except MlflowException as error:
            # Two runs logging the same new dataset at once: the store looks it up, then inserts it, so the
            # slower one hits the unique key (seen on PostgreSQL). The dataset now exists; the retry links it.
            if "dataset" not in str(error) or "unique" not in str(error).lower():
                raise
            mlflow.log_input(dataset, context=context, tags={"rows": str(len(split))})


def log_data(data: DataBundle) -> None:
    for warning in data.warnings:
        print(f"warning: {warning}")
    if data.skipped:
        mlflow.log_text("\n".join(data.skipped) + "\n", "data/skipped.txt")


def sparsity_rows(per_layer: dict[str, float], scope: PruningScope) -> list[dict[str, object]]:
    return [{"parameter": name, "sparsity": round(value, 4), "pruned": name in scope.prune,
             "kept_dense_because": scope.keep_dense.get(name, "")} for name, value in per_layer.items()]


def log_figures(dense: ModelReport, sparse: ModelReport, plan: RecipePlan, scope: PruningScope,
                 use_case: UseCase) -> None:
    import matplotlib.pyplot as plt

    bars: dict[str, dict[str, float]] = {}
    for side in (dense, sparse):
        for key, result in side.benchmarks.items():
            engine, setting = key.split(".", 1)
            bars.setdefault(setting, {})[f"{side.role} ({engine})"] = result.latency_ms_median
    figures = {
        "figures/sparsity_per_layer.png": report.sparsity_figure(sparse.layer_sparsity, plan.target_sparsity,
                                                                 list(scope.keep_dense)),
        "figures/metric_per_epoch.png": report.history_figure(
            dense.history, sparse.history if sparse is not dense else None, dense.metrics.main_name),
        "figures/latency.png": report.latency_figure(bars),
    }
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        plt.close(fig)


def log_layer_timings(timings: dict[str, dict]) -> None:
    """DeepSparse's per-layer times of the dense and the sparse file at batch size 1: a table and a figure."""
    if not timings:
        return
    import matplotlib.pyplot as plt

    rows = [{"model": role, **{k: v for k, v in layer.items() if k != "kernel"}, **layer["kernel"]}
            for role, analysis in timings.items() for layer in analysis["layers"]]
    tracking.log_rows(rows, "benchmark/layers_bs1.json")
    fig = report.layer_figure(timings)
    mlflow.log_figure(fig, "figures/layer_times.png")
    plt.close(fig)


def log_prediction_figures(use_case: UseCase, data: DataBundle, dense: nn.Module, sparse: nn.Module) -> None:
    """Use cases with a `prediction_figures` hook (detection, segmentation) draw a few validation
    images with the dense and the sparse model's predictions side by side."""
    import matplotlib.pyplot as plt

    cpu = torch.device("cpu")
    predictors = {"dense": torch_predictor(dense, cpu)}
    if sparse is not dense:
        predictors["sparse"] = torch_predictor(sparse, cpu)
    for path, fig in use_case.prediction_figures(predictors, data).items():
        mlflow.log_figure(fig, path)
        plt.close(fig)


def engine_notes() -> list[str]:
    usable, reason = deepsparse_status()
    if usable:
        return []
    mlflow.set_tag("sparsify.engine_fallback", f"onnxruntime ({reason})")
    return [f"DeepSparse unavailable ({reason}); benchmarked with ONNX Runtime instead"]
