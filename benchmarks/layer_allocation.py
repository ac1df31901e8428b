#!/usr/bin/env python
"""What spreading the sparsity over the layers adds: `python benchmarks/layer_allocation.py [--model resnet50]`.

At one optim level (0.5 by default: 70% + INT8, 1x4 blocks), builds the model three ways with the
same overall sparsity, `uniform` (every layer 70%, what the levels write) and the two
`--recipe-args layer_allocation` choices (`by_size`, `by_compute`: each layer dense or pruned past
the break-even sparsity), plus the dense model and the INT8-only reference (the dense model
quantized post-training), the way the suite builds them (benchmarks.models.build_level: a short
recipe on generated rows, a speed figure, not an accuracy one). Times all of them in one interleaved
session (DeepSparse; OpenVINO for the dense file and the reference's QDQ twin), then runs
DeepSparse's per-layer analysis on each INT8 file at batch 1 to show where the time goes. Prints a
table; writes layer_allocation.json and layer_allocation.md to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ALLOCATIONS = ("uniform", "by_size", "by_compute")


def build(spec, level: float, allocation: str, work: Path) -> dict:
    from benchmarks.models import build_level
    from benchmarks.proc import RssSampler

    with RssSampler(interval=0.2) as sampler:
        return build_level(spec, level, work / f"{allocation}-{level:g}", work / "logs", sampler, target="vnni",
                           allocation=allocation)


def stage_times(layers: dict | None) -> dict[str, float]:
    """DeepSparse's per-layer times (ms), summed per ResNet stage (by the layer's canonical name)."""
    if not layers:
        return {}
    out: dict[str, float] = {}
    for layer in layers["layers"]:
        name = layer["canonical_name"] or layer["name"]
        stage = next((s for s in ("layer1", "layer2", "layer3", "layer4") if s in name), "stem/head/other")
        out[stage] = round(out.get(stage, 0.0) + layer["ms"], 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50", choices=("resnet50", "resnet18"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--level", type=float, default=0.5)
    p.add_argument("--top-level", type=float, default=1.0,
                   help="also build this level uniform (the sparsest the levels go), for the best figure pruning reaches")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=40, help="timed batches per file and batch size, all rounds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--work-dir", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

    from benchmarks.models import sample_rows
    from benchmarks.settings import ModelSpec
    from sparsify_mlflow.engines import cpu_info, layer_timings, openvino_status
    from sparsify_mlflow.speed_session import plan_session, run_session

    spec = ModelSpec(args.model, "vision", image_size=args.image_size)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layer-allocation-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"building {spec.describe()}: dense + INT8 alone, level {args.level:g} x {', '.join(ALLOCATIONS)}, "
          f"level {args.top_level:g} uniform", flush=True)
    dense = build(spec, 0.0, "uniform", work)
    builds = {a: build(spec, args.level, a, work) for a in ALLOCATIONS}
    if args.top_level != args.level:
        builds[f"uniform L{args.top_level:g}"] = build(spec, args.top_level, "uniform", work)
    reference = dense["int8_only"]

    files = {"dense": Path(dense["onnx_path"]), "int8-only": Path(reference["onnx_path"]),
             **{a: Path(b["onnx_path"]) for a, b in builds.items()}}
    with_openvino = openvino_status()[0]
    engines = {label: ("deepsparse", *(("openvino",) if with_openvino and label in ("dense", "int8-only") else ()))
               for label in files}
    entrants, notes = plan_session(files, engines, (1, 16), reference="dense",
                                   engine_files={"int8-only": {"openvino": Path(reference["qdq_path"])}})
    rows = sample_rows(spec, 16, seed=3)
    print(f"timing {len(files)} files, {args.rounds} interleaved rounds per batch size", flush=True)
    session = run_session(entrants, rows, iterations=args.iterations, rounds=args.rounds, notes=notes)

    table = []
    for label in files:
        entry = {"variant": label, "sparsity": builds[label]["exported_sparsity"] if label in builds else
                 (reference["exported_sparsity"] if label == "int8-only" else dense["exported_sparsity"])}
        if label in builds:
            entry["layer_sparsity"] = sorted({v for v in builds[label]["layer_sparsity"].values() if v > 0}) or \
                [builds[label]["target_sparsity"]]
            entry["dense_layers"] = sum(v == 0 for v in builds[label]["layer_sparsity"].values())
        for bs in (1, 16):
            for key, m in session.measurements[label].items():
                if key.endswith(f".bs{bs}"):
                    entry[f"{key}.ms"] = round(m.result.latency_ms_median, 3)
            vs_int8 = session.ratio("int8-only", label, f"deepsparse.bs{bs}",
                                    session.fastest("int8-only", bs))
            vs_dense = session.ratio("dense", label, f"deepsparse.bs{bs}")
            if vs_int8 is not None and label != "int8-only":
                entry[f"x_int8_only.bs{bs}"] = [round(vs_int8.value, 3), round(vs_int8.low, 3), round(vs_int8.high, 3)]
            if vs_dense is not None and label != "dense":
                entry[f"x_dense_deepsparse.bs{bs}"] = round(vs_dense.value, 3)
        table.append(entry)
    reliability = session.reliability()
    print("per-layer analysis (DeepSparse, batch 1) ...", flush=True)
    layers = layer_timings({label: files[label] for label in ("int8-only", *builds)}, rows, 1)

    cpu = cpu_info()
    machine = f"{cpu['model']}, {cpu['cores']} cores, ISA {cpu['isa']}{' + VNNI' if cpu['vnni'] else ''}"
    md = [f"{spec.describe()}, level {args.level:g} (1x4 blocks), {machine}; {args.rounds} interleaved rounds, "
          f"{'reliable' if reliability.reliable else 'UNRELIABLE: ' + reliability.reason}.", "",
          "| variant | sparsity (file) | layers | DS bs1 ms | DS bs16 ms | x INT8 alone bs1 | x INT8 alone bs16 | "
          "DS per-stage ms at bs1 (layer1/2/3/4, other) |", "|---|---|---|---|---|---|---|---|"]
    int8_fastest = {bs: session.fastest("int8-only", bs) for bs in (1, 16)}
    for entry in table:
        label = entry["variant"]
        shape = "" if "layer_sparsity" not in entry else \
            f"{'/'.join(f'{v:g}' for v in entry['layer_sparsity'])}, {entry['dense_layers']} dense"
        x = {bs: "" if f"x_int8_only.bs{bs}" not in entry else
             "{:.2f}x [{:.2f}-{:.2f}]".format(*entry[f"x_int8_only.bs{bs}"]) for bs in (1, 16)}
        stages = stage_times(layers.get(label))
        per_stage = " / ".join(f"{stages.get(s, 0):.1f}" for s in ("layer1", "layer2", "layer3", "layer4",
                                                                     "stem/head/other")) if stages else ""
        md.append(f"| {label} | {entry['sparsity']:.2f} | {shape} | {entry.get('deepsparse.bs1.ms', '')} | "
                  f"{entry.get('deepsparse.bs16.ms', '')} | {x[1]} | {x[16]} | {per_stage} |")
    reference_ms = next(e for e in table if e["variant"] == "int8-only")
    timed = ", ".join(f"{k.removesuffix('.ms')} {v} ms" for k, v in reference_ms.items() if k.endswith(".ms"))
    md += ["", f"INT8 alone's fastest engine: bs1 {int8_fastest[1]}, bs16 {int8_fastest[16]} ({timed})."]
    text = "\n".join(md) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layer_allocation.json").write_text(json.dumps({
        "model": spec.describe(), "level": args.level, "machine": machine, "cpu": cpu, "rounds": args.rounds,
        "reliable": reliability.reliable, "load": reliability.reason, "table": table, "notes": session.notes,
        "layers_bs1": layers, "builds": {a: {k: v for k, v in b.items() if k != "int8_only"} for a, b in builds.items()},
        "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2, default=str))
    (args.out / "layer_allocation.md").write_text(text)
    print(f"wrote {args.out / 'layer_allocation.json'}; files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
