"""The one interface behind which use cases differ.

Everything else (recipes, training loop, export, benchmark, MLflow) is shared and calls only this.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sparsify_mlflow.options import NoOptions

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from sparsify_mlflow.config import ExperimentConfig
    from sparsify_mlflow.levels import PruningScope

# A batch of model inputs as numpy arrays (one per ONNX input) -> the model's outputs.
# The same evaluation code serves PyTorch and the exported ONNX model through it.
Predictor = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class DataBundle:
    """Train/validation splits plus what must travel with the model (labels, preprocessing)."""

    train: Dataset
    val: Dataset
    label_names: list[str]
    fingerprint: str                      # content hash: same data -> same fingerprint
    source: str                           # where it came from (path or description)
    info: dict[str, Any] = field(default_factory=dict)        # counts etc., logged as params
    preprocessing: dict[str, Any] = field(default_factory=dict)  # exported with the model
    warnings: list[str] = field(default_factory=list)         # shown to the user and logged
    skipped: list[str] = field(default_factory=list)          # "file: reason" of skipped inputs, logged


@dataclass
class Metrics:
    """A use case's evaluation: `main` drives summaries, sweeps and promotion gates."""

    main_name: str
    values: dict[str, float]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # e.g. per-class rows

    @property
    def main(self) -> float:
        return self.values[self.main_name]

    def with_main(self, name: str | None) -> Metrics:
        """The same figures with `name` (--eval-metric) as the main one; None keeps the use case's."""
        if name is None or name == self.main_name:
            return self
        if name not in self.values:
            raise KeyError(f"metric {name!r} was not computed; have: {', '.join(self.values)}")
        return replace(self, main_name=name)


# --eval-metric choices of single-label classifiers: Sparsify's names -> the metrics logged.
CLASSIFICATION_EVAL_METRICS = {"accuracy": "accuracy", "f1": "f1_macro", "recall": "recall_macro",
                               "precision": "precision_macro"}


def collect_predictions(predict: Predictor, batches: Iterator[tuple[list[np.ndarray], Any]]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `predict` over (inputs, targets) batches: (first outputs as float, targets as long)."""
    import torch

    outputs, targets = [], []
    for inputs, labels in batches:
        outputs.append(predict(inputs)[0])
        targets.append(labels)
    return torch.from_numpy(np.concatenate(outputs)).float(), torch.from_numpy(np.concatenate(targets)).long()


def classification_metrics(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 / recall / precision of single-label predictions.

    Macro averages skip classes absent from validation (they would count as 0).
    """
    import torch
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    present = torch.bincount(target, minlength=num_classes) > 0
    values = {"accuracy": float(multiclass_accuracy(preds, target, num_classes=num_classes, average="micro"))}
    for name, fn in (("f1", multiclass_f1_score), ("recall", multiclass_recall), ("precision", multiclass_precision)):
        values[f"{name}_macro"] = float(fn(preds, target, num_classes=num_classes, average="none")[present].mean())
    return values


class UseCase:
    """A use case: the one interface behind which use cases differ, every hook declared here.

    A use case subclasses this, sets the class attributes and implements the required hooks (they
    raise NotImplementedError here); the optional ones have the default written below. The registry
    (usecases/__init__.py) creates it with its canonical name.
    """

    default_model: ClassVar[str]
    default_epochs: ClassVar[int]
    default_batch_size: ClassVar[int]
    default_lr: ClassVar[float]
    main_metric: ClassVar[str]                    # what `Metrics.main` names unless --eval-metric picks another
    eval_metrics: ClassVar[dict[str, str]] = {}   # --eval-metric choices -> logged metric ({}: the main one only)
    default_pretrained: ClassVar[bool | None] = None  # None: pretrained weights only for a model the user names
    default_distill: ClassVar[bool] = False       # the dense baseline teaches the sparse model unless --teacher off
    distills: ClassVar[bool] = False              # implements distillation_step and load_teacher
    # how a level's sparsity is spread over the layers unless --recipe-args layer_allocation says
    # (levels.LAYER_ALLOCATIONS); a per-layer one only where it was measured faster for the use case
    default_layer_allocation: ClassVar[str] = "uniform"
    # the pruned model's initial learning rate as a multiple of --lr (levels.choose_lr); above 1 only where
    # it was measured to recover more accuracy for the use case
    pruned_lr_scale: ClassVar[float] = 1.0
    options: ClassVar[type] = NoOptions           # the use case's own options: a dataclass of options.option()s

    def __init__(self, name: str) -> None:
        self.name = name

    # ---- required -------------------------------------------------------------------------------

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        raise NotImplementedError

    def create_model(self, cfg: ExperimentConfig, num_labels: int, pretrained: bool
                     ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model with its head sized to `num_labels`, plus facts to log (arch, weights)."""
        raise NotImplementedError

    def build_model(self, cfg: ExperimentConfig, data: DataBundle) -> torch.nn.Module:
        """create_model for the data's labels and the config's weights choice; facts go to data.info."""
        raise NotImplementedError

    def make_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def training_step(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], Any]]:
        """Validation batches as (model inputs as numpy, targets)."""
        raise NotImplementedError

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        raise NotImplementedError

    def sample_inputs(self, data: DataBundle, n: int) -> list[np.ndarray]:
        """`n` real validation rows per model input, for export, signatures and benchmarks."""
        raise NotImplementedError

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        """ONNX input and output names."""
        raise NotImplementedError

    def pruning_scope(self, model: torch.nn.Module) -> PruningScope:
        raise NotImplementedError

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        """What a user needs beside model.onnx to run it (labels, preprocessing)."""
        raise NotImplementedError

    # ---- optional, with their defaults ----------------------------------------------------------

    def recipe_defaults(self) -> dict[str, Any]:
        """This use case's say in a derived recipe where --recipe-args is silent: levels.plan_recipe's keywords,
        so `training-aware` and `sparsify.run recipe` derive the same recipe."""
        return {"default_allocation": self.default_layer_allocation, "pruned_lr_scale": self.pruned_lr_scale}

    def eval_metric_choices(self) -> dict[str, str]:
        """--eval-metric choices (Sparsify's names) -> the metric they select, as this use case logs it."""
        return dict(self.eval_metrics) or {self.main_metric: self.main_metric}

    def check_options(self, cfg: ExperimentConfig) -> None:
        """Checks that involve several options (ConfigError); each option alone is checked where declared."""

    def distillation_step(self, model: torch.nn.Module, batch: Any, device: torch.device
                          ) -> tuple[torch.Tensor, Any, Any]:
        """(task loss, student outputs, student inputs) of one batch, for sparseml's distillation."""
        raise NotImplementedError(f"{self.name} does not distil")

    def load_teacher(self, name: str, data: DataBundle) -> tuple[torch.nn.Module, dict[str, Any]]:
        """A named --teacher, checked against the data before any training (ModelError if it cannot teach)."""
        raise NotImplementedError(f"{self.name} does not distil")

    def deployment_files(self, data: DataBundle, folder: Path) -> None:
        """Files the deployment folder needs beside model.onnx (e.g. a tokenizer); none by default."""

    def serving_model(self, data: DataBundle, folder: Path) -> dict[str, Any] | None:
        """log_pyfunc's arguments for a model that serves raw inputs; None: the plain ONNX model."""
        return None

    def prediction_figures(self, predictors: dict[str, Predictor], data: DataBundle) -> dict[str, Any]:
        """Figures of a few predictions, dense beside sparse (path in the run -> matplotlib figure)."""
        return {}
