"""Worker side of the engine section: compile every variant once, then time them in rounds.

All variants of one model at one batch size live in one process and are timed round-robin (the
order rotates each round), so a load spike on a shared machine hits every variant alike and the
per-round ratios stay fair. The timing loop is benchmark.benchmark's (perf_counter around
Engine.run on the same tiled rows); compile time is measured around engines.load_engine exactly
as BenchmarkResult.compile_seconds is.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np


def time_run(run: Callable[[], Any], *, warmup: int, min_seconds: float, min_iterations: int,
             max_iterations: int) -> dict[str, float]:
    """One run: warm up, then time batches until both minimums are met; its median and count.

    Warm-up stops early once it has lasted half of ``min_seconds`` (big batches of big models).
    """
    from sparsify_mlflow.speed_session import time_round

    w0 = time.perf_counter()
    for _ in range(warmup):
        run()
        if time.perf_counter() - w0 > min_seconds / 2:
            break
    ms = np.asarray(time_round(run, min_iterations, min_seconds, max_iterations))
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "iterations": len(ms)}


def run_groups(args: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """args: groups [{name, spec, batch_size, variants [{key, path, engine}]}] + timing settings.

    One group at a time: compile its variants, time them in rounds, free them.
    """
    import gc

    from sparsify_mlflow.engines import deepsparse_status

    deepsparse_status()  # imports deepsparse now, so the first compile time is not an import time
    out: dict[str, Any] = {"groups": {}, "progress": None}
    for group in args["groups"]:
        out["groups"][group["name"]] = {"variants": {}, "complete": False}
        _run_group(group, args, out, save)
        out["groups"][group["name"]]["complete"] = True
        save(out)
        gc.collect()
    out["progress"] = "done"
    return out


def _run_group(group: dict[str, Any], args: dict[str, Any], out: dict[str, Any],
               save: Callable[[dict[str, Any]], None]) -> None:
    from benchmarks.models import sample_rows
    from benchmarks.proc import RssSampler
    from benchmarks.settings import ModelSpec
    from sparsify_mlflow.benchmark import tile_rows
    from sparsify_mlflow.engines import load_engine

    spec = ModelSpec(**group["spec"])
    bs = int(group["batch_size"])
    batch = tile_rows(sample_rows(spec, 16, seed=3), bs)
    results = out["groups"][group["name"]]["variants"]
    engines = {}
    with RssSampler(interval=0.02) as sampler:
        for variant in group["variants"]:
            key = variant["key"]
            out["progress"] = f"compiling {key} ({group['name']})"
            save(out)  # if the engine aborts the process, the parent knows which file did it
            before = sampler.mark(f"compile {key}")
            t0 = time.perf_counter()
            eng = load_engine(Path(variant["path"]), variant["engine"], bs)
            compile_seconds = time.perf_counter() - t0
            after = sampler.mark(f"after {key}")
            peak = sampler.peak_by_label.get(f"compile {key}", after)
            engines[key] = eng
            results[key] = {
                "engine": eng.name, "num_cores": eng.num_cores,
                "fraction_of_supported_ops": eng.fraction_of_supported_ops,
                "compile_seconds": compile_seconds,
                "compile_peak_rss_delta_mb": max(0.0, peak - before),
                "engine_rss_mb": max(0.0, after - before),
                "runs": [],
            }
    keys = list(engines)
    for rnd in range(int(args["rounds"])):
        order = keys[rnd % len(keys):] + keys[: rnd % len(keys)]
        for key in order:
            out["progress"] = f"timing {key} ({group['name']}, round {rnd + 1})"
            save(out)
            run = time_run(partial(engines[key].run, batch), warmup=int(args["warmup"]),
                           min_seconds=float(args["min_seconds"]),
                           min_iterations=int(args["min_iterations"]),
                           max_iterations=int(args["max_iterations"]))
            results[key]["runs"].append(run | {"round": rnd})
    engines.clear()
