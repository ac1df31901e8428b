"""Distributed data-parallel training: launch, process group, and the leader/worker split.

`--nproc-per-node N` re-runs the same command under `torch.distributed.run` (torchrun); running
`torchrun --nproc-per-node N -m sparsify_mlflow training-aware ...` directly works the same.
Rank 0 is the leader: it runs the whole experiment (MLflow, export, benchmarks, registry) as a
single process would. The other ranks are workers: they touch no store and no files; they wait
for training jobs the leader broadcasts at the start of each training stage, train their shard
of every batch under the same recipe, and exit when the leader is done. Gloo on CPU, NCCL on GPU.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

EXIT_FILE_ENV = "SPARSIFY_DDP_EXIT_FILE"  # the leader writes its exit code there (torchrun only says 0/1)


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def leader(self) -> bool:
        return self.rank == 0


@dataclass
class Job:
    """One training stage, as the leader starts it: every worker runs `train` with the same values."""

    cfg: Any                    # ExperimentConfig (the worker builds data and model from it)
    recipe: str
    batch_size: int
    lr: float
    seed: int
    desc: str
    main_metric: str | None
    kwargs: Any                 # TrainKwargs
    resume_path: str | None = None  # the checkpoint the leader resumes from (same host)
    extra: dict[str, Any] = field(default_factory=dict)


_context: Context | None = None
_in_stage = False  # leader: a stage is running on the workers (they wait in its collectives, not for a job)


def current() -> Context | None:
    """The process group of this process, or None in a plain single-process run."""
    return _context


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


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command (without --nproc-per-node) as `nproc` torchrun processes on this host."""
    with tempfile.TemporaryDirectory() as tmp:
        exit_file = Path(tmp) / "exit_code"
        env = os.environ | {EXIT_FILE_ENV: str(exit_file), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "--tee=0", "-m", "sparsify_mlflow", *argv]
        proc = subprocess.Popen(command, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: torchrun forwards it to the workers
            proc.terminate()
            code = proc.wait()
        leader = exit_file.read_text().strip() if exit_file.exists() else ""
        return int(leader) if leader.lstrip("-").isdigit() else code


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
    """Leader: release the workers; everyone leaves the process group."""
    global _context
    if _context is None:
        return
    try:
        if _context.leader and not _in_stage:  # mid-stage (a failure): torchrun stops the workers
            send(None)
    finally:
        dist.destroy_process_group()
        _context = None


def serve(ctx: Context) -> int:
    """Worker: train every stage the leader starts, on its shard of the data, until released."""
    from sparsify_mlflow import usecases
    from sparsify_mlflow.checkpoint import Checkpoint
    from sparsify_mlflow.training import train

    built: tuple[Any, Any, nn.Module, Any] | None = None
    logs = tempfile.TemporaryDirectory(prefix="sparsify-rank-")  # sparseml's modifier log (the leader keeps the real one)
    try:
        while (job := receive()) is not None:
            if built is None:  # after the leader loaded the data (it may write a cache folder)
                case = usecases.resolve(job.cfg.use_case)
                data = case.load_data(job.cfg)
                model = case.build_model(job.cfg, data)
                built = (case, data, model, case.pruning_scope(model))
            case, data, model, scope = built
            resume = Checkpoint.from_file(Path(job.resume_path)) if job.resume_path else None
            torch.manual_seed(job.seed)  # as the leader's use case did before building its model
            train(copy.deepcopy(model), case, data, job.recipe, scope, batch_size=job.batch_size, lr=job.lr,
                  seed=job.seed, device=ctx.device, desc=f"{job.desc} rank {ctx.rank}", log_dir=Path(logs.name),
                  main_metric=job.main_metric, kwargs=job.kwargs, resume_from=resume)
    finally:
        dist.destroy_process_group()
        logs.cleanup()
    return 0


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
