"""Worker side of the training-cost section: step times per recipe phase vs a plain PyTorch loop.

Three kinds of run, each in its own process (so peak RSS is its own):
  plain   a plain PyTorch loop: same model, data loader, optimizer and loss, no sparseml;
  dense   the project's training loop (training.train) under the level-0 recipe (dense phase);
  sparse  training.train under an optim-level recipe: pruning ramp, stabilisation, QAT.
Step time = time between the starts of two consecutive steps of one epoch (data loading, forward,
backward, optimizer step with the recipe's hooks), the same definition in every kind. The last
step of an epoch is left out (its interval would include the per-epoch evaluation).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

NUM_CLASSES = 10


class StepClock:
    """Records step start times and which recipe phase each step belongs to."""

    def __init__(self, steps_per_epoch: int, schedule: Any, sampler: Any) -> None:
        self.spe, self.schedule, self.sampler = steps_per_epoch, schedule, sampler
        self.epoch, self.step_in_epoch = 0, 0
        self.last: tuple[float, str] | None = None
        self.steps: list[dict[str, Any]] = []

    def phase(self, epoch_float: float) -> str:
        s = self.schedule
        if s is None:
            return "plain"
        if s.qat_start is not None and epoch_float >= s.qat_start:
            return "qat"
        if s.prune_end is not None and s.prune_start is not None:
            return "pruning" if s.prune_start <= epoch_float < s.prune_end else "stabilisation"
        return "dense"

    def tick(self) -> None:
        now = time.perf_counter()
        phase = self.phase(self.epoch + self.step_in_epoch / self.spe)
        if self.last is not None:
            self.steps.append({"phase": self.last[1], "seconds": now - self.last[0], "epoch": self.epoch})
        if self.sampler.label != phase:
            self.sampler.mark(phase)
        self.last = (now, phase)
        self.step_in_epoch += 1

    def end_epoch(self) -> None:
        self.last = None  # the interval to the next tick would include evaluation
        self.epoch += 1
        self.step_in_epoch = 0


class TimedUseCase:
    """The image-classification use case with a clock in training_step (everything else delegated)."""

    def __init__(self, inner: Any, clock: StepClock) -> None:
        self.inner, self.clock = inner, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def training_step(self, model, batch, device):
        self.clock.tick()
        return self.inner.training_step(model, batch, device)


def _data(args: dict[str, Any]):
    import torch

    from sparsify_mlflow.usecases.base import DataBundle

    n = int(args["batch"]) * int(args["steps_per_epoch"])
    size = int(args["image_size"])
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.TensorDataset(torch.randn(n, 3, size, size, generator=g),
                                           torch.randint(0, NUM_CLASSES, (n,), generator=g))
    val = torch.utils.data.TensorDataset(torch.randn(int(args["batch"]), 3, size, size, generator=g),
                                         torch.randint(0, NUM_CLASSES, (int(args["batch"]),), generator=g))
    return DataBundle(train=train, val=val, label_names=[str(i) for i in range(NUM_CLASSES)],
                      fingerprint="generated", source="generated")


def run_trainings(args: dict[str, Any], save) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": []}
    for run in args["runs"]:
        out["runs"].append(run_training(run))
        save(out)
    return out


def run_training(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks.proc import RssSampler, maxrss_mb
    from sparsify_mlflow.levels import plan_recipe, recipe_yaml
    from sparsify_mlflow.training import Stage, train
    from sparsify_mlflow.usecases import resolve
    from sparsify_mlflow.usecases.vision import build_vision_model

    kind = args["kind"]
    use_case = resolve("cv-classification")
    data = _data(args)
    torch.manual_seed(0)
    model, _ = build_vision_model(args["model"], NUM_CLASSES, pretrained=False)
    spe, batch, lr = int(args["steps_per_epoch"]), int(args["batch"]), float(args["lr"])
    with RssSampler(interval=0.02) as sampler:
        rss_ready = sampler.mark("ready")
        start = time.perf_counter()
        if kind == "plain":
            clock = StepClock(spe, None, sampler)
            _plain_loop(model, use_case, data, clock, epochs=int(args["epochs"]), batch=batch, lr=lr,
                        seed=int(args["seed"]))
            schedule = None
        else:
            scope = use_case.pruning_scope(model)
            level = 0.0 if kind == "dense" else float(args["optim_level"])
            plan = plan_recipe(level, int(args["epochs"]), scope, lr)
            schedule = plan.schedule
            clock = StepClock(spe, schedule, sampler)
            stage = Stage(recipe_yaml(plan), batch, lr, int(args["seed"]), kind, Path(args["log_dir"]),
                          on_epoch=lambda _stats: clock.end_epoch())
            train(model, TimedUseCase(use_case, clock), data, scope, stage, torch.device("cpu"))
        seconds = time.perf_counter() - start
        sampler.mark("end")
    run_peak = max(v for k, v in sampler.peak_by_label.items() if k != "start")
    phases: dict[str, dict[str, Any]] = {}
    for step in clock.steps:
        phases.setdefault(step["phase"], {"step_seconds": []})["step_seconds"].append(step["seconds"])
    for name, info in phases.items():
        values = np.asarray(info["step_seconds"])
        info.update(median_seconds=float(np.median(values)), mean_seconds=float(values.mean()),
                    steps=len(values), peak_rss_mb=sampler.peak_by_label.get(name))
    return {
        "kind": kind, "seconds": seconds, "rss_ready_mb": rss_ready, "peak_rss_mb": run_peak,
        "maxrss_mb": maxrss_mb(),
        "phases": phases, "threads": torch.get_num_threads(),
        "schedule": None if schedule is None else vars(schedule),
    }


def _plain_loop(model, use_case, data, clock: StepClock, *, epochs: int, batch: int, lr: float, seed: int) -> None:
    """training.train without the recipe manager: same loader, optimizer, loss and step order."""
    import torch

    from sparsify_mlflow.training import seed_everything

    generator = seed_everything(seed)
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch, shuffle=True,
                                         drop_last=len(data.train) > batch, generator=generator)
    optimizer = use_case.make_optimizer(model, lr)
    device = torch.device("cpu")
    for _ in range(epochs):
        model.train()
        for b in loader:
            clock.tick()
            optimizer.zero_grad(set_to_none=True)
            loss = use_case.training_step(model, b, device)
            loss.backward()
            optimizer.step()
            float(loss)
        clock.end_epoch()
