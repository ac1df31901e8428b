"""The one interface behind which use cases differ.

Everything else (recipes, training loop, export, benchmark, MLflow) is shared and calls only this.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

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


class UseCase(Protocol):
    name: str
    aliases: tuple[str, ...]
    default_model: str
    default_epochs: int
    default_batch_size: int
    default_lr: float

    def load_data(self, cfg: ExperimentConfig) -> DataBundle: ...

    def create_model(self, cfg: ExperimentConfig, num_labels: int, pretrained: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model with its head sized to `num_labels`, plus facts to log (arch, weights)."""
        ...

    def build_model(self, cfg: ExperimentConfig, data: DataBundle) -> torch.nn.Module:
        """create_model for the data's labels and the config's weights choice; facts go to data.info."""
        ...

    def make_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer: ...

    def training_step(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor: ...

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], Any]]:
        """Validation batches as (model inputs as numpy, targets)."""
        ...

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics: ...

    def sample_inputs(self, data: DataBundle, n: int) -> list[np.ndarray]:
        """`n` real validation rows per model input, for export, signatures and benchmarks."""
        ...

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        """ONNX input and output names."""
        ...

    def pruning_scope(self, model: torch.nn.Module) -> PruningScope: ...

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        """What a user needs beside model.onnx to run it (labels, preprocessing)."""
        ...
