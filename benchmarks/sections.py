"""Sections 2 (training cost) and 3 (end to end), parent side; heavy work runs in child processes."""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.proc import (
    ChildResult,
    child_env,
    failure_reason,
    figure,
    ratio_figure,
    run_command,
    run_worker,
    threads_env,
)
from benchmarks.settings import Settings

Say = Callable[[str], None]


# ---- 2: training cost --------------------------------------------------------------------------

def training_section(st: Settings, work: Path, say: Say) -> dict[str, Any]:
    """Rounds of (plain, dense-recipe, sparse-recipe) child processes; phase medians across rounds."""
    base = {"model": st.train_model, "image_size": st.train_image_size, "batch": st.train_batch,
            "steps_per_epoch": st.train_steps_per_epoch, "lr": 0.05, "seed": 0, "optim_level": 1.0,
            "log_dir": str(work / "logs" / "sparseml")}
    kinds = {"plain": {"epochs": st.train_dense_epochs}, "dense": {"epochs": st.train_dense_epochs},
             "sparse": {"epochs": st.train_plan_epochs}}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    say(f"[training] {st.train_model} {st.train_image_size}px batch {st.train_batch}: "
        f"{st.train_rounds} round(s) of plain / dense recipe / optim level 1.0 recipe")
    plan = [[base | extra | {"kind": kind} for kind, extra in kinds.items()] for _ in range(st.train_rounds)]
    # full suite: one process per run (its own peak memory); --quick: one process for all
    batches = [[run] for rnd in plan for run in rnd] if not st.merge_workers else [[r for rnd in plan for r in rnd]]
    for i, batch in enumerate(batches):
        label = batch[0]["kind"] if len(batch) == 1 else "all"
        child = run_worker("train", {"runs": batch}, timeout=st.timeouts.get("train", 1800) * len(batch),
                           log=work / "logs" / f"train-{label}-{i}.log", env=threads_env(st.job_threads))
        if not child.ok:
            raise RuntimeError(f"training-cost run {label} failed: {failure_reason(child)}")
        for result in child.result["runs"]:
            runs[result["kind"]].append(result)
        if len(batch) == 1 and batch[0]["kind"] == "sparse":
            say(f"  round {len(runs['sparse'])}/{st.train_rounds} done")
    phases: dict[str, Any] = {}
    plain_step = [r["phases"]["plain"]["median_seconds"] for r in runs["plain"]]
    plain_rss = [r["peak_rss_mb"] for r in runs["plain"]]
    for kind, phase_names in (("plain", ["plain"]), ("dense", ["dense"]),
                              ("sparse", ["pruning", "stabilisation", "qat"])):
        for name in phase_names:
            step = [r["phases"].get(name, {}).get("median_seconds") for r in runs[kind]]
            if kind == "sparse":
                rss = [r["phases"].get(name, {}).get("peak_rss_mb") for r in runs[kind]]
            else:
                rss = [r["peak_rss_mb"] for r in runs[kind]]
            phases[name] = {
                "step_ms": figure([s * 1000 for s in step if s is not None], "ms/step"),
                # mean over the phase's steps: amortises the pruning ramp's mask updates
                "mean_step_ms": figure([r["phases"].get(name, {}).get("mean_seconds", 0) * 1000
                                        for r in runs[kind] if name in r["phases"]], "ms/step"),
                "step_vs_plain": ratio_figure(step, plain_step),
                "peak_rss_mb": figure([m for m in rss if m is not None], "MB"),
                "peak_rss_vs_plain": ratio_figure(rss, plain_rss),
                "steps_per_run": [r["phases"].get(name, {}).get("steps") for r in runs[kind]],
            }
    return {"model": st.train_model, "image_size": st.train_image_size, "batch_size": st.train_batch,
            "optim_level": 1.0, "steps_per_epoch": st.train_steps_per_epoch,
            "epochs": {k: v["epochs"] for k, v in kinds.items()},
            "threads": runs["plain"][0]["threads"], "schedule": runs["sparse"][0]["schedule"],
            "phases": phases, "one_process_per_run": not st.merge_workers,
            "run_peak_rss_mb": {k: figure([r["peak_rss_mb"] for r in v], "MB") for k, v in runs.items()}}


# ---- 3: end to end -----------------------------------------------------------------------------

UNTIMED = "process start, imports, data + model setup, untimed"
E2E_STAGES = ("baseline_training", "training_aware_training", "evaluate", "export", "benchmark",
              "tracking", "registration")


def _sparsify_command() -> list[str]:
    exe = Path(sys.executable).parent / "sparsify.run"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "sparsify_mlflow"]


def e2e_section(st: Settings, work: Path, say: Say) -> dict[str, Any]:
    runs = []
    for i in range(st.e2e_repeats):
        folder = work / f"e2e-{i}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        cmd = [*_sparsify_command(), "training-aware", "--working-dir", str(folder),
               "--summary-json", str(folder / "summary.json"), *st.e2e_args]
        say(f"[end to end] {' '.join(Path(cmd[0]).name if j == 0 else c for j, c in enumerate(cmd))}")
        env = child_env({"TQDM_DISABLE": "1", **threads_env(st.job_threads)})
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(var, None)  # its own sqlite store in the tmp working dir
        child = run_command(cmd, timeout=st.timeouts.get("e2e", 7200), cwd=folder, env=env,
                            log=work / "logs" / f"e2e-{i}.log", interval=0.2)
        if not child.ok:
            raise RuntimeError(f"the main job failed: {failure_reason(child)}")
        runs.append(_e2e_figures(folder, child))
        say(f"  done in {child.seconds:.0f} s (peak RSS {child.peak_rss_mb:.0f} MB)")
    stage_names = [s for s in E2E_STAGES if any(s in r["stages"] for r in runs)]
    stage_names += sorted({s for r in runs for s in r["stages"]} - set(stage_names))
    return {
        "command": "sparsify.run training-aware " + " ".join(st.e2e_args) + " (in a tmp working dir, own sqlite store)",
        "wall_seconds": figure([r["wall_seconds"] for r in runs], "s"),
        "peak_rss_mb": figure([r["peak_rss_mb"] for r in runs], "MB"),
        "peak_rss_main_process_mb": figure([r["peak_rss_main_mb"] for r in runs], "MB"),
        "stage_source": runs[0]["stage_source"],
        "stages": {s: {"seconds": figure([r["stages"].get(s, {}).get("seconds") for r in runs], "s"),
                       "peak_rss_mb": figure([r["stages"].get(s, {}).get("peak_rss_mb") for r in runs], "MB")}
                   for s in stage_names},
        "speedups": {name: figure([r["speedups"].get(name) for r in runs], "x")
                     for name in sorted({n for r in runs for n in r["speedups"]})},
        "benchmark_reliable": [r["benchmark_reliable"] for r in runs],
        "runs": runs,
    }


def _e2e_figures(folder: Path, child: ChildResult) -> dict[str, Any]:
    """Stage split from the parent run's stage_seconds.* metrics and its timing/stages.json spans."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=50)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    spans: list[dict[str, Any]] = []
    try:
        path = client.download_artifacts(parent.info.run_id, "timing/stages.json", str(folder))
        spans = json.loads(Path(path).read_text())["spans"]
        source = "stage_seconds.* metrics and timing/stages.json of the parent run"
    except Exception:  # noqa: BLE001 - an experiment.py without stage timing: fall back to run times
        source = "child run start/end times (experiment.py logs no stage timing)"
        for r in runs:
            if r.info.run_id != parent.info.run_id and r.info.end_time:
                spans.append({"stage": r.info.run_name, "start": r.info.start_time / 1000, "end": r.info.end_time / 1000})
    samples = child.samples
    stages: dict[str, dict[str, Any]] = {}
    for span in spans:
        entry = stages.setdefault(span["stage"], {"seconds": 0.0, "peak_rss_mb": None})
        entry["seconds"] += span["end"] - span["start"]
        peak = max((mb for t, mb in samples if span["start"] <= t <= span["end"]), default=None)
        if peak is not None:
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"] or 0.0, peak)
    inside = sum(s["seconds"] for s in stages.values())
    stages[UNTIMED] = {"seconds": max(0.0, child.seconds - inside), "peak_rss_mb": None}
    summary = json.loads((folder / "summary.json").read_text())
    return {"wall_seconds": child.seconds, "peak_rss_mb": child.peak_rss_mb,
            # the job's own interleaved benchmark session: median [min, max] of its per-round ratios
            "speedups": {k: v for k, v in summary["comparison"].items() if k.startswith("speedup.")},
            "benchmark_reliable": summary["benchmark_reliable"], "benchmark_load": summary["benchmark_load"],
            "peak_rss_main_mb": child.peak_main_rss_mb,
            "stages": stages, "stage_source": source, "parent_run_id": parent.info.run_id,
            "metrics": {k: v for k, v in parent.data.metrics.items() if k.startswith("stage_seconds.")}}
