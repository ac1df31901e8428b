"""Latency/throughput of an exported model on one engine, measured the same way for every variant.

Both engines are timed by the same loop (``time.perf_counter`` around ``Engine.run``) on batches
cut from real sample rows, so dense-vs-sparse and DeepSparse-vs-ORT figures are comparable.
DeepSparse's own ``Engine.benchmark`` is not used for that reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .engines import load_engine

__all__ = ["BenchmarkResult", "benchmark", "tile_rows"]

_LOG = logging.getLogger(__name__)
_SETTINGS = {"engine", "batch_size", "num_cores", "iterations", "warmup_iterations"}


@dataclass(frozen=True)
class BenchmarkResult:
    engine: str
    batch_size: int
    num_cores: int
    latency_ms_median: float  # per batch
    latency_ms_mean: float
    latency_ms_std: float
    latency_ms_p90: float
    items_per_second: float  # batch_size / median batch time
    iterations: int
    warmup_iterations: int
    compile_seconds: float  # engine compile / session creation
    fraction_of_supported_ops: float | None  # DeepSparse only

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """The measured figures for ``mlflow.log_metrics``: "<prefix>.<field>". The settings (engine, batch
        size, cores, iteration counts) are not metrics: the key names the first two, params the rest."""
        head = f"{prefix}." if prefix else ""
        return {
            f"{head}{key}": float(value)
            for key, value in asdict(self).items()
            if key not in _SETTINGS and value is not None
        }


def tile_rows(sample_rows: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Cut (or tile, cycling through the rows) each input to exactly ``batch_size`` rows."""
    if not sample_rows:
        raise ValueError("benchmark needs sample rows (one array per model input)")
    n = len(sample_rows[0])
    if n == 0 or any(len(a) != n for a in sample_rows):
        raise ValueError(f"sample rows need the same, non-zero row count per input; got {[len(a) for a in sample_rows]}")
    idx = np.arange(batch_size) % n
    return [np.ascontiguousarray(np.asarray(a)[idx]) for a in sample_rows]


def benchmark(
    path: Path,
    sample_rows: list[np.ndarray],
    *,
    engine: str,
    batch_size: int,
    iterations: int = 50,
    warmup_iterations: int = 10,
    num_cores: int | None = None,
) -> BenchmarkResult:
    """Compile ``path`` on ``engine`` and time ``iterations`` batches after ``warmup_iterations``.

    ``sample_rows`` are real inputs (e.g. validation images), one array per model input with a
    leading row dimension; they are tiled/cut to ``batch_size`` rows, never replaced by noise
    (sparse INT8 kernels can take data-dependent paths, and noise can saturate quantizers).
    """
    if iterations < 1 or warmup_iterations < 0:
        raise ValueError(f"need iterations >= 1 and warmup_iterations >= 0, got {iterations}/{warmup_iterations}")
    batch = tile_rows(sample_rows, batch_size)

    start = time.perf_counter()
    eng = load_engine(Path(path), engine, batch_size, num_cores)
    compile_seconds = time.perf_counter() - start

    label = f"{engine} bs{batch_size}"
    for _ in tqdm(range(warmup_iterations), desc=f"{label} warm-up", leave=False, unit="batch", disable=None):
        eng.run(batch)
    times = np.empty(iterations, dtype=np.float64)
    for i in tqdm(range(iterations), desc=f"{label} benchmark", leave=False, unit="batch", disable=None):
        t0 = time.perf_counter()
        eng.run(batch)
        times[i] = time.perf_counter() - t0

    ms = times * 1000.0
    median_ms = float(np.median(ms))
    if median_ms > 5 * float(ms.min()) and median_ms > 1.0:
        # Seen on a shared 2-core box: DeepSparse on all cores while another process holds one
        # core waits scheduler time slices (batches of ~40 ms instead of ~0.04 ms).
        _LOG.warning(
            "%s: unstable timings (median %.3f ms, best %.3f ms): the CPU looks busy; "
            "benchmark on an idle machine or with fewer num_cores (now %d)",
            label, median_ms, float(ms.min()), eng.num_cores,
        )
    return BenchmarkResult(
        engine=eng.name,
        batch_size=batch_size,
        num_cores=int(eng.num_cores),
        latency_ms_median=median_ms,
        latency_ms_mean=float(np.mean(ms)),
        latency_ms_std=float(np.std(ms)),
        latency_ms_p90=float(np.percentile(ms, 90)),
        items_per_second=batch_size / (median_ms / 1000.0) if median_ms > 0 else float("inf"),
        iterations=iterations,
        warmup_iterations=warmup_iterations,
        compile_seconds=compile_seconds,
        fraction_of_supported_ops=eng.fraction_of_supported_ops,
    )
