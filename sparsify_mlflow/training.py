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
from dataclasses import dataclass, field
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
from sparsify_mlflow.usecases.base import DataBundle, Metrics, Predictor, UseCase

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
class EpochStats:
    epoch: int                 # 1-based
    train_loss: float
    val: Metrics
    lr: float
    sparsity: float            # over the pruning scope
    seconds: float
    step_seconds: float = 0.0  # mean wall time of one optimizer step (forward, backward, step)


@dataclass
class TrainResult:
    history: list[EpochStats]
    seconds: float
    steps_per_epoch: int
    batch_size: int = 0                                    # the one that fitted in memory
    oom_retries: list[OomRetry] = field(default_factory=list)


def epoch_stats_from_dict(row: dict, main_metric: str | None) -> EpochStats:
    """An EpochStats back from its asdict() form (history.json, checkpoints)."""
    return EpochStats(**(row | {"val": Metrics(**row["val"]).with_main(main_metric)}))


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
    main_metric: str | None = None,
    kwargs: TrainKwargs = TrainKwargs(),
    checkpoint_path: Path | None = None,
    checkpoint_key: str = "",
    resume_from: Checkpoint | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train `model` in place under `recipe` (its epoch range sets the length) and finalize it.

    With a `teacher` and a DistillationModifier in the recipe, each step's loss goes through
    `manager.loss_update` with the student's outputs and inputs (the use case's
    `distillation_step`), and sparseml mixes in the teacher's soft targets. `main_metric`
    (--eval-metric) names the validation figure shown per epoch; `kwargs` are --train-kwargs.
    With `checkpoint_path`, every epoch ends with a checkpoint there, marked `checkpoint_key` (then
    `on_checkpoint(path)`);
    `resume_from` continues a stage from one: sparseml's schedule restarts at its epoch.
    """
    from sparseml.pytorch.optim import ScheduledModifierManager

    ctx = distributed.current()  # under torchrun: this rank's share of each batch, same recipe
    leader = ctx is None or ctx.leader
    device = ctx.device if ctx is not None else device
    _sparseml_logs_to(log_dir)
    generator = seed_everything(seed)
    loader, sampler = _loader(data, batch_size, generator, kwargs, ctx)
    model.to(device)
    if ctx is not None:
        distributed.sync_from_leader(model)
    if resume_from is not None:
        checkpoint.restore_weights_early(resume_from, model)
    manager = ScheduledModifierManager.from_yaml(recipe)
    epochs = max(1, math.ceil(manager.max_epochs))
    distill = teacher is not None and bool(manager.distillation_modifiers)
    raw_optimizer = apply_train_kwargs(use_case.make_optimizer(model, lr), kwargs)
    start_epoch = resume_from.epoch if resume_from is not None else 0
    optimizer = manager.modify(model, raw_optimizer, steps_per_epoch=len(loader), epoch=float(start_epoch),
                               **({"distillation_teacher": teacher} if distill else {}))
    history: list[EpochStats] = []
    if resume_from is not None:
        checkpoint.restore(resume_from, model=model, optimizer=raw_optimizer, manager=manager, generator=generator)
        history = [epoch_stats_from_dict(row, main_metric) for row in resume_from.history]
        tqdm.write(f"  {desc}: resuming after epoch {start_epoch}/{epochs} from the checkpoint")
    net = distributed.wrap(model, ctx) if ctx is not None else model  # forward/backward through DDP
    _simulated_memory_limit(batch_size)
    start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=None if leader else True)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            if distill:
                loss, outputs, inputs = use_case.distillation_step(net, batch, device)
                loss = manager.loss_update(loss, model, optimizer, optimizer.wrapped_epoch,
                                           optimizer.wrapped_steps_per_epoch,
                                           student_outputs=outputs, student_inputs=inputs)
            else:
                loss = use_case.training_step(net, batch, device)
            loss.backward()
            if kwargs.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), kwargs.grad_clip)
            optimizer.step()
            if ctx is not None:  # QAT's start rebuilt modules inside the wrapper
                net = distributed.rewrap_if_changed(net, ctx)
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_seconds = time.perf_counter() - epoch_start
        train_loss = distributed.mean(float(np.mean(losses)), ctx)
        if ctx is not None and not distributed.same_weights_everywhere(model, ctx):
            raise RuntimeError(f"rank {ctx.rank}: the ranks' weights diverged in epoch {epoch + 1}")
        if not leader:
            continue  # the leader evaluates, logs and checkpoints
        lr_now = float(optimizer.param_groups[0]["lr"])
        val = use_case.evaluate(torch_predictor(model, device), data, batch_size).with_main(main_metric)
        stats = EpochStats(
            epoch=epoch + 1, train_loss=train_loss, val=val, lr=lr_now,
            sparsity=scope_sparsity(model, scope)[0], seconds=time.perf_counter() - epoch_start,
            step_seconds=train_seconds / max(1, len(losses)),
        )
        history.append(stats)
        tqdm.write(
            f"  {desc} epoch {stats.epoch}/{epochs}: loss {stats.train_loss:.4f}  "
            f"{val.main_name} {val.main:.4f}  sparsity {stats.sparsity:.3f}  lr {lr_now:.2e}  "
            f"({stats.seconds:.1f}s)"
        )
        if on_epoch is not None:
            on_epoch(stats)
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, epoch=epoch + 1, batch_size=batch_size, model=model,
                            optimizer=raw_optimizer, manager=manager, generator=generator, history=history,
                            key=checkpoint_key)
            if on_checkpoint is not None:
                on_checkpoint(checkpoint_path)
    manager.finalize(model)
    if ctx is not None and leader:
        distributed.stage_finished()
    model.eval()
    if teacher is not None:
        teacher.cpu()  # sparseml moved it next to the inputs
    return TrainResult(history, time.perf_counter() - start, len(loader), batch_size)


def _loader(data: DataBundle, batch_size: int, generator: torch.Generator, kwargs: TrainKwargs,
            ctx: distributed.Context | None) -> tuple[torch.utils.data.DataLoader, torch.utils.data.Sampler | None]:
    """Shuffled training batches; under DDP each rank takes its shard and batch_size // world of each
    batch, so the global batch, the steps per epoch and so the recipe's schedule stay the same."""
    workers = kwargs.num_workers if kwargs.num_workers is not None else (0 if len(data.train) < 5000 else 2)
    sampler = None
    if ctx is not None:
        sampler = torch.utils.data.DistributedSampler(data.train, num_replicas=ctx.world_size, rank=ctx.rank,
                                                      shuffle=True, seed=int(generator.initial_seed()))
        batch_size = max(1, batch_size // ctx.world_size)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=len(sampler if sampler is not None else data.train) > batch_size,
        generator=generator, num_workers=workers,
    )
    return loader, sampler


def train_stepping_down(model: nn.Module, *args: object, batch_size: int,
                        on_retry: Callable[[OomRetry], None] | None = None, **kwargs: object
                        ) -> tuple[nn.Module, TrainResult]:
    """`train` that survives out-of-memory errors: the stage restarts from the untouched model
    with half the batch size, at most OOM_RETRIES times; after the last it raises OutOfMemory.

    Returns the trained model (a fresh copy when a retry happened: sparseml modified the failed
    one in place) and the result, whose `oom_retries` say what happened.
    """
    if distributed.current() is not None:  # every rank must train the same batch size: no step-down
        result = train(model, *args, batch_size=batch_size, **kwargs)
        return model, result
    pristine = copy.deepcopy(model).cpu()
    retries: list[OomRetry] = []
    while True:
        try:
            result = train(model, *args, batch_size=batch_size, **kwargs)
            result.oom_retries = retries
            return model, result
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(exc):
                raise
            error = _first_line(exc)
        model.cpu()  # the failed attempt leaves the device (the caller may still hold it)
        _release_memory()
        tried = " -> ".join(str(r.failed_batch_size) for r in retries)
        if len(retries) == OOM_RETRIES or batch_size == 1:
            raise OutOfMemory(f"out of memory training at batch size {batch_size} after {len(retries)} "
                              f"step-down(s) ({tried + ' -> ' if tried else ''}{batch_size}): {error}; "
                              f"lower --batch-size or the input size, or use a device with more memory")
        retries.append(OomRetry(len(retries) + 1, batch_size, batch_size // 2, error))
        if on_retry is not None:
            on_retry(retries[-1])
        batch_size //= 2
        model = copy.deepcopy(pristine)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or an allocator RuntimeError (CPU: "can't allocate memory")."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _first_line(exc: BaseException) -> str:
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
