#!/usr/bin/env python
"""What a recipe choice costs in accuracy: `python benchmarks/recipe_accuracy.py [--examples ...] [--variants ...]`.

Runs the offline examples (digits, the packaged MiniLM on the embedded text set and on the real
docstring set, NER) as sweeps over
levels 0.5 and 1.0, once per variant: the mask (`unstructured` = `--target default`, `block4` =
`--target vnni`) and the layer allocation (`block4-by_size`, `block4-by_compute`: `--recipe-args
layer_allocation`, level 0.5 only, as 1.0 is past the break-even sparsity and so uniform anyway).
All in one MLflow store, so each example trains its dense baseline once and every variant is compared
with the same one. The figure is the metric of the exported file on the deployment engine (what
ships) against the dense export, per machine. Results accumulate in --out/recipe_accuracy.json (a
later run adds or replaces its own rows) and the table is rewritten to recipe_accuracy.md. Speed is
not judged here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VARIANTS = {
    "unstructured": (["--target", "default"], "0.5,1.0"),
    "block4": (["--target", "vnni"], "0.5,1.0"),
    "block4-by_size": (["--target", "vnni", "--recipe-args", '{"layer_allocation": "by_size"}'], "0.5"),
    "block4-by_compute": (["--target", "vnni", "--recipe-args", '{"layer_allocation": "by_compute"}'], "0.5"),
    # where the points go on real text: no distillation, distillation alone (no label loss), a short
    # schedule (its dense baseline is trained as short), the short schedule with a longer GMP ramp
    "block4-teacher_off": (["--target", "vnni", "--teacher", "off"], "0.5"),
    "block4-hardness_1": (["--target", "vnni", "--distill-hardness", "1.0"], "0.5"),
    "block4-3_epochs": (["--target", "vnni", "--epochs", "3"], "0.5"),
    "block4-3_epochs-long_ramp": (["--target", "vnni", "--epochs", "3", "--recipe-args",
                                   '{"num_pruning_active_epochs": 1.5}'], "0.5"),
    # more epochs than the default 6 (its dense baseline is trained as long): a longer ramp and stabilisation
    "block4-10_epochs": (["--target", "vnni", "--epochs", "10"], "0.5"),
    # levers at the default 6 epochs: a shorter QAT (longer ramp and stabilisation); the pruned model's
    # learning rate (it starts from the trained dense one) at 0.5, 1, 2 and 4 times the text use cases'
    # --lr (1e-4; text classification's default is 2x since pruned_lr_scale); a slower ramp
    "block4-qat_1": (["--target", "vnni", "--recipe-args", '{"num_qat_epochs": 1}'], "0.5"),
    "block4-lr_1x": (["--target", "vnni", "--recipe-args", '{"init_lr": 0.0001}'], "0.5"),
    "block4-lr_half": (["--target", "vnni", "--recipe-args", '{"init_lr": 5e-05}'], "0.5"),
    "block4-lr_double": (["--target", "vnni", "--recipe-args", '{"init_lr": 0.0002}'], "0.5"),
    "block4-lr_x4": (["--target", "vnni", "--recipe-args", '{"init_lr": 0.0004}'], "0.5"),
    "block4-ramp_3": (["--target", "vnni", "--recipe-args", '{"num_pruning_active_epochs": 3}'], "0.5"),
}
# Each variant on other seeds (another split, its own dense baseline), to see how far one run's drop
# moves: "block4-lr_double-seed_1".
SEEDS = (1, 2, 3, 4)
VARIANTS |= {f"{name}-seed_{seed}": ([*flags, "--seed", str(seed)], levels)
             for name, (flags, levels) in list(VARIANTS.items()) for seed in SEEDS}
# The offline examples' own arguments (examples/*_offline.sh), at the use case's default epochs.
EXAMPLES = {
    "digits": ["--use-case", "cv-classification"],
    "text": ["--use-case", "text_classification", "--data", "embedded:3000"],
    # real text (docstrings of eight installed libraries, labelled by library; dense MiniLM < 95%)
    "docstrings": ["--use-case", "text_classification", "--data", "embedded:docstrings", "--max-seq-length", "64"],
    "ner": ["--use-case", "ner", "--data", "embedded:1500", "--max-seq-length", "64"],
}
# Speed is not measured here: the shortest benchmark the session accepts, no INT8-only reference.
QUIET = ["--no-int8-reference", "--benchmark-rounds", "1", "--benchmark-iterations", "3", "--no-register"]


def run_sweep(example: str, variant: str, store: str, work: Path, only_levels: str | None = None) -> dict:
    flags, levels = VARIANTS[variant]
    levels = only_levels or levels
    summary = work / f"{example}-{variant}.json"
    command = [sys.executable, "-m", "sparsify_mlflow", "sweep", *EXAMPLES[example], "--optim-levels", levels,
               *flags, "--tracking-uri", store, "--experiment-name", f"recipe-accuracy-{example}",
               "--working-dir", str(work), "--summary-json", str(summary), *QUIET]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{example} {variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def rows_of(example: str, variant: str, sweep: dict, machine: str, store: str) -> list[dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    table = {row["level"]: row for row in sweep["table"]}
    dense = table["dense"]
    dense_lr = float(client.get_run(sweep["dense_run_id"]).data.params["recipe.lr"])
    return [{"example": example, "variant": variant, "level": float(level), "metric": dense["main_metric"],
             "machine": machine,
             "dense": dense["main"], "sparse": row["main"], "drop_pt": round(100 * (dense["main"] - row["main"]), 2),
             "sparsity": row["sparsity"], "dense_run_id": sweep["dense_run_id"], "run_id": row["run_id"],
             "lr": float(client.get_run(row["run_id"]).data.params["recipe.lr"]), "dense_lr": dense_lr,
             "wall_seconds": sweep["wall_seconds"]}
            for level, row in table.items() if level not in ("dense", "int8-only")]


def same_run(row: dict) -> tuple:
    """What a new row replaces: the same example, variant, level and machine at the same rates (a variant
    without init_lr follows the use case's default, which may change)."""
    return row["example"], row["variant"], row["level"], row["machine"], row.get("lr"), row.get("dense_lr")


def lr_scale(row: dict) -> float:
    """The pruned model's starting rate as a multiple of its dense baseline's (rows before rates were kept: 1)."""
    return row["lr"] / row["dense_lr"] if row.get("lr") and row.get("dense_lr") else 1.0


def markdown(rows: list[dict], machine: str) -> str:
    """One line per measured file, grouped by example, level and machine (each machine and seed keeps its own
    dense baseline, so the change is against the baseline on the same line)."""
    lines = ["Metric of the exported file (ONNX on the deployment engine) against the dense export trained on the "
             "same machine and seed; `lr` is the pruned model's starting rate as a multiple of the dense model's.", "",
             "| example | metric | level | machine | variant | lr | dense | file | change (pt) | sparsity |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = list(VARIANTS)
    for r in sorted(rows, key=lambda r: (list(EXAMPLES).index(r["example"]), r["level"], r["machine"] or machine,
                                         order.index(r["variant"]) if r["variant"] in order else len(order))):
        change = 0.0 - r["drop_pt"] + 0.0  # + 0.0: no "-0.0"
        lines.append(f"| {r['example']} | {r['metric']} | {r['level']:g} | {r['machine'] or machine} | {r['variant']} "
                     f"| {lr_scale(r):g}x | {r['dense']:.4f} | {r['sparse']:.4f} | {change:+.1f} | {r['sparsity']:.2f} |")
    return "\n".join(lines) + "\n"


def subset(text: str, known: dict, flag: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    p.add_argument("--examples", default=",".join(EXAMPLES), help=f"comma-separated subset of {', '.join(EXAMPLES)}")
    p.add_argument("--variants", default="unstructured,block4", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--levels", default=None, help="these optim levels instead of each variant's own (e.g. 0.5)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the store and experiment folders here "
                   "(reusing a store reuses its dense baselines)")
    args = p.parse_args()
    examples = subset(args.examples, EXAMPLES, "--examples", p)
    variants = subset(args.variants, VARIANTS, "--variants", p)
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="recipe-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'mlflow.db'}"
    from benchmarks.proc import machine_label
    from sparsify_mlflow.engines import cpu_info

    cpu = cpu_info()
    machine = machine_label(cpu)
    results = args.out / "recipe_accuracy.json"
    earlier = json.loads(results.read_text()) if results.is_file() else {"rows": []}
    rows = [{"machine": earlier.get("machine")} | r for r in earlier["rows"]]  # rows before per-row machines
    for example in examples:
        for variant in variants:
            print(f"{example}: {variant} ...", flush=True)
            new = rows_of(example, variant, run_sweep(example, variant, store, work, args.levels), machine, store)
            replaced = {same_run(r) for r in new}
            rows = [r for r in rows if same_run(r) not in replaced] + new
    table = markdown(rows, machine)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"machine": machine, "cpu": cpu, "rows": rows}, indent=2))  # machine: the latest
    (args.out / "recipe_accuracy.md").write_text(table)
    print(f"wrote {results} and recipe_accuracy.md; store: {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
