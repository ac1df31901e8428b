"""Starting distributed training: `--nproc-per-node N` relaunches the command under torchrun, and
each worker rank runs the training stages its leader broadcasts.

`torchrun --nproc-per-node N -m sparsify_mlflow training-aware ...` directly works the same.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify_mlflow.distributed import EXIT_FILE_ENV, Context, receive


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


def serve(ctx: Context) -> int:
    """Worker: train every stage the leader starts, on its shard of the data, until released."""
    from sparsify_mlflow import usecases
    from sparsify_mlflow.checkpoint import Checkpoint
    from sparsify_mlflow.training import train  # torch and sparseml: only a worker needs them

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
            torch.manual_seed(job.stage.seed)  # as the leader's use case did before building its model
            stage = replace(job.stage, desc=f"{job.stage.desc} rank {ctx.rank}", log_dir=Path(logs.name),
                            resume_from=resume)
            train(copy.deepcopy(model), case, data, scope, stage, ctx.device)
    finally:
        logs.cleanup()
    return 0
