"""Post-training INT8: the quantize-only reference every training-aware model must beat.

A user can quantize the dense model in minutes, without training. The reference is that model: the
dense baseline with the levels' INT8 scheme (the same sparseml QuantizationModifier as QAT), its
observers calibrated on a few hundred training samples in eval mode, no weight updated. Exported like
the others, it gets the same INT8 file, QDQ twin, checks and benchmark session.

Why not NNCF: its ONNX backend needs onnx >= 1.16 (the island has 1.14), and its OpenVINO backend
collapsed a small ResNet-18 to chance (STACK.md, issue 21); sparseml's modifier runs in the island and
yields exactly the graph form our export, QDQ rewrite and engines already handle.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsify_mlflow.levels import PruningScope, post_training_recipe
from sparsify_mlflow.results import ModelReport
from sparsify_mlflow.usecases.base import DataBundle, UseCase

__all__ = ["CALIBRATION_SAMPLES", "MAX_DROP_PT", "calibrated_int8", "quantize_post_training", "reference_failure"]

CALIBRATION_SAMPLES = 300  # "a few hundred": what post-training quantizers use by default (NNCF: 300)
# A reference that lost more than this (points of the main metric, on the exported files) failed: post-
# training INT8 of a healthy model loses about a point; NNCF collapsed one to chance (0.81 -> 0.10).
MAX_DROP_PT = 5.0


def quantize_post_training(model: nn.Module, use_case: UseCase, data: DataBundle, scope: PruningScope,
                           batch_size: int, seed: int, samples: int = CALIBRATION_SAMPLES) -> nn.Module:
    """A CPU copy of `model` with fake-quantization inserted and calibrated on `samples` training rows.

    The use case's training step is the forward pass; its loss is discarded.
    """
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    batches = min(len(loader), math.ceil(samples / batch_size))
    return calibrated_int8(model, scope, itertools.islice(loader, batches), batches,
                           lambda quantized, batch: use_case.training_step(quantized, batch, torch.device("cpu")))


def calibrated_int8(model: nn.Module, scope: PruningScope, batches: Iterable[Any], count: int,
                    forward: Callable[[nn.Module, Any], Any]) -> nn.Module:
    """A CPU copy of `model` with the levels' INT8 scheme inserted, its observers fed `batches` (`count` of
    them) through `forward(model, batch)`. The structure is applied in train mode (sparseml fuses Conv+BN
    for QAT there, as in training); the calibration runs in eval mode under no_grad, so BatchNorm keeps the
    baseline's statistics and only the observers move."""
    from sparseml.pytorch.optim import ScheduledModifierManager

    quantized = copy.deepcopy(model).cpu().train()
    ScheduledModifierManager.from_yaml(post_training_recipe(scope)).apply_structure(quantized, epoch=0.0)
    quantized.eval()
    with torch.no_grad():
        for batch in tqdm(batches, total=count, desc="INT8-only calibration", unit="batch", leave=False,
                          disable=None):
            forward(quantized, batch)
    return quantized


def reference_failure(dense: ModelReport, reference: ModelReport) -> str | None:
    """Why the built reference must not be compared against, or None: its file is not INT8, or its main
    metric on the exported file fell more than MAX_DROP_PT below the dense file's."""
    if not reference.exported.quantized:
        return "its exported file has no INT8 operator"
    drop = 100 * (dense.onnx_metrics.main - reference.onnx_metrics.main)
    if drop > MAX_DROP_PT:
        name = dense.onnx_metrics.main_name
        return (f"{name} {reference.onnx_metrics.main:.4f} vs the dense model's {dense.onnx_metrics.main:.4f}: "
                f"{drop:.1f} points lost, over the {MAX_DROP_PT:g} a working calibration loses")
    return None
