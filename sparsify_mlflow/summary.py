"""The end of a run: a short dense-vs-sparse table for people and a JSON document for programs."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from sparsify_mlflow.remote import redact_uri, ui_link
from sparsify_mlflow.report import output_console, print_table

if TYPE_CHECKING:
    from sparsify_mlflow.results import ExperimentResult, ModelReport


def _bench(side: ModelReport, key: str, field: str) -> float | None:
    result = side.benchmarks.get(key)
    return None if result is None else getattr(result, field)


def summary_rows(result: ExperimentResult) -> list[tuple[str, str, str, str]]:
    """(what, dense, sparse, change) rows; change is a ratio for speed, a difference for quality.

    Speed cells are the benchmark session's: whole-session medians per model, and as the change the
    median of the per-round ratios with its range; "(!)" marks them when the session was unreliable.
    """
    dense, sparse, comparison = result.dense, result.sparse, result.comparison
    bs = result.config.benchmark_batch_size
    engine = sparse.onnx_engine
    main = dense.metrics.main_name
    mark = "" if result.reliability.reliable else " (!)"

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if not a or not b else f"{a / b:.2f}x"

    def speedup(name: str) -> str:
        value = comparison.get(name)
        if value is None:
            return "-"
        return f"{value:.2f}x [{comparison[name + '.min']:.2f}-{comparison[name + '.max']:.2f}]{mark}"

    rows = [
        (f"{main} (ONNX on {engine}; gates use this)", num(dense.onnx_metrics.main, ".4f"),
         num(sparse.onnx_metrics.main, ".4f"), points(comparison["main_drop"])),
        (f"{main} (PyTorch)", num(dense.metrics.main, ".4f"), num(sparse.metrics.main, ".4f"),
         points(comparison["main_drop_pytorch"])),
        ("sparsity (pruned layers)", num(dense.sparsity, ".1%"), num(sparse.sparsity, ".1%"), ""),
        ("sparsity (exported weights)", num(dense.exported.weight_sparsity, ".1%"),
         num(sparse.exported.weight_sparsity, ".1%"), ""),
        ("INT8 (in the exported graph)", _yes(dense.exported.quantized), _yes(sparse.exported.quantized), ""),
    ]
    for batch, field, label in ((1, "latency_ms_median", "latency bs1 (ms)"),
                                (bs, "items_per_second", f"throughput bs{bs} (items/s)")):
        for key in _same_engine_keys(comparison, batch):
            name = key.split(".", 1)[0]
            rows.append((f"{name} {label}", num(_bench(dense, key, field), ".2f" if batch == 1 else ".1f"),
                         num(_bench(sparse, key, field), ".2f" if batch == 1 else ".1f"), speedup(f"speedup.{key}")))
    if engine != "onnxruntime" and f"speedup_vs_onnxruntime.{engine}.bs1" in comparison:
        rows.append(("vs ONNX Runtime dense, bs1 (ms)", num(_bench(dense, "onnxruntime.bs1", "latency_ms_median"), ".2f"),
                     num(_bench(sparse, f"{engine}.bs1", "latency_ms_median"), ".2f"),
                     speedup(f"speedup_vs_onnxruntime.{engine}.bs1")))
    for batch in (1, bs):  # what a user gains over the best dense deployment the session timed
        if f"speedup_vs_best_dense.bs{batch}" in comparison:
            rows.append((f"fastest vs fastest dense engine, bs{batch}", "", "", speedup(f"speedup_vs_best_dense.bs{batch}")))
    for batch in (1, bs):  # what pruning added over quantizing the dense model alone
        if f"speedup_vs_int8_only.bs{batch}" in comparison:
            rows.append((f"fastest vs INT8 alone (post-training), bs{batch}", "", "",
                         speedup(f"speedup_vs_int8_only.bs{batch}")))
    mb = 1024 * 1024
    rows.append(("ONNX size (MiB)", num(dense.exported.size_bytes / mb, ".2f"),
                 num(sparse.exported.size_bytes / mb, ".2f"),
                 ratio(dense.exported.size_bytes, sparse.exported.size_bytes)))
    rows.append(("ONNX size gzip (MiB)", num(dense.exported.gzip_size_bytes / mb, ".2f"),
                 num(sparse.exported.gzip_size_bytes / mb, ".2f"),
                 ratio(dense.exported.gzip_size_bytes, sparse.exported.gzip_size_bytes)))
    rows.append(("training time (s)", num(dense.train_seconds, ".0f"), num(sparse.train_seconds, ".0f"), ""))
    return rows


def int8_only_line(result: ExperimentResult) -> str | None:
    """One line on what pruning added over INT8 alone (the dense model quantized post-training), with both
    metrics; None without a reference."""
    ref = result.int8_only
    if ref is None:
        return None
    what = "INT8 alone (the dense model quantized post-training, no training)"
    if ref.failure is not None:
        return f"{what} failed, so nothing is compared with it: {ref.failure}"
    comparison, bs = result.comparison, result.config.benchmark_batch_size
    main = ref.report.onnx_metrics
    gains = {batch: comparison[f"speedup_vs_int8_only.bs{batch}"] for batch in (1, bs)
             if f"speedup_vs_int8_only.bs{batch}" in comparison}
    head = (f"{what}: {main.main_name} {main.main:.4f} "
            f"({points(100 * (result.dense.onnx_metrics.main - main.main))} vs dense)")
    if not gains:
        return f"{head}; not timed beside the sparse model"
    def at(batches: dict[int, float]) -> str:
        return " and ".join(f"{g:.2f}x at bs{batch}" for batch, g in batches.items())

    faster = {batch: g for batch, g in gains.items() if g >= 1}
    slower = {batch: g for batch, g in gains.items() if g < 1}
    if not slower:
        verdict = f"pruning adds {at(gains)} over it"
    elif not faster:
        verdict = f"INT8 alone is faster here: pruning gives {at(gains)} over it"
    else:
        verdict = f"pruning pays over it at one batch size, not the other: {at(faster)}, but {at(slower)}"
    return f"{head}. {verdict}, at {points(comparison['main_drop_vs_int8_only'])}."


def points(drop: float) -> str:
    """A drop of the main metric as the change a reader expects: a gain reads as a gain."""
    return f"{-drop + 0.0:+.2f} pt"  # + 0.0: no drop reads +0.00, not -0.00


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _same_engine_keys(comparison: dict[str, float], batch_size: int) -> list[str]:
    """The "<engine>.bs<N>" keys with a same-engine speedup at `batch_size`, deploy engine first."""
    keys = [name.removeprefix("speedup.") for name in comparison
            if name.startswith("speedup.") and name.endswith(f".bs{batch_size}")]
    return sorted(keys, key=lambda key: key.startswith("onnxruntime."))


def print_summary(result: ExperimentResult, console: Console | None = None) -> None:
    console = console or output_console()
    cfg = result.config
    print_table(
        f"{cfg.use_case} {cfg.model}, {result.plan.label} "
        f"(target sparsity {result.plan.target_sparsity:.0%}{', INT8' if result.plan.quantize else ''})",
        ("", "dense", "sparse", "change"), summary_rows(result), console,
    )
    console.print(escape(f"Speedups: median [min-max] of {cfg.benchmark_rounds} alternating rounds of one benchmark "
                         f"session, each model against the dense one on the same engine."))
    if (line := int8_only_line(result)) is not None:
        console.print(escape(line))
    if result.reliability.reliable:
        console.print("Reliable: no other process or hypervisor took the CPUs and the rounds agreed.")
    else:
        console.print(escape(f"warning: (!) speedups unreliable: {result.reliability.reason}"))
    for note in result.notes:
        console.print(escape(f"note: {note}"))
    if result.registered:
        reg = result.registered
        console.print(f"Registered [bold]{reg.name}[/] version {reg.version} as @{reg.alias} ({reg.model_uri})")
    console.print(f"Deployment folder: {result.deployment_dir}")
    print_ui_hint(result.tracking_uri, result.experiment_id, console)


def print_ui_hint(tracking_uri: str, experiment_id: str, console: Console) -> None:
    """Where to look next: the command that opens a local store, or the server's page, linked in the UI's
    model-training view (remote.ui_link)."""
    uri = redact_uri(tracking_uri)
    if uri.startswith("sqlite:"):
        console.print(escape(f"See it in the MLflow UI: mlflow ui --backend-store-uri {uri}, then open "
                             f"{ui_link('http://127.0.0.1:5000', experiment_id)}"), soft_wrap=True)
    elif uri.startswith(("http://", "https://")):
        console.print(escape(f"See it in the MLflow UI: {ui_link(tracking_uri, experiment_id)}"), soft_wrap=True)
    else:
        console.print(escape(f"See it in the MLflow UI of the server on {uri} (experiment id {experiment_id})"),
                      soft_wrap=True)


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
        "optim_level": result.plan.optim_level,
        "recipe_source": result.plan.source,
        "target_sparsity": result.plan.target_sparsity,
        "quantized": result.sparse.exported.quantized,
        "benchmark_reliable": result.reliability.reliable,
        "benchmark_load": result.reliability.reason,
        "main_metric": result.dense.metrics.main_name,
        "dense": result.dense.flat_metrics(),
        "sparse": result.sparse.flat_metrics(),
        "comparison": result.comparison,
        "int8_only": None if result.int8_only is None else {
            "failure": result.int8_only.failure,
            "metrics": None if result.int8_only.report is None else result.int8_only.report.flat_metrics()},
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
    """The comparison table for the console: one line per model, dense first; "(!)" marks a speedup of
    an unreliable benchmark session, "(ort)" one measured on ONNX Runtime where DeepSparse could not compile."""
    def num(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None or value != value else format(value, fmt)  # None or NaN

    def speedup(row: dict[str, Any], batch: int) -> str:
        cell = num(row, f"speedup_bs{batch}", ".2f")
        if cell == "-":
            return cell
        fallback = " (ort)" if row.get(f"speedup_bs{batch}_engine") not in ("", row.get("engine")) else ""
        return f"{cell}x{fallback}{'' if row.get('reliable', True) else ' (!)'}"

    out = []
    for row in rows:
        if row["status"] != "FINISHED":
            out.append((row["level"], "FAILED", "", "", "", "", "", "", "", ""))
            continue
        mark = " *" if row.get("recommended") else ""
        out.append((row["level"] + mark, num(row, "sparsity", ".1%"), num(row, "main", ".4f"),
                    "" if row["level"] == "dense" else points(row["main_drop"]), num(row, "latency_ms_bs1", ".2f"),
                    num(row, f"items_per_second_bs{batch_size}", ".1f"), speedup(row, 1), speedup(row, batch_size),
                    num(row, "size_mb", ".2f"), str(row.get("registered_version") or "")))
    return out


def print_sweep_summary(result: Any, console: Console | None = None) -> None:
    console = console or output_console()
    cfg, bs = result.config, result.config.benchmark_batch_size
    main = result.dense.metrics.main_name
    engine = next((r["engine"] for r in result.rows if r.get("engine")), "")
    print_table(f"Sweep: {cfg.use_case} {cfg.model}, optim levels {','.join(f'{x:g}' for x in result.options.levels)}"
                f" ({main} of the ONNX files on {engine}; * = recommended)",
                ("level", "sparsity", main, "change", "bs1 ms", f"bs{bs} items/s", "speedup bs1", f"speedup bs{bs}",
                 "MiB", "version"),
                sweep_table_rows(result.rows, bs), console)
    console.print(escape(f"Speedups: median of {cfg.benchmark_rounds} alternating rounds of one benchmark session "
                         f"timing every level against the dense model on {engine}."))
    for row in result.rows:
        if row["status"] != "FINISHED":
            console.print(escape(f"level {row['level']} failed: {row.get('failure_reason', '')} (run {row.get('run_id')})"))
    for note in result.notes:
        console.print(escape(f"note: {note}"))
    console.print(escape(f"Recommendation: {result.recommendation.reason}"))
    chosen = result.recommended
    reg = chosen.result.registered if chosen is not None else result.int8_only_version
    if reg is not None:
        what = " (INT8 alone)" if chosen is None else ""
        console.print(f"Registered [bold]{reg.name}[/] version {reg.version}{what} as @recommended and @candidate "
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
                           "int8_only": result.recommends_int8_only,
                           "run_id": None if chosen is None else chosen.run_id,
                           "registered_version": chosen.result.registered.version
                           if chosen is not None and chosen.result.registered else
                           result.int8_only_version.version if result.int8_only_version else None},
        "int8_only": None if result.int8_only is None else {"failure": result.int8_only.failure},
        "folder": str(result.folder),
        "notes": result.notes,
    }


def write_sweep_summary_json(result: Any, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sweep_summary_dict(result), indent=2, default=str))
