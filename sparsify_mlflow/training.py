"""The one training loop: a sparseml recipe manager driving pruning, QAT and the LR schedule."""
from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sparsify_mlflow.levels import PruningScope
from sparsify_mlflow.usecases.base import DataBundle, Metrics, Predictor, UseCase


@dataclass
class EpochStats:
    epoch: int                 # 1-based
    train_loss: float
    val: Metrics
    lr: float
    sparsity: float            # over the pruning scope
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochStats]
    seconds: float
    steps_per_epoch: int


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def torch_predictor(model: nn.Module, device: torch.device) -> Predictor:
    """Wrap a PyTorch model in the numpy-in/numpy-out interface the ONNX engines also implement."""

    @torch.no_grad()
    def predict(inputs: list[np.ndarray]) -> list[np.ndarray]:
        model.eval()
        out = model(*(torch.from_numpy(x).to(device) for x in inputs))
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]

    return predict


def canonical_param_name(name: str) -> str:
    """The parameter's name before QAT: sparseml wraps quantized modules (`conv.weight` becomes
    `conv.module.weight`), DDP prefixes `module.`; scopes and reports use the original names."""
    return re.sub(r"\.module(?=\.)", "", name.removeprefix("module."))


def scope_sparsity(model: nn.Module, scope: PruningScope) -> tuple[float, dict[str, float]]:
    """Fraction of exact zeros over the pruned parameters, overall and per parameter.

    Kept-dense parameters are reported too (per parameter) so a user sees they stayed dense.
    """
    params = {canonical_param_name(n): p for n, p in model.named_parameters()}
    per_param: dict[str, float] = {}
    zeros = total = 0
    for name in (*scope.prune, *scope.keep_dense):
        tensor = params.get(name)
        if tensor is None:
            continue
        n_zero = int((tensor.detach() == 0).sum())
        per_param[name] = n_zero / tensor.numel()
        if name in scope.prune:
            zeros += n_zero
            total += tensor.numel()
    return (zeros / total if total else 0.0), per_param


def train(
    model: nn.Module,
    use_case: UseCase,
    data: DataBundle,
    recipe: str,
    scope: PruningScope,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    desc: str,
    log_dir: Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train `model` in place under `recipe` (its epoch range sets the length) and finalize it.

    With a `teacher` and a DistillationModifier in the recipe, each step's loss goes through
    `manager.loss_update` with the student's outputs and inputs (the use case's
    `distillation_step`), and sparseml mixes in the teacher's soft targets.
    """
    from sparseml.pytorch.optim import ScheduledModifierManager

    # sparseml writes modifier logs to ./sparse_logs unless in "test mode"; keep them in the run's logs/.
    os.environ.update(NM_TEST_MODE="1", NM_TEST_LOG_DIR=str(log_dir))
    generator = seed_everything(seed)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=batch_size, shuffle=True, drop_last=len(data.train) > batch_size,
        generator=generator, num_workers=0 if len(data.train) < 5000 else 2,
    )
    model.to(device)
    manager = ScheduledModifierManager.from_yaml(recipe)
    epochs = max(1, math.ceil(manager.max_epochs))
    distill = teacher is not None and bool(manager.distillation_modifiers)
    optimizer = manager.modify(model, use_case.make_optimizer(model, lr), steps_per_epoch=len(loader),
                               **({"distillation_teacher": teacher} if distill else {}))
    history: list[EpochStats] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", unit="batch", leave=False, disable=None)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            if distill:
                loss, outputs, inputs = use_case.distillation_step(model, batch, device)
                loss = manager.loss_update(loss, model, optimizer, optimizer.wrapped_epoch,
                                           optimizer.wrapped_steps_per_epoch,
                                           student_outputs=outputs, student_inputs=inputs)
            else:
                loss = use_case.training_step(model, batch, device)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        lr_now = float(optimizer.param_groups[0]["lr"])
        val = use_case.evaluate(torch_predictor(model, device), data, batch_size)
        stats = EpochStats(
            epoch=epoch + 1, train_loss=float(np.mean(losses)), val=val, lr=lr_now,
            sparsity=scope_sparsity(model, scope)[0], seconds=time.perf_counter() - epoch_start,
        )
        history.append(stats)
        tqdm.write(
            f"  {desc} epoch {stats.epoch}/{epochs}: loss {stats.train_loss:.4f}  "
            f"{val.main_name} {val.main:.4f}  sparsity {stats.sparsity:.3f}  lr {lr_now:.2e}  "
            f"({stats.seconds:.1f}s)"
        )
        if on_epoch is not None:
            on_epoch(stats)
    manager.finalize(model)
    model.eval()
    if teacher is not None:
        teacher.cpu()  # sparseml moved it next to the inputs
    return TrainResult(history, time.perf_counter() - start, len(loader))
