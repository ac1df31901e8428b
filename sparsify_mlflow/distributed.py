"""Distributed data-parallel training: the process group and what the training loop asks of it.

Rank 0 is the leader: it runs the whole experiment (MLflow, export, benchmarks, registry) as a
single process would. The other ranks are workers (launcher.serve): they touch no store and no
files; they wait for training jobs the leader broadcasts here at the start of each training
stage, train their shard of every batch under the same recipe, and exit when the leader is done.
Gloo on CPU, NCCL on GPU. This module knows nothing of training; launcher.py starts the processes.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

EXIT_FILE_ENV = "SPARSIFY_DDP_EXIT_FILE"  # the leader writes its exit code there (torchrun only says 0/1)


@dataclass(frozen=True)
class Context:
    """This process in a torchrun process group: what the training loop asks of DDP."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        return self.device

    def sampler(self, dataset: Any, seed: int) -> torch.utils.data.Sampler:
        """This rank's shard of the training set, reshuffled each epoch (set_epoch)."""
        return torch.utils.data.DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                                   shuffle=True, seed=seed)

    def per_rank(self, batch_size: int) -> int:
        """Each rank takes batch_size // world of each batch: the global batch and the steps per epoch,
        so the recipe's schedule, stay those of one process."""
        return max(1, batch_size // self.world_size)

    def share_weights(self, model: nn.Module) -> None:
        sync_from_leader(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        return wrap(model, self)

    def rewrap(self, net: nn.Module) -> nn.Module:
        return rewrap_if_changed(net, self)  # type: ignore[arg-type]

    def mean(self, value: float) -> float:
        return mean(value, self)

    def check_weights(self, model: nn.Module, epoch: int) -> None:
        if not same_weights_everywhere(model, self):
            raise RuntimeError(f"rank {self.rank}: the ranks' weights diverged in epoch {epoch}")

    def stage_finished(self) -> None:
        if self.leader:
            stage_finished()


class SingleProcess:
    """A plain run's "process group": every collective is a no-op, so the loop reads the same with DDP."""

    rank, world_size, leader = 0, 1, True

    def place(self, device: torch.device) -> torch.device:
        return device

    def sampler(self, dataset: Any, seed: int) -> None:
        return None

    def per_rank(self, batch_size: int) -> int:
        return batch_size

    def share_weights(self, model: nn.Module) -> None:
        pass

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def rewrap(self, net: nn.Module) -> nn.Module:
        return net

    def mean(self, value: float) -> float:
        return value

    def check_weights(self, model: nn.Module, epoch: int) -> None:
        pass

    def stage_finished(self) -> None:
        pass


@dataclass
class Job:
    """One training stage, as the leader starts it: every worker runs `train` with the same values."""

    cfg: Any                    # ExperimentConfig (the worker builds data and model from it)
    stage: Any                  # training.Stage, without what only the leader has (see portable)
    resume_path: str | None = None  # the checkpoint the leader resumes from (same host)


def portable(stage: Any) -> Any:
    """The stage as the workers get it: no callbacks, teacher, checkpoint or log folder of the leader's."""
    return replace(stage, teacher=None, resume_from=None, checkpoint_path=None, on_epoch=None, on_checkpoint=None)


_context: Context | None = None
_in_stage = False  # leader: a stage is running on the workers (they wait in its collectives, not for a job)


def current() -> Context | None:
    """The process group of this process, or None in a plain single-process run."""
    return _context


def group() -> Context | SingleProcess:
    """What the training loop trains in: the process group, or a single process."""
    return _context or SingleProcess()


def init_from_env(device: str = "auto") -> Context | None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); None otherwise."""
    global _context
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if _context is not None:
        return _context
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend)
    torch_device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(torch_device)
    else:  # share the cores: N processes with all-core thread pools fight each other
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    _context = Context(dist.get_rank(), world, local_rank, torch_device)
    return _context


def record_exit(code: int) -> None:
    """The leader's exit code for `launch` (torchrun itself only reports failure as 1)."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and (_context is None or _context.leader):
        Path(path).write_text(str(code))


def send(job: Job | None) -> None:
    """Leader: start a stage on every worker (None: the experiment is over, workers exit)."""
    global _in_stage
    dist.broadcast_object_list([job], src=0)
    _in_stage = job is not None


def stage_finished() -> None:
    """Leader: the stage's collectives are over; the workers wait for the next job again."""
    global _in_stage
    _in_stage = False


def receive() -> Job | None:
    box: list[Job | None] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leader: release the workers (a failed stage needs no release: torchrun stops the workers)."""
    global _context
    if _context is not None and _context.leader and not _in_stage:
        send(None)
    _context = None


def exit_now(code: int) -> None:
    """End a torchrun process without tearing the process group down: gloo's destructor blocked
    forever, holding the GIL, when the other rank had left first (seen in suite runs, on the leader
    and on success). Everything this process wrote is closed; os._exit skips only that teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def sync_from_leader(model: nn.Module) -> None:
    """Give every rank the leader's weights before sparseml computes its first masks from them."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def wrap(model: nn.Module, ctx: Context) -> nn.parallel.DistributedDataParallel:
    """The model as DistributedDataParallel (its weights and buffers broadcast from rank 0)."""
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    ddp._sparsify_tensors = _tensor_ids(model)  # type: ignore[attr-defined]
    return ddp


def rewrap_if_changed(ddp: nn.parallel.DistributedDataParallel, ctx: Context) -> nn.parallel.DistributedDataParallel:
    """sparseml's QAT start fuses modules and adds fake-quant buffers inside the wrapped model; DDP
    only reduces the parameters (and broadcasts the buffers) it saw when built, so build it again.
    Every rank reaches the same step of the same recipe, so all of them rebuild together."""
    changed = torch.tensor([float(_tensor_ids(ddp.module) != ddp._sparsify_tensors)],  # type: ignore[attr-defined]
                           device=ctx.device)
    dist.all_reduce(changed, op=dist.ReduceOp.MAX)  # all ranks rebuild, or none: a lone rebuild hangs
    return wrap(ddp.module, ctx) if changed.item() > 0 else ddp


def _tensor_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}


def mean(value: float, ctx: Context | None) -> float:
    """The mean of a per-rank figure over all ranks (the epoch's training loss)."""
    if ctx is None:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ctx.world_size


def same_weights_everywhere(model: nn.Module, ctx: Context) -> bool:
    """Whether every rank holds the same weights (a cheap checksum), checked after each epoch."""
    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    sums = [torch.zeros(1, dtype=torch.float64, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(sums, torch.tensor([total], dtype=torch.float64, device=ctx.device))
    return all(torch.equal(sums[0], s) for s in sums)
