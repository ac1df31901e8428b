"""The end of a run: a short dense-vs-sparse table for people and a JSON document for programs."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sparsify_mlflow.remote import redact_uri
from sparsify_mlflow.report import output_console, print_table

if TYPE_CHECKING:
    from sparsify_mlflow.experiment import ExperimentResult, ModelReport


def _bench(side: ModelReport, key: str, field: str) -> float | None:
    result = side.benchmarks.get(key)
    return None if result is None else getattr(result, field)


def summary_rows(result: ExperimentResult) -> list[tuple[str, str, str, str]]:
    """(what, dense, sparse, change) rows; change is a ratio for speed, a difference for quality."""
    dense, sparse = result.dense, result.sparse
    bs = result.config.benchmark_batch_size
    engine = sparse.onnx_engine
    main = dense.metrics.main_name

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if not a or not b else f"{a / b:.2f}x"

    rows = [
        (f"{main} (PyTorch)", num(dense.metrics.main, ".4f"), num(sparse.metrics.main, ".4f"),
         f"{-result.comparison['main_drop']:+.2f} pt"),
        (f"{main} (ONNX, {engine})", num(dense.onnx_metrics.main, ".4f"), num(sparse.onnx_metrics.main, ".4f"),
         f"{100 * (sparse.onnx_metrics.main - dense.onnx_metrics.main):+.2f} pt"),
        ("sparsity (pruned layers)", num(dense.sparsity, ".1%"), num(sparse.sparsity, ".1%"), ""),
        ("sparsity (exported weights)", num(dense.exported.weight_sparsity, ".1%"),
         num(sparse.exported.weight_sparsity, ".1%"), ""),
    ]
    for key, label in ((f"{engine}.bs1", f"{engine} latency bs1 (ms)"),):
        d, s = _bench(dense, key, "latency_ms_median"), _bench(sparse, key, "latency_ms_median")
        rows.append((label, num(d, ".2f"), num(s, ".2f"), ratio(d, s)))
    key = f"{engine}.bs{bs}"
    d, s = _bench(dense, key, "items_per_second"), _bench(sparse, key, "items_per_second")
    rows.append((f"{engine} throughput bs{bs} (items/s)", num(d, ".1f"), num(s, ".1f"), ratio(s, d)))
    ort = _bench(dense, "onnxruntime.bs1", "latency_ms_median")
    if ort is not None and engine != "onnxruntime":
        s = _bench(sparse, f"{engine}.bs1", "latency_ms_median")
        rows.append(("vs ONNX Runtime dense, bs1 (ms)", num(ort, ".2f"), num(s, ".2f"), ratio(ort, s)))
    mb = 1024 * 1024
    rows.append(("ONNX size (MB)", num(dense.exported.size_bytes / mb, ".2f"),
                 num(sparse.exported.size_bytes / mb, ".2f"),
                 ratio(dense.exported.size_bytes, sparse.exported.size_bytes)))
    rows.append(("ONNX size gzip (MB)", num(dense.exported.gzip_size_bytes / mb, ".2f"),
                 num(sparse.exported.gzip_size_bytes / mb, ".2f"),
                 ratio(dense.exported.gzip_size_bytes, sparse.exported.gzip_size_bytes)))
    rows.append(("training time (s)", num(dense.train_seconds, ".0f"), num(sparse.train_seconds, ".0f"), ""))
    return rows


def print_summary(result: ExperimentResult, console: Console | None = None) -> None:
    console = console or output_console()
    cfg = result.config
    print_table(
        f"{cfg.use_case} {cfg.model}, optim level {cfg.optim_level:g} "
        f"(target sparsity {result.plan.target_sparsity:.0%}{', INT8' if result.plan.quantize else ''})",
        ("", "dense", "sparse", "change"), summary_rows(result), console,
    )
    for note in result.notes:
        console.print(f"note: {note}")
    if result.registered:
        reg = result.registered
        console.print(f"Registered [bold]{reg.name}[/] version {reg.version} as @{reg.alias} ({reg.model_uri})")
    console.print(f"Deployment folder: {result.deployment_dir}")
    print_ui_hint(result.tracking_uri, result.experiment_id, console)


def print_ui_hint(tracking_uri: str, experiment_id: str, console: Console) -> None:
    """Where to look next: the command that opens a local store, or the server's address."""
    uri = redact_uri(tracking_uri)
    if uri.startswith("sqlite:"):
        console.print(f"See it in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")
    else:
        console.print(f"See it in the MLflow UI at {uri} (experiment id {experiment_id})")


def summary_dict(result: ExperimentResult) -> dict[str, Any]:
    """Machine-readable result for --summary-json: ids, metrics, registry entry, artifact paths."""
    reg = result.registered
    return {
        "tracking_uri": redact_uri(result.tracking_uri),
        "experiment_id": result.experiment_id,
        "parent_run_id": result.parent_run_id,
        "dense_run_id": result.dense.run_id,
        "sparse_run_id": result.sparse.run_id,
        "use_case": result.config.use_case,
        "model": result.config.model,
        "optim_level": result.config.optim_level,
        "target_sparsity": result.plan.target_sparsity,
        "quantized": result.plan.quantize,
        "main_metric": result.dense.metrics.main_name,
        "dense": result.dense.flat_metrics(),
        "sparse": result.sparse.flat_metrics(),
        "comparison": result.comparison,
        "registered_model": None if reg is None else {
            "name": reg.name, "version": reg.version, "alias": reg.alias, "model_uri": reg.model_uri},
        "artifacts": {
            "experiment_dir": str(result.experiment_dir),
            "deployment_dir": str(result.deployment_dir),
            "dense_onnx": str(result.dense.exported.path),
            "sparse_onnx": str(result.sparse.exported.path),
        },
        "notes": result.notes,
    }


def write_summary_json(result: ExperimentResult, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary_dict(result), indent=2, default=str))


# --- sweeps (sparsify_mlflow.sweep) ---

def sweep_table_rows(rows: list[dict[str, Any]], batch_size: int) -> list[tuple[str, ...]]:
    """The comparison table for the console: one line per model, dense first."""
    def num(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None or value != value else format(value, fmt)  # None or NaN

    out = []
    for row in rows:
        if row["status"] != "FINISHED":
            out.append((row["level"], "FAILED", "", "", "", "", "", "", ""))
            continue
        mark = " *" if row.get("recommended") else ""
        out.append((row["level"] + mark, num(row, "sparsity", ".1%"), num(row, "main", ".4f"),
                    num(row, "main_drop", "+.2f"), num(row, "latency_ms_bs1", ".2f"),
                    num(row, f"items_per_second_bs{batch_size}", ".1f"), num(row, "speedup_bs1", ".2f") + "x",
                    num(row, "size_mb", ".2f"), str(row.get("registered_version") or "")))
    return out


def print_sweep_summary(result: Any, console: Console | None = None) -> None:
    console = console or output_console()
    cfg, bs = result.config, result.config.benchmark_batch_size
    main = result.dense.metrics.main_name
    engine = next((r["engine"] for r in result.rows if r.get("engine")), "")
    print_table(f"Sweep: {cfg.use_case} {cfg.model}, optim levels {','.join(f'{x:g}' for x in result.options.levels)}"
                f" ({engine}; * = recommended)",
                ("level", "sparsity", main, "drop pt", "bs1 ms", f"bs{bs} items/s", "speedup", "MB", "version"),
                sweep_table_rows(result.rows, bs), console)
    for row in result.rows:
        if row["status"] != "FINISHED":
            console.print(f"level {row['level']} failed: {row.get('failure_reason', '')} (run {row.get('run_id')})")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"Recommendation: {result.recommendation.reason}")
    chosen = result.recommended
    if chosen is not None and chosen.result.registered:
        reg = chosen.result.registered
        console.print(f"Registered [bold]{reg.name}[/] version {reg.version} as @recommended and @candidate "
                      f"(models:/{reg.name}@recommended)")
    elif result.registered_model_name:
        console.print(f"Every finished level is a version of [bold]{result.registered_model_name}[/] "
                      f"(see the table); no alias was moved")
    console.print(f"Sweep run {result.parent_run_id}: table sweep_table.json/.csv, figure figures/pareto.png")
    print_ui_hint(result.tracking_uri, result.experiment_id, console)


def sweep_summary_dict(result: Any) -> dict[str, Any]:
    chosen = result.recommended
    return {
        "tracking_uri": redact_uri(result.tracking_uri),
        "experiment_id": result.experiment_id,
        "parent_run_id": result.parent_run_id,
        "dense_run_id": result.dense.run_id,
        "use_case": result.config.use_case,
        "model": result.config.model,
        "main_metric": result.dense.metrics.main_name,
        "optim_levels": list(result.options.levels),
        "max_metric_drop": result.options.max_metric_drop,
        "min_speedup": result.options.min_speedup,
        "registered_model": result.registered_model_name,
        "levels": [{"optim_level": o.level, "run_id": o.run_id, "status": "FINISHED" if o.result else "FAILED",
                    "error": o.error,
                    "registered_version": o.result.registered.version if o.result and o.result.registered else None}
                   for o in result.levels],
        "table": result.rows,
        "recommendation": {"reason": result.recommendation.reason,
                           "optim_level": None if chosen is None else chosen.level,
                           "run_id": None if chosen is None else chosen.run_id,
                           "registered_version": chosen.result.registered.version
                           if chosen is not None and chosen.result.registered else None},
        "folder": str(result.folder),
        "notes": result.notes,
    }


def write_sweep_summary_json(result: Any, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sweep_summary_dict(result), indent=2, default=str))
