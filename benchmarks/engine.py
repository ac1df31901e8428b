"""Sections 1 and 4, parent side: build every model at every level, time the engines, make figures.

Builds (recipe, short training, export) and engine timing run in child processes
(``benchmarks.worker``). The full suite builds each level in its own process (peak memory is that
build's own); ``--quick`` puts all builds in one process and all engine timing in another, since
starting a process that imports torch and sparseml costs ~10 s of CPU on a busy box.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from benchmarks.proc import MB, ROOT, failure_reason, figure, ratio_figure, run_worker, threads_env
from benchmarks.settings import ModelSpec, Settings

Say = Callable[[str], None]


def engine_section(st: Settings, work: Path, reuse: bool, say: Say, resume: bool = False) -> dict[str, Any]:
    """``reuse``: models built by an earlier run from the same code; ``resume``: also the timing
    groups an interrupted run finished (each group is still timed side by side, in one process)."""
    builds = build_all(st, work, reuse or resume, say)
    groups = [{"name": f"{spec.key}.bs{bs}", "spec": vars(spec), "batch_size": bs,
               "variants": _variants(builds[spec.key], st)} for spec in st.models for bs in st.batch_sizes]
    timings: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, str]] = {}
    for group in groups:
        group["key"] = _group_key(group, builds, st)
        saved = work / "timings" / f"{group['name']}.json"
        if resume and saved.is_file() and json.loads(saved.read_text()).get("key") == group["key"]:
            done = json.loads(saved.read_text())
            say(f"[engine] {group['name']}: reusing the timings measured at {done['measured_at']}")
            timings[group["name"]], failures[group["name"]] = done["variants"], done["failures"]
    todo = [g for g in groups if g["name"] not in timings]
    per_worker = [todo] if st.merge_workers else [[g for g in todo if g["spec"]["key"] == s.key] for s in st.models]
    for batch in filter(None, per_worker):
        t, f = time_groups(batch, st, work, say)
        timings.update(t)
        failures.update(f)
    models = [_figures(spec, st, builds[spec.key],
                       {bs: timings.get(f"{spec.key}.bs{bs}", {}) for bs in st.batch_sizes},
                       {bs: failures.get(f"{spec.key}.bs{bs}", {}) for bs in st.batch_sizes})
              for spec in st.models]
    return {"models": models}


# ---- builds ------------------------------------------------------------------------------------

def _build_key(spec: ModelSpec, level: float, target: str) -> str:
    """What makes a built model reusable: the spec, the level, the target and the code that builds it."""
    code = "".join((ROOT / p).read_text() for p in (
        "sparsify_mlflow/levels.py", "sparsify_mlflow/export.py", "sparsify_mlflow/post_training.py",
        "sparsify_mlflow/qdq.py", "benchmarks/models.py"))
    from benchmarks.models import use_case_allocation

    blob = json.dumps({"spec": vars(spec), "level": level, "target": target,
                       "allocation": use_case_allocation(spec)}, sort_keys=True) + code
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _builds(st: Settings, level: float) -> tuple[str, ...]:
    """The --target values a level is built with: every one of the suite's where the level prunes
    (the mask differs), else one (the mask does not matter)."""
    from sparsify_mlflow.levels import target_sparsity

    return st.targets if target_sparsity(level) > 0 else ("auto",)


def variant(level: float, mask: str | None) -> str:
    """A build's name in the results: "L0.5.block4", or "L0.1" where nothing is pruned."""
    return f"L{level:g}" + (f".{mask}" if mask and mask != "none" else "")


def _job(spec: ModelSpec, level: float, target: str, work: Path) -> dict[str, Any]:
    folder = f"level-{level:g}" + ("" if target == "auto" else f"-{target}")
    return {"spec": vars(spec), "level": level, "target": target, "key": _build_key(spec, level, target),
            "out_dir": str(work / "models" / spec.key / folder), "log_dir": str(work / "logs" / "sparseml")}


def _reusable(job: dict[str, Any]) -> dict[str, Any] | None:
    meta = Path(job["out_dir"]) / "build.json"
    if not meta.is_file():
        return None
    cached = json.loads(meta.read_text())
    ok = cached.get("key") == job["key"] and Path(cached.get("onnx_path", "")).is_file()
    return cached | {"reused": True} if ok else None


def build_all(st: Settings, work: Path, reuse: bool, say: Say) -> dict[str, list[dict[str, Any]]]:
    """{model key: [build result per level]}.

    Full suite, per model: level 0 (dense FP32) and the highest level are built alone: their
    export time and memory are the export-overhead figures. The levels between are built
    ``st.parallel_builds`` at a time when memory allows (a build is mostly single-threaded graph
    rewriting, and runs with one torch thread); their export times are flagged as not comparable.
    """
    done: dict[tuple[str, float, str], dict[str, Any]] = {}
    todo: list[dict[str, Any]] = []
    order = [(level, target) for level in st.levels for target in _builds(st, level)]
    for spec in st.models:
        for level, target in order:
            job = _job(spec, level, target, work)
            cached = _reusable(job) if reuse else None
            if cached:
                say(f"  {spec.key} level {level:g} ({target}): reusing {job['out_dir']}")
                done[(spec.key, level, target)] = cached
            else:
                todo.append(job)
    if st.merge_workers:
        if todo:
            say(f"[engine] building {len(todo)} models in one process "
                f"({', '.join(sorted({j['spec']['key'] for j in todo}))})")
            for result in _run_builds(todo, st, work, say, parallel=False):
                done[(result["spec_key"], result["level"], result["target"])] = result
    else:
        for spec in st.models:
            jobs = [j for j in todo if j["spec"]["key"] == spec.key]
            say(f"[engine] {spec.describe()}: building {len(jobs)} levels")
            ends = (min(st.levels), max(st.levels))
            alone, rest = [j for j in jobs if j["level"] in ends], [j for j in jobs if j["level"] not in ends]
            for job in alone:
                (result,) = _run_builds([job], st, work, say, parallel=False)
                done[(spec.key, job["level"], job["target"])] = result
            peaks = [b.get("child_peak_rss_mb") or 0.0 for (key, lv, _), b in done.items()
                     if key == spec.key and lv in ends]
            for result in _parallel(rest, st, work, say, max(peaks or [4096.0])):
                done[(spec.key, result["level"], result["target"])] = result
    return {spec.key: [done[(spec.key, lv, target)] for lv, target in order] for spec in st.models}


def _parallel(jobs: list[dict[str, Any]], st: Settings, work: Path, say: Say, peak_mb: float) -> list[dict[str, Any]]:
    if not jobs:
        return []
    free_mb = psutil.virtual_memory().available / MB
    width = max(1, min(st.parallel_builds, len(jobs), int(free_mb // max(1.0, 1.3 * peak_mb))))
    levels = ", ".join(format(j["level"], "g") for j in jobs)
    say(f"  levels {levels}: {width} at a time "
        f"({free_mb / 1024:.1f} GB free, {peak_mb / 1024:.1f} GB per build)")
    with ThreadPoolExecutor(max_workers=width) as pool:
        futures = [pool.submit(_run_builds, [job], st, work, say, width > 1) for job in jobs]
        return [f.result()[0] for f in futures]


def _run_builds(jobs: list[dict[str, Any]], st: Settings, work: Path, say: Say, parallel: bool) -> list[dict[str, Any]]:
    for job in jobs:
        if Path(job["out_dir"]).exists():
            shutil.rmtree(job["out_dir"])
        say(f"  {job['spec']['key']} level {job['level']:g} ({job['target']}): recipe, "
            f"{job['spec']['plan_epochs'] * job['spec']['steps_per_epoch']} steps, export...")
    name = "-".join(f"{j['spec']['key']}-{j['level']:g}" for j in jobs) if len(jobs) < 3 else "all"
    child = run_worker("build", {"jobs": jobs}, timeout=st.timeouts.get("build", 1800) * len(jobs),
                       env=threads_env(st.build_threads), log=work / "logs" / f"build-{name}.log")
    if not child.ok:
        raise RuntimeError(f"building {name} failed: {failure_reason(child)}")
    results = []
    for job, result in zip(jobs, child.result["builds"]):
        result = result | {"key": job["key"], "spec_key": job["spec"]["key"], "reused": False,
                           "built_in_parallel": parallel, "child_seconds": child.seconds if len(jobs) == 1 else None,
                           "child_peak_rss_mb": child.peak_rss_mb if len(jobs) == 1 else None}
        (Path(job["out_dir"]) / "build.json").write_text(json.dumps(result, indent=2))
        say(f"    {job['spec']['key']} level {job['level']:g} ({result['mask_type']}): exported in "
            f"{result['export_seconds']:.1f} s, sparsity {result['exported_sparsity']:.3f}")
        results.append(result)
    return results


# ---- engine timing -----------------------------------------------------------------------------

def _group_key(group: dict[str, Any], builds: dict[str, list[dict[str, Any]]], st: Settings) -> str:
    """Same models (build keys), batch size and timing settings: the same measurement."""
    blob = json.dumps({"builds": [b["key"] for b in builds[group["spec"]["key"]]], "bs": group["batch_size"],
                       "timing": [st.rounds, st.min_run_seconds, st.min_run_iterations, st.max_run_iterations,
                                  st.warmup_iterations]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _variants(builds: list[dict[str, Any]], st: Settings) -> list[dict[str, str]]:
    """Every level on DeepSparse, the dense file on ONNX Runtime; the INT8-only reference (built beside the
    dense file) on DeepSparse and, where OpenVINO is installed, the dense file, the reference's QDQ twin and
    the QDQ twins of the 1x4-block files at ``st.openvino_levels`` on OpenVINO."""
    from sparsify_mlflow.engines import openvino_status

    variants = [{"key": f"deepsparse.{variant(b['level'], b.get('mask_type'))}", "path": b["onnx_path"],
                 "engine": "deepsparse"} for b in builds]
    dense = next(b for b in builds if b["level"] == 0.0)
    variants.append({"key": "onnxruntime.L0", "path": dense["onnx_path"], "engine": "onnxruntime"})
    reference = dense.get("int8_only")
    if reference:
        variants.append({"key": f"deepsparse.{INT8_ONLY}", "path": reference["onnx_path"], "engine": "deepsparse"})
    if openvino_status()[0]:
        variants.append({"key": "openvino.L0", "path": dense["onnx_path"], "engine": "openvino"})
        if reference:
            variants.append({"key": f"openvino.{INT8_ONLY}", "path": reference["qdq_path"], "engine": "openvino"})
        variants += [{"key": f"openvino.{variant(b['level'], b['mask_type'])}", "path": b["qdq_path"],
                      "engine": "openvino"} for b in builds
                     if b.get("qdq_path") and b["level"] in st.openvino_levels and b["mask_type"] == "block4"]
    return variants


INT8_ONLY = "int8_only"  # the post-training INT8 reference's variant name


def time_groups(groups: list[dict[str, Any]], st: Settings, work: Path, say: Say
                ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Time each group (one model at one batch size) in one child, group after group.

    A DeepSparse abort kills the child: the variant it was compiling (or running) is recorded as
    failed, and a new child resumes without it from the first unfinished group. No silent
    fallback: a failed variant has no figure.
    """
    timings: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, str]] = {g["name"]: {} for g in groups}
    remaining = [dict(g) for g in groups]
    while remaining:
        args = {"groups": remaining, "rounds": st.rounds, "warmup": st.warmup_iterations,
                "min_seconds": st.min_run_seconds, "min_iterations": st.min_run_iterations,
                "max_iterations": st.max_run_iterations}
        names = ", ".join(g["name"] for g in remaining)
        say(f"[engine] timing {names}: {sum(len(g['variants']) for g in remaining)} engines, {st.rounds} rounds")
        child = run_worker("engines", args, timeout=st.timeouts.get("engines", 3600) * len(remaining),
                           log=work / "logs" / f"engines-{remaining[0]['name']}.log")
        finished = {k: v for k, v in child.result.get("groups", {}).items() if v.get("complete")}
        timings.update(finished)
        for name, value in finished.items():  # kept for --resume after an interruption
            group = next(g for g in remaining if g["name"] == name)
            saved = work / "timings" / f"{name}.json"
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"key": group.get("key"), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "variants": value["variants"], "failures": failures[name]}))
        remaining = [g for g in remaining if g["name"] not in timings]
        if child.ok or not remaining:
            break
        group, progress = remaining[0], str(child.result.get("progress") or "")
        culprit = progress.split()[1] if progress.startswith(("compiling", "timing")) else None
        if culprit not in {v["key"] for v in group["variants"]}:
            raise RuntimeError(f"engine timing ({group['name']}) failed: {failure_reason(child)}")
        failures[group["name"]][culprit] = f"{progress}: {failure_reason(child)}"
        say(f"  {group['name']} {culprit} failed ({failures[group['name']][culprit]}); going on without it")
        group["variants"] = [v for v in group["variants"] if v["key"] != culprit]
        if not group["variants"]:
            timings[group["name"]] = {"variants": {}, "complete": True}
            remaining = remaining[1:]
    return {k: v["variants"] for k, v in timings.items()}, failures


# ---- figures -----------------------------------------------------------------------------------

def _per_round(runs: list[dict[str, Any]]) -> dict[int, float]:
    return {r["round"]: r["median_ms"] for r in runs}


def _timing_entry(t: dict[str, Any], bs: int) -> dict[str, Any]:
    ms = list(_per_round(t["runs"]).values())
    return {
        "latency_ms": figure(ms, "ms/batch"),
        # the fastest batch of each run: less sensitive to other processes than the median
        "latency_ms_best": figure([r["min_ms"] for r in t["runs"]], "ms/batch"),
        "items_per_second": figure([bs * 1000.0 / m for m in ms], "items/s"),
        "iterations_per_run": [r["iterations"] for r in t["runs"]],
    }


def _figures(spec: ModelSpec, st: Settings, builds: list[dict[str, Any]], timings: dict[int, dict[str, Any]],
             failures: dict[int, dict[str, str]]) -> dict[str, Any]:
    """Medians of per-run medians; speedups as medians of per-round (side-by-side) ratios."""
    levels = []
    for b in builds:
        name = variant(b["level"], b.get("mask_type"))
        key = f"deepsparse.{name}"
        row: dict[str, Any] = {k: b.get(k) for k in (
            "level", "target", "mask_type", "layer_allocation", "target_sparsity", "quantized", "exported_sparsity",
            "pruned_scope_sparsity", "onnx_bytes", "onnx_gzip_bytes", "recipe_steps", "reused", "built_in_parallel")}
        row["export"] = {k: b.get(k) for k in ("export_seconds", "export_peak_rss_mb", "export_peak_rss_delta_mb",
                                               "export_rss_before_mb", "torch_threads")}
        row["export"]["build_peak_rss_mb"] = b.get("child_peak_rss_mb")
        row.update(fraction_of_supported_ops=None, deepsparse={}, openvino={}, fastest={}, compile={}, failures={})
        for bs in st.batch_sizes:
            t = timings[bs].get(key)
            if t is None:
                row["failures"][f"bs{bs}"] = failures[bs].get(key, "not measured")
            else:
                if row["fraction_of_supported_ops"] is None:
                    row["fraction_of_supported_ops"] = t["fraction_of_supported_ops"]
                row["deepsparse"][f"bs{bs}"] = _level_entry(t, timings[bs], bs)
                row["compile"][f"bs{bs}"] = {k: t[k] for k in ("compile_seconds", "compile_peak_rss_delta_mb",
                                                               "engine_rss_mb")}
            ov = timings[bs].get(f"openvino.{name}") if b.get("qdq_path") else None
            if ov is not None:
                row["openvino"][f"bs{bs}"] = _level_entry(ov, timings[bs], bs)
            timed = [e for e in ("deepsparse", "openvino") if f"bs{bs}" in row[e]]
            if timed:  # the fastest deployment of this file: DeepSparse, or OpenVINO on its QDQ twin
                row["fastest"][f"bs{bs}"] = min(timed, key=lambda e: row[e][f"bs{bs}"]["latency_ms"]["median"])
        levels.append(row)
    ort = {}
    for bs in st.batch_sizes:
        t = timings[bs].get("onnxruntime.L0")
        if t is not None:
            ort[f"bs{bs}"] = _timing_entry(t, bs) | {"compile_seconds": t["compile_seconds"]}
    dense = next(b for b in builds if b["level"] == 0.0)
    reference = dense.get("int8_only")
    int8_only = None if reference is None else {
        "exported_sparsity": reference["exported_sparsity"], "quantized": reference["quantized"],
        "onnx_bytes": reference["onnx_bytes"],
        **{engine: {f"bs{bs}": _timing_entry(timings[bs][f"{engine}.{INT8_ONLY}"], bs) for bs in st.batch_sizes
                    if f"{engine}.{INT8_ONLY}" in timings[bs]} for engine in ("deepsparse", "openvino")},
        "fastest": {f"bs{bs}": _fastest(timings[bs], INT8_ONLY) for bs in st.batch_sizes}}
    openvino_dense = {f"bs{bs}": _timing_entry(timings[bs]["openvino.L0"], bs) for bs in st.batch_sizes
                      if "openvino.L0" in timings[bs]}
    best_dense = {f"bs{bs}": _fastest(timings[bs], "L0") for bs in st.batch_sizes}  # e.g. "openvino.L0"
    return {"model": spec.key, "kind": spec.kind, "description": spec.describe(), "spec": vars(spec),
            "levels": levels, "onnxruntime_dense": ort, "openvino_dense": openvino_dense, "best_dense": best_dense,
            "int8_only": int8_only}


def _level_entry(t: dict[str, Any], group: dict[str, Any], bs: int) -> dict[str, Any]:
    """One file on one engine at one batch size: its timing and its speedups over every reference,
    each the median of per-round ratios to the reference timed in the same rounds."""
    entry = _timing_entry(t, bs)
    rounds = _per_round(t["runs"])
    for name, base_key in (("speedup_vs_deepsparse_dense", "deepsparse.L0"),
                           ("speedup_vs_onnxruntime_dense", "onnxruntime.L0"),
                           ("speedup_vs_best_dense", _fastest(group, "L0")),
                           ("speedup_vs_int8_only", _fastest(group, INT8_ONLY))):
        base = group.get(base_key)
        if base is not None:
            base_rounds = _per_round(base["runs"])
            common = sorted(set(rounds) & set(base_rounds))
            entry[name] = ratio_figure([base_rounds[r] for r in common], [rounds[r] for r in common])
    return entry


def _fastest(timings: dict[str, Any], name: str) -> str | None:
    """The key ("openvino.int8_only") of `name`'s engine with the lowest median of per-round medians."""
    import statistics

    timed = {key: statistics.median(_per_round(t["runs"]).values()) for key, t in timings.items()
             if key.split(".", 1)[1] == name and t.get("runs")}
    return min(timed, key=timed.__getitem__) if timed else None
