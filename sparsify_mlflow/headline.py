"""The names of the few figures people compare runs and models by, the same for every use case.

Runs and MLflow LoggedModels carry ~100 metrics; the headline (ModelReport.headline) is what a
reader looks for first: what the model scores on the file that ships (`metric`), how much it lost
(`metric_drop_pt`), how sparse and small it is (`sparsity`, `size_mb`), whether it is INT8 (`int8`)
and how much faster it runs than the dense model on the same engine (`speedup_bs1`, `speedup_bs<N>`),
than the fastest dense deployment (`speedup_vs_best_dense_bs<N>`) and than the dense model quantized
post-training, INT8 alone (`speedup_vs_int8_only_bs<N>`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsify_mlflow.levels import RecipePlan

MB = 1_000_000  # size_mb is in megabytes (the console's tables say MiB where they use 2**20)


def headline_speedup(comparison: dict[str, float], engine: str, batch_size: int) -> tuple[str, float] | None:
    """(engine, ratio) of the same-engine speedup at `batch_size`: the deploy engine's, else ONNX Runtime's
    (where DeepSparse could not compile a file, both models were timed there)."""
    for name in (engine, "onnxruntime"):
        value = comparison.get(f"speedup.{name}.bs{batch_size}")
        if value is not None:
            return name, value
    return None


def model_name(model: str, plan: RecipePlan | None = None, sparsity: float = 0.0, int8: bool = False) -> str:
    """A LoggedModel's name: `resnet18-dense` (no plan), `resnet18-L0_5-s70-int8`, `resnet18-recipe-mine-s80-fp32`.

    The level (or recipe file) says what was asked, `s` the measured sparsity of the exported weights in
    percent and the last part whether the file computes in INT8: the same scheme for every use case.
    MLflow refuses `/ : . % " '` in model names; they become `_` (level 0.5 reads L0_5)."""
    stem = Path(model).stem or model
    if plan is None:
        return _safe(f"{stem}-dense")
    asked = f"L{plan.optim_level:g}" if plan.recipe_file is None else f"recipe-{Path(plan.recipe_file).stem}"
    return _safe(f"{stem}-{asked}-s{round(100 * sparsity)}-{'int8' if int8 else 'fp32'}")


def reference_name(model: str) -> str:
    """The INT8-only reference's LoggedModel name: `resnet18-int8-only`."""
    return _safe(f"{Path(model).stem or model}-int8-only")


def _safe(name: str) -> str:
    return re.sub(r"[/:.%\"']", "_", name)
