"""The one training loop: a sparseml recipe manager driving pruning, QAT and the LR schedule."""
from __future__ import annotations

import copy
import gc
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sparsify_mlflow import checkpoint, distributed
from sparsify_mlflow.checkpoint import Checkpoint
from sparsify_mlflow.config import TrainKwargs
from sparsify_mlflow.errors import UserError
from sparsify_mlflow.levels import PruningScope
from sparsify_mlflow.results import EpochStats, epoch_stats_from_dict
from sparsify_mlflow.usecases.base import DataBundle, Predictor, UseCase

OOM_RETRIES = 3  # halvings of the batch size after an out-of-memory error, per training stage
# Rehearse the step-down without a small GPU: batches larger than this request an impossible
# allocation, so the allocator fails for real (tests set it; users never need to).
SIMULATED_MEMORY_ENV = "SPARSIFY_OOM_ABOVE_BATCH_SIZE"


class OutOfMemory(UserError):
    """Training ran out of memory even at the smallest batch size tried."""

    exit_code = 1


@dataclass(frozen=True)
class OomRetry:
    """One step-down: the batch size that failed, the one tried next, and the error."""

    retry: int            # 1-based
    failed_batch_size: int
    next_batch_size: int
    error: str


@dataclass
class TrainResult:
    history: list[EpochStats]
    seconds: float
    steps_per_epoch: int
    batch_size: int = 0                                    # the one that fitted in memory
    oom_retries: list[OomRetry] = field(default_factory=list)


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


def with_layer_costs(model: nn.Module, scope: PruningScope, sample: list[np.ndarray]) -> PruningScope:
    """The scope with each pruned weight's size and multiply-accumulates per row of `sample` (the model's
    inputs, as use cases' sample_inputs give them), counted on one forward pass of the first row: a conv's
    weights run once per output pixel, a linear's once per token. What the per-layer allocations
    (levels.allocate_layers) need; the model is left as it was."""
    owners = {f"{canonical_param_name(n)}.weight": m for n, m in model.named_modules()
              if isinstance(getattr(m, "weight", None), torch.Tensor)}
    wanted = {name: owners[name] for name in scope.prune if name in owners}
    macs: dict[str, int] = {}

    def counter(name: str, module: nn.Module) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
            macs[name] = macs.get(name, 0) + module.weight.numel() * (output[:1].numel() // channels)
        return hook

    handles = [module.register_forward_hook(counter(name, module)) for name, module in wanted.items()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in sample))
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    weights = {name: module.weight.numel() for name, module in wanted.items()}
    return replace(scope, weights=weights, macs=macs)


@dataclass
class Stage:
    """One training stage as the experiment asks for it: the recipe, its settings, where it reports."""

    recipe: str                  # sparseml recipe YAML; its epoch range sets the length
    batch_size: int
    lr: float
    seed: int
    desc: str                    # "dense", "sparse": progress bars and epoch lines
    log_dir: Path                # sparseml's modifier log
    main_metric: str | None = None                 # --eval-metric: the validation figure shown per epoch
    kwargs: TrainKwargs = field(default_factory=TrainKwargs)   # --train-kwargs
    teacher: nn.Module | None = None               # distillation (with a DistillationModifier in the recipe)
    resume_from: Checkpoint | None = None          # continue from this checkpoint's epoch
    checkpoint_path: Path | None = None            # every epoch ends with a checkpoint here...
    checkpoint_key: str = ""                       # ...marked with the configuration that wrote it
    on_epoch: Callable[[EpochStats], None] | None = None
    on_checkpoint: Callable[[Path], None] | None = None


def train(model: nn.Module, use_case: UseCase, data: DataBundle, scope: PruningScope, stage: Stage,
          device: torch.device) -> TrainResult:
    """Train `model` in place under the stage's recipe and finalize it: an epoch step, then an epoch
    close (evaluate, log, checkpoint), per epoch. Under torchrun each rank trains its shard of every
    batch; a plain run is a process group of one (distributed.SingleProcess)."""
    loop = _Loop(model, use_case, data, scope, stage, device)
    for epoch in range(loop.start_epoch, loop.epochs):
        losses, seconds = loop.step_epoch(epoch)
        loop.close_epoch(epoch, losses, seconds)
    return loop.finish()


class _Loop:
    """The state one stage's epochs share: sparseml's manager, the optimizer, the loader, the history.

    With a teacher and a DistillationModifier in the recipe, each step's loss goes through
    `manager.loss_update` with the student's outputs and inputs (the use case's
    `distillation_step`), and sparseml mixes in the teacher's soft targets. Resuming restores the
    checkpoint's weights, optimizer, masks and RNG, and sparseml's schedule restarts at its epoch.
    """

    def __init__(self, model: nn.Module, use_case: UseCase, data: DataBundle, scope: PruningScope, stage: Stage,
                 device: torch.device) -> None:
        from sparseml.pytorch.optim import ScheduledModifierManager

        self.model, self.use_case, self.data, self.scope, self.stage = model, use_case, data, scope, stage
        self.group = distributed.group()
        self.device = self.group.place(device)
        _sparseml_logs_to(stage.log_dir)
        self.generator = seed_everything(stage.seed)
        self.loader, self.sampler = _loader(data, stage.batch_size, self.generator, stage.kwargs, self.group)
        model.to(self.device)
        self.group.share_weights(model)
        resume = stage.resume_from
        if resume is not None:
            checkpoint.restore_weights_early(resume, model)
        self.manager = ScheduledModifierManager.from_yaml(stage.recipe)
        self.epochs = max(1, math.ceil(self.manager.max_epochs))
        self.distill = stage.teacher is not None and bool(self.manager.distillation_modifiers)
        self.raw_optimizer = apply_train_kwargs(use_case.make_optimizer(model, stage.lr), stage.kwargs)
        self.start_epoch = resume.epoch if resume is not None else 0
        self.optimizer = self.manager.modify(model, self.raw_optimizer, steps_per_epoch=len(self.loader),
                                             epoch=float(self.start_epoch),
                                             **({"distillation_teacher": stage.teacher} if self.distill else {}))
        self.history: list[EpochStats] = []
        if resume is not None:
            checkpoint.restore(resume, model=model, optimizer=self.raw_optimizer, manager=self.manager,
                               generator=self.generator)
            self.history = [epoch_stats_from_dict(row, stage.main_metric) for row in resume.history]
            tqdm.write(f"  {stage.desc}: resuming after epoch {self.start_epoch}/{self.epochs} from the checkpoint")
        self.net = self.group.wrap(model)  # forward/backward through DDP when there is a process group
        _simulated_memory_limit(stage.batch_size)
        self.started = time.perf_counter()

    def step_epoch(self, epoch: int) -> tuple[list[float], float]:
        """One pass over this rank's batches: (the step losses, the seconds they took)."""
        started = time.perf_counter()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.model.train()
        losses: list[float] = []
        bar = tqdm(self.loader, desc=f"{self.stage.desc} {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                   disable=None if self.group.leader else True)
        for batch in bar:
            losses.append(self._step(batch))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return losses, time.perf_counter() - started

    def _step(self, batch: object) -> float:
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.distill:
            loss, outputs, inputs = self.use_case.distillation_step(self.net, batch, self.device)
            loss = self.manager.loss_update(loss, self.model, optimizer, optimizer.wrapped_epoch,
                                            optimizer.wrapped_steps_per_epoch,
                                            student_outputs=outputs, student_inputs=inputs)
        else:
            loss = self.use_case.training_step(self.net, batch, self.device)
        loss.backward()
        if self.stage.kwargs.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.stage.kwargs.grad_clip)
        optimizer.step()
        self.net = self.group.rewrap(self.net)  # QAT's start rebuilt modules inside a DDP wrapper
        return float(loss)

    def close_epoch(self, epoch: int, losses: list[float], step_seconds: float) -> None:
        """The leader evaluates, reports, logs and checkpoints the epoch; the workers only check in."""
        epoch_started = time.perf_counter() - step_seconds
        train_loss = self.group.mean(float(np.mean(losses)))
        self.group.check_weights(self.model, epoch + 1)
        if not self.group.leader:
            return
        stage = self.stage
        lr_now = float(self.optimizer.param_groups[0]["lr"])
        val = self.use_case.evaluate(torch_predictor(self.model, self.device), self.data, stage.batch_size
                                     ).with_main(stage.main_metric)
        stats = EpochStats(epoch=epoch + 1, train_loss=train_loss, val=val, lr=lr_now,
                           sparsity=scope_sparsity(self.model, self.scope)[0],
                           seconds=time.perf_counter() - epoch_started,
                           step_seconds=step_seconds / max(1, len(losses)))
        self.history.append(stats)
        tqdm.write(f"  {stage.desc} epoch {stats.epoch}/{self.epochs}: loss {stats.train_loss:.4f}  "
                   f"{val.main_name} {val.main:.4f}  sparsity {stats.sparsity:.3f}  lr {lr_now:.2e}  "
                   f"({stats.seconds:.1f}s)")
        if stage.on_epoch is not None:
            stage.on_epoch(stats)
        if stage.checkpoint_path is not None:
            checkpoint.save(stage.checkpoint_path, epoch=epoch + 1, batch_size=stage.batch_size, model=self.model,
                            optimizer=self.raw_optimizer, manager=self.manager, generator=self.generator,
                            history=self.history, key=stage.checkpoint_key)
            if stage.on_checkpoint is not None:
                stage.on_checkpoint(stage.checkpoint_path)

    def finish(self) -> TrainResult:
        self.manager.finalize(self.model)
        self.group.stage_finished()
        self.model.eval()
        if self.stage.teacher is not None:
            self.stage.teacher.cpu()  # sparseml moved it next to the inputs
        return TrainResult(self.history, time.perf_counter() - self.started, len(self.loader), self.stage.batch_size)


def _loader(data: DataBundle, batch_size: int, generator: torch.Generator, kwargs: TrainKwargs,
            group: distributed.Context | distributed.SingleProcess
            ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.Sampler | None]:
    """Shuffled training batches; under DDP each rank takes its shard and its part of each batch."""
    workers = kwargs.num_workers if kwargs.num_workers is not None else (0 if len(data.train) < 5000 else 2)
    sampler = group.sampler(data.train, int(generator.initial_seed()))
    per_rank = group.per_rank(batch_size)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=per_rank, shuffle=sampler is None, sampler=sampler,
        drop_last=len(sampler if sampler is not None else data.train) > per_rank,
        generator=generator, num_workers=workers,
    )
    return loader, sampler


def train_stepping_down(model: nn.Module, use_case: UseCase, data: DataBundle, scope: PruningScope, stage: Stage,
                        device: torch.device, on_retry: Callable[[OomRetry], None] | None = None
                        ) -> tuple[nn.Module, TrainResult]:
    """`train` that survives out-of-memory errors: the stage restarts from the untouched model
    with half the batch size, at most OOM_RETRIES times; after the last it raises OutOfMemory.

    Returns the trained model (a fresh copy when a retry happened: sparseml modified the failed
    one in place) and the result, whose `oom_retries` say what happened.
    """
    if distributed.current() is not None:  # every rank must train the same batch size: no step-down
        return model, train(model, use_case, data, scope, stage, device)
    pristine = copy.deepcopy(model).cpu()
    retries: list[OomRetry] = []
    while True:
        try:
            result = train(model, use_case, data, scope, stage, device)
            result.oom_retries = retries
            return model, result
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(exc):
                raise
            error = error_line(exc)
        model.cpu()  # the failed attempt leaves the device (the caller may still hold it)
        _release_memory()
        batch_size = stage.batch_size
        tried = " -> ".join(str(r.failed_batch_size) for r in retries)
        if len(retries) == OOM_RETRIES or batch_size == 1:
            raise OutOfMemory(f"out of memory training at batch size {batch_size} after {len(retries)} "
                              f"step-down(s) ({tried + ' -> ' if tried else ''}{batch_size}): {error}; "
                              f"lower --batch-size or the input size, or use a device with more memory")
        retries.append(OomRetry(len(retries) + 1, batch_size, batch_size // 2, error))
        if on_retry is not None:
            on_retry(retries[-1])
        stage = replace(stage, batch_size=batch_size // 2)
        model = copy.deepcopy(pristine)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or an allocator RuntimeError (CPU: "can't allocate memory")."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def error_line(exc: BaseException) -> str:
    """One line for an error: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sparseml_logs_to(log_dir: Path) -> None:
    """Point sparseml's modifier log file at this run's logs/ (it defaults to ./sparse_logs).

    sparseml opens that file once per process, so without dropping its handler every later
    training in the same process (sweep levels, tests) would write into the first run's folder.
    """
    os.environ.update(NM_TEST_MODE="1", NM_TEST_LOG_DIR=str(log_dir))
    logger = logging.getLogger("sparseml.pytorch.utils.logger")
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def _simulated_memory_limit(batch_size: int) -> None:
    """With SPARSIFY_OOM_ABOVE_BATCH_SIZE=N, a batch size above N asks the allocator for 4 EiB."""
    limit = os.environ.get(SIMULATED_MEMORY_ENV, "").strip()
    if limit and batch_size > int(limit):
        torch.empty(2**62, dtype=torch.uint8)


def apply_train_kwargs(optimizer: torch.optim.Optimizer, kwargs: TrainKwargs) -> torch.optim.Optimizer:
    """Apply --train-kwargs to the use case's optimizer (groups without decay keep none)."""
    for group in optimizer.param_groups:
        if kwargs.weight_decay is not None and group.get("weight_decay", 0) > 0:
            group["weight_decay"] = kwargs.weight_decay
        if kwargs.momentum is not None:
            if "momentum" in group:
                group["momentum"] = kwargs.momentum
            elif "betas" in group:
                group["betas"] = (kwargs.momentum, group["betas"][1])
    return optimizer
