"""results.json -> tables: built once as (title, header, rows, notes), rendered by rich and as markdown."""
from __future__ import annotations

from typing import Any

from benchmarks.targets import ENGINE_NAMES

Table = tuple[str, list[str], list[list[str]], list[str]]


def _f(value: Any, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, fmt)}{suffix}"


def _med(fig: Any) -> Any:
    return fig.get("median") if isinstance(fig, dict) else None


def _spread(fig: Any, fmt: str) -> str:
    """'median (min-max of the runs)' so the reader sees how stable a figure was."""
    if not isinstance(fig, dict) or fig.get("median") is None:
        return "-"
    runs = fig.get("runs") or []
    if len(runs) < 2:
        return format(fig["median"], fmt)
    return f"{format(fig['median'], fmt)} ({format(min(runs), fmt)}-{format(max(runs), fmt)})"


def machine_lines(res: dict[str, Any]) -> list[str]:
    m, v, load = res["machine"], res["versions"], res.get("load", {})
    lines = [
        f"CPU: {m.get('model')} ({m.get('vendor')}), {m.get('cores')} cores / {m.get('threads')} threads, "
        f"ISA {m.get('isa')}, VNNI {'yes' if m.get('vnni') else 'no'}, AMX {'yes' if m.get('amx') else 'no'} "
        f"(DeepSparse: {m.get('deepsparse_status')})",
        f"deepsparse {v.get('deepsparse')}, sparseml {v.get('sparseml')}, torch {v.get('torch')}, "
        f"onnxruntime {v.get('onnxruntime')}; mode {res['mode']}; {res['settings']['rounds']} rounds per figure",
    ]
    if load.get("other_cpu_cores") is not None:
        lines.append(f"Other processes used {load['other_cpu_cores']:.2f} of {m.get('threads')} CPUs on average "
                     f"during the suite (load average {load.get('loadavg_start', ['?'])[0]:.2f} at start, "
                     f"{load.get('loadavg_end', ['?'])[0]:.2f} at end): figures on a busy machine are noisier; "
                     "ratios are per-round, side by side")
    return lines


def engine_tables(res: dict[str, Any]) -> list[Table]:
    engine = res["sections"].get("engine")
    if not engine:
        return []
    bs_lat, bs_tp = res["settings"]["batch_sizes"]
    tables = []
    for model in engine["models"]:
        header = ["engine: level", "sparsity target / exported", "INT8", "supported ops",
                  f"bs{bs_lat} ms", f"bs{bs_lat} best ms", f"bs{bs_tp} items/s",
                  f"x DS dense bs{bs_lat}", f"x DS dense bs{bs_tp}", f"x best dense bs{bs_lat}", f"x best dense bs{bs_tp}",
                  f"x INT8 alone bs{bs_lat}", f"x INT8 alone bs{bs_tp}"]
        rows = []
        ort = model["onnxruntime_dense"]
        rows.append(["ORT: 0", "0 / -", "no", "-", _spread(ort.get(f"bs{bs_lat}", {}).get("latency_ms"), ".1f"),
                     _f(_med(ort.get(f"bs{bs_lat}", {}).get("latency_ms_best")), ".1f"),
                     _spread(ort.get(f"bs{bs_tp}", {}).get("items_per_second"), ".1f"), *["-"] * 6])
        rows += _reference_rows(model, bs_lat, bs_tp)
        notes = []
        for row in model["levels"]:
            rows.append(_level_row(row, "deepsparse", bs_lat, bs_tp))
            for bs, why in row.get("failures", {}).items():
                notes.append(f"level {row['level']:g} {row.get('mask_type') or ''} {bs}: {why}")
        rows += [_level_row(row, "openvino", bs_lat, bs_tp) for row in model["levels"] if row.get("openvino")]
        best = model.get("best_dense") or {}
        if best:
            notes.append("best dense: the fastest engine for the dense FP32 file (" + ", ".join(
                f"{bs} {ENGINE_NAMES.get(str(key).split('.')[0], key)}" for bs, key in best.items()) + ")")
        notes.append("INT8 alone: the dense model quantized post-training (calibrated on generated rows: a speed "
                     "figure, not an accuracy one); x INT8 alone compares each level with its fastest engine. "
                     "OV = OpenVINO: the dense file at its default precision (bf16 on AVX512_BF16/AMX CPUs), an INT8 "
                     "file with its float ops at f32; 'OV: 0.5 block4 QDQ' is OpenVINO on the QDQ twin of the level's INT8 "
                     "file (sparse weights packed on AMX CPUs only).")
        notes.append("Medians of per-run medians (min-max over runs in brackets); best = median over runs of "
                     "each run's fastest batch (less sensitive to other processes); speedups are medians of "
                     "per-round ratios to the dense FP32 model measured in the same round. Exported sparsity "
                     "counts all conv/matmul weights, including the layers kept dense.")
        tables.append((f"1. Engine speedup by optim level: {model['description']}", header, rows, notes))
    return tables


def _level_row(row: dict[str, Any], engine: str, bs_lat: int, bs_tp: int) -> list[str]:
    """One level's file on one engine ("OV: 0.5 block4 QDQ" is OpenVINO on the file's QDQ twin)."""
    lat, tp = row[engine].get(f"bs{bs_lat}", {}), row[engine].get(f"bs{bs_tp}", {})
    label = ("DS: " if engine == "deepsparse" else "OV: ") + f"{row['level']:g}"
    if row.get("mask_type") not in (None, "none"):
        label += f" {row['mask_type']}"
    if row["target_sparsity"] and row.get("layer_allocation") not in (None, "uniform"):
        label += f" {row['layer_allocation']}"
    return [label + (" QDQ" if engine == "openvino" else ""),
            f"{row['target_sparsity']:.2f} / {row['exported_sparsity']:.3f}",
            "yes" if row["quantized"] else "no",
            _f(row.get("fraction_of_supported_ops"), ".2f") if engine == "deepsparse" else "-",
            _spread(lat.get("latency_ms"), ".1f"), _f(_med(lat.get("latency_ms_best")), ".1f"),
            _spread(tp.get("items_per_second"), ".1f"),
            *(_f(_med(fig.get(name)), ".2f") for name in ("speedup_vs_deepsparse_dense", "speedup_vs_best_dense",
                                                          "speedup_vs_int8_only") for fig in (lat, tp))]


def _reference_rows(model: dict[str, Any], bs_lat: int, bs_tp: int) -> list[list[str]]:
    """OpenVINO's dense file and the INT8-only reference on each engine, as rows of the engine table."""
    rows = []
    ov = model.get("openvino_dense") or {}
    if ov:
        rows.append(["OV: 0", "0 / -", "no", "-", _spread(ov.get(f"bs{bs_lat}", {}).get("latency_ms"), ".1f"),
                     _f(_med(ov.get(f"bs{bs_lat}", {}).get("latency_ms_best")), ".1f"),
                     _spread(ov.get(f"bs{bs_tp}", {}).get("items_per_second"), ".1f"), *["-"] * 6])
    reference = model.get("int8_only") or {}
    for engine, short in (("deepsparse", "DS"), ("openvino", "OV")):
        timed = reference.get(engine) or {}
        if timed:
            rows.append([f"{short}: INT8 alone", f"0 / {reference['exported_sparsity']:.3f}",
                         "yes" if reference["quantized"] else "no", "-",
                         _spread(timed.get(f"bs{bs_lat}", {}).get("latency_ms"), ".1f"),
                         _f(_med(timed.get(f"bs{bs_lat}", {}).get("latency_ms_best")), ".1f"),
                         _spread(timed.get(f"bs{bs_tp}", {}).get("items_per_second"), ".1f"), *["-"] * 6])
    return rows


def training_table(res: dict[str, Any]) -> list[Table]:
    tr = res["sections"].get("training")
    if not tr:
        return []
    header = ["phase", "median step ms", "x plain", "mean step ms", "peak RSS MB", "x plain", "steps/run"]
    names = {"plain": "plain PyTorch loop", "dense": "dense (level-0 recipe)", "pruning": "pruning ramp (GMP)",
             "stabilisation": "pruned, masks held", "qat": "QAT (pruned + INT8 fake-quant)"}
    rows = []
    for phase, fig in tr["phases"].items():
        rows.append([names.get(phase, phase), _spread(fig["step_ms"], ".0f"), _f(_med(fig["step_vs_plain"]), ".2f"),
                     _f(_med(fig.get("mean_step_ms")), ".0f"),
                     _f(_med(fig["peak_rss_mb"]), ".0f"), _f(_med(fig["peak_rss_vs_plain"]), ".2f"),
                     ",".join(str(s) for s in fig["steps_per_run"])])
    title = (f"2. Training cost: {tr['model']} {tr['image_size']}px batch {tr['batch_size']}, optim level "
             f"{tr['optim_level']:g} recipe, {tr['threads']} torch threads")
    notes = ["Step = start of one step to the start of the next (data, forward, backward, optimizer step with "
             "the recipe's hooks); median = a typical step, mean = including the pruning ramp's mask updates. "
             "Peak RSS per phase is sampled in the training process (phases of one run "
             "follow each other, so a later phase includes what an earlier one kept); plain and dense are "
             "whole-process peaks of their own runs."]
    return [(title, header, rows, notes)]


def e2e_table(res: dict[str, Any]) -> list[Table]:
    e2e = res["sections"].get("e2e")
    if not e2e:
        return []
    wall = _med(e2e["wall_seconds"])
    header = ["stage", "seconds", "share", "peak RSS MB"]
    rows = []
    for name, fig in e2e["stages"].items():
        sec = _med(fig["seconds"])
        rows.append([name, _f(sec, ".1f"), _f(None if not sec or not wall else sec / wall, ".0%"),
                     _f(_med(fig["peak_rss_mb"]), ".0f")])
    rows.append(["total (wall)", _spread(e2e["wall_seconds"], ".1f"), "100%", _f(_med(e2e["peak_rss_mb"]), ".0f")])
    notes = [f"Command: {e2e['command']}. Stages from {e2e['stage_source']}. Peak RSS: the job's process "
             "tree (it starts DeepSparse probe subprocesses), sampled every 0.2 s."]
    tables = [("3. End to end: the default main job", header, rows, notes)]
    speedups = {k: v for k, v in e2e.get("speedups", {}).items() if not k.endswith((".min", ".max"))}
    if speedups:
        runs = e2e["runs"]
        rows = [[name.removeprefix("speedup."), *(f"{r['speedups'][name]:.2f} [{r['speedups'][name + '.min']:.2f}-"
                                                  f"{r['speedups'][name + '.max']:.2f}]" if name in r["speedups"] else "-"
                                                  for r in runs)] for name in speedups]
        rows.append(["reliable", *("yes" if r["benchmark_reliable"] else f"no: {r['benchmark_load']}" for r in runs)])
        tables.append(("3b. The default job's speedups (sparse vs dense, same engine)",
                       ["engine.batch", *(f"run {i + 1}" for i in range(len(runs)))], rows,
                       ["Each cell: the job's own benchmark session, median [min-max] of its per-round ratios."]))
    return tables


def export_table(res: dict[str, Any]) -> list[Table]:
    engine = res["sections"].get("engine")
    if not engine:
        return []
    bs_lat, bs_tp = res["settings"]["batch_sizes"]
    header = ["model", "level", "export s", "export peak RSS MB (+delta)", "ONNX MB (gzip)",
              f"DS compile s bs{bs_lat}", f"DS compile s bs{bs_tp}", f"compile +RSS MB bs{bs_tp}"]
    rows = []
    for model in engine["models"]:
        for row in model["levels"]:
            ex, comp = row["export"], row["compile"]
            star = "*" if row.get("built_in_parallel") else ""
            rows.append([model["model"], f"{row['level']:g}", _f(ex["export_seconds"], ".1f", star),
                         f"{_f(ex['export_peak_rss_mb'], '.0f')} (+{_f(ex['export_peak_rss_delta_mb'], '.0f')})",
                         f"{row['onnx_bytes'] / 1e6:.1f} ({row['onnx_gzip_bytes'] / 1e6:.1f})",
                         _f(comp.get(f"bs{bs_lat}", {}).get("compile_seconds"), ".1f"),
                         _f(comp.get(f"bs{bs_tp}", {}).get("compile_seconds"), ".1f"),
                         _f(comp.get(f"bs{bs_tp}", {}).get("compile_peak_rss_delta_mb"), ".0f")])
    notes = ["export_onnx once per model (one build each; its time includes sparseml's QAT->INT8 graph "
             "conversion and the gzip size check); compile = engines.load_engine, as "
             "BenchmarkResult.compile_seconds. Peak RSS is the building process's (training included), delta "
             "the growth during the export itself. * built two at a time with one torch thread each to save "
             "wall time: not an overhead figure."]
    return [("4. Export and compile overhead", header, rows, notes)]


def targets_table(res: dict[str, Any]) -> list[Table]:
    header = ["target", "goal", "measured", "result", "note"]
    rows = [[t["name"], t["goal"], _f(t["measured"], ".2f" if t["unit"] != "s" else ".0f", t["unit"]),
             t["status"], t["note"]] for t in res["targets"]]
    m = res["machine"]
    return [(f"Targets (machine: {m.get('isa')}, VNNI {'yes' if m.get('vnni') else 'no'}, "
             f"AMX {'yes' if m.get('amx') else 'no'})", header, rows, [])]


def all_tables(res: dict[str, Any]) -> list[Table]:
    return engine_tables(res) + training_table(res) + e2e_table(res) + export_table(res) + targets_table(res)


def print_rich(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=200)
    for line in machine_lines(res):
        console.print(line)
    for title, header, rows, notes in all_tables(res):
        table = RichTable(title=title, title_justify="left", show_lines=False)
        for col in header:
            table.add_column(col, overflow="fold")
        for row in rows:
            style = {"PASS": "green", "FAIL": "red"}.get(row[3]) if header[0] == "target" else None
            table.add_row(*row, style=style)
        console.print(table)
        for note in notes:
            console.print(f"[dim]{note}[/dim]")


def markdown(res: dict[str, Any]) -> str:
    out = [f"<!-- generated by benchmarks/run.py ({res['mode']}) on {res['finished_at']} -->", ""]
    out += [f"- {line}" for line in machine_lines(res)]
    out.append(f"- Suite wall time: {res['wall_seconds'] / 60:.1f} min")
    for title, header, rows, notes in all_tables(res):
        out += ["", f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        out += [""] + [f"_{n}_" for n in notes] if notes else []
    return "\n".join(out).rstrip() + "\n"
