"""Per-epoch training checkpoints: written atomically, read back to continue a killed stage.

A checkpoint holds what the next epoch needs to be the one it would have been: the model (with
its QAT modules once quantization started), the optimizer, sparseml's modifier state (pruning
masks), the epoch count, the batch size that fitted in memory, the history so far and every RNG
(Python, numpy, torch, the data loader's generator). sparseml's schedule itself is rebuilt from
the recipe at that epoch (`manager.modify(..., epoch=k)`), so it continues where it stopped.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsify_mlflow.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"      # in the stage's training_artifacts/<role>/ folder
ARTIFACT_DIR = "checkpoint"            # in the stage's MLflow run, as checkpoint/checkpoint.pt
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint cannot be read or does not fit the run it should continue."""


@dataclass
class Checkpoint:
    """One stage after `epoch` finished epochs (1-based count: 2 means epochs 1 and 2 are done)."""

    epoch: int
    batch_size: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    manager: dict[str, Any]
    rng: dict[str, Any]
    history: list[dict[str, Any]]       # EpochStats as dicts
    key: str = ""                       # the configuration that wrote it (resume.stage_key); "" if unknown
    source: Path | None = None          # the file it was read from (not saved)

    def to_file(self, path: Path) -> None:
        """Replace `path` atomically: a kill mid-write leaves the previous checkpoint intact."""
        payload = asdict(self) | {"format": FORMAT_VERSION, "history": json.dumps(self.history, default=str)}
        payload.pop("source")
        save_atomically(payload, path)

    @classmethod
    def from_file(cls, path: Path) -> Checkpoint:
        """Load and check the shape of a checkpoint; anything unreadable is a CheckpointError."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - truncated/garbage files raise many types
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"checkpoint {path} is corrupt or not a sparsify-mlflow checkpoint "
                                  f"({type(exc).__name__}: {first})") from None
        keys = {"format", "epoch", "batch_size", "model", "optimizer", "manager", "rng", "history"}
        if not isinstance(payload, dict) or not keys <= set(payload):
            missing = ", ".join(sorted(keys - set(payload))) if isinstance(payload, dict) else "everything"
            raise CheckpointError(f"checkpoint {path} is not a sparsify-mlflow checkpoint (missing {missing})")
        if payload["format"] != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format {payload['format']}, this version reads {FORMAT_VERSION}")
        return cls(epoch=int(payload["epoch"]), batch_size=int(payload["batch_size"]), model=payload["model"],
                   optimizer=payload["optimizer"], manager=payload["manager"], rng=payload["rng"],
                   history=json.loads(payload["history"]), key=str(payload.get("key", "")), source=path)


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state the next epoch draws from (numpy's as plain values: weights_only loads it)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(_to_lists(random.getstate())),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save `obj` next to `path`, then rename it over `path`, with Ctrl-C / SIGTERM held
    until both are done.

    Why hold them: the interrupt's exception, raised inside torch.save, is replaced by the zip
    writer's own error on the way out ("unexpected pos ..."), so a job stopped at that moment
    exited 1 with a traceback instead of 130 with its runs marked KILLED.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with interrupts_deferred():
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are delivered when it ends."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Only the main thread may set handlers, and a handler installed from C (None) cannot be restored.
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    received: list[int] = []
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])  # now under the restored handler


def save(path: Path, *, epoch: int, batch_size: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         manager: Any, generator: torch.Generator, history: list[Any], key: str = "") -> None:
    """Checkpoint a stage after `epoch` finished epochs (the model unwrapped from DDP, on the CPU)."""
    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    Checkpoint(epoch=epoch, batch_size=batch_size,
               model={k: v.detach().cpu() for k, v in module.state_dict().items()},
               optimizer=optimizer.state_dict(), manager=manager.state_dict(), rng=capture_rng(generator),
               history=[asdict(h) for h in history], key=key).to_file(path)


def restore_weights_early(ckpt: Checkpoint, model: torch.nn.Module) -> bool:
    """Before sparseml applies the recipe: load the weights if they still fit the plain model.

    They do when QAT had not started by the checkpoint; sparseml then starts it (if due at this
    epoch) from the trained weights, as the uninterrupted run did. Returns whether they loaded.
    """
    if set(ckpt.model) != set(model.state_dict()):
        return False  # QAT modules in the checkpoint: load after sparseml rebuilt them
    model.load_state_dict(ckpt.model)
    return True


def restore(ckpt: Checkpoint, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, manager: Any,
            generator: torch.Generator) -> None:
    """Load a checkpoint into a stage whose manager was already applied at `ckpt.epoch`.

    The order matters: sparseml must have built the QAT modules (and its masks) first, so the
    model's keys and the modifiers' state have somewhere to go.
    """
    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    try:
        module.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
        manager.load_state_dict(ckpt.manager)
    except (RuntimeError, KeyError, IndexError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the checkpoint at epoch {ckpt.epoch} does not fit this model/recipe: {first}") from None
    restore_rng(ckpt.rng, generator)
