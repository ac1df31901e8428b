#!/usr/bin/env python
"""What spreading the sparsity over the layers adds: `python benchmarks/layer_allocation.py [--model resnet50]`.

At one optim level (0.5 by default: 70% + INT8, 1x4 blocks), builds the model three ways with the
same overall sparsity, `uniform` (every layer 70%, what the levels write) and the two
`--recipe-args layer_allocation` choices (`by_size`, `by_compute`: each layer dense or pruned past
the break-even sparsity), plus the dense model and the INT8-only reference (the dense model
quantized post-training), the way the suite builds them (benchmarks.models.build_level: a short
recipe on generated rows, a speed figure, not an accuracy one). Times all of them in one interleaved
session (DeepSparse; OpenVINO for the dense file and every INT8 file's QDQ twin), then runs
DeepSparse's per-layer analysis on each INT8 file at batch 1 to show where the time goes, summed by
ResNet stage or by BERT layer kind. Prints a table; writes layer_allocation.json and
layer_allocation.md to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


VISION_GROUPS = ("layer1", "layer2", "layer3", "layer4", "other")
# BERT encoder layers by what they compute; "other": embeddings, layer norms, softmax, GELU, head
BERT_GROUPS = ("query/key/value", "attention matmuls", "attention output", "FFN up", "FFN down", "other")
_BERT_LINEAR = re.compile(r"attention[./_]self[./_](query|key|value)|attention[./_]output[./_]dense|"
                          r"intermediate[./_]dense|output[./_]dense")


def group_of(name: str, kind: str) -> str:
    """The group (VISION_GROUPS or BERT_GROUPS) a layer's ONNX node name belongs to."""
    if kind == "vision":
        return next((s for s in VISION_GROUPS[:4] if s in name), "other")
    match = _BERT_LINEAR.search(name)
    if match is None:
        return "attention matmuls" if re.search(r"attention[./_]self", name) and "MatMul" in name else "other"
    text = match.group(0)
    return ("query/key/value" if match.group(1) else "attention output" if text.startswith("attention")
            else "FFN up" if text.startswith("intermediate") else "FFN down")


def group_times(layers: dict | None, kind: str) -> dict[str, float]:
    """DeepSparse's per-layer times (ms), summed per group (by the layer's canonical name)."""
    if not layers:
        return {}
    out: dict[str, float] = {}
    for layer in layers["layers"]:
        group = group_of(layer["canonical_name"] or layer["name"], kind)
        out[group] = round(out.get(group, 0.0) + layer["ms"], 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50", choices=("resnet50", "resnet18", "bert-base"))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seq-len", type=int, default=128, help="bert-base: the sequence length timed")
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
    from benchmarks.proc import machine_label
    from benchmarks.settings import ModelSpec
    from sparsify_mlflow.engines import cpu_info, layer_timings, openvino_status
    from sparsify_mlflow.speed_session import plan_session, run_session

    spec = (ModelSpec(args.model, "bert", seq_len=args.seq_len) if args.model == "bert-base"
            else ModelSpec(args.model, "vision", image_size=args.image_size))
    groups = BERT_GROUPS if spec.kind == "bert" else VISION_GROUPS
    # every linear layer of a transformer runs once per token: by_compute is by_size there
    allocations = ALLOCATIONS if spec.kind == "vision" else ("uniform", "by_compute")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layer-allocation-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"building {spec.describe()}: dense + INT8 alone, level {args.level:g} x {', '.join(allocations)}, "
          f"level {args.top_level:g} uniform", flush=True)
    dense = build(spec, 0.0, "uniform", work)
    builds = {a: build(spec, args.level, a, work) for a in allocations}
    if args.top_level != args.level:
        builds[f"uniform L{args.top_level:g}"] = build(spec, args.top_level, "uniform", work)
    reference = dense["int8_only"]

    files = {"dense": Path(dense["onnx_path"]), "int8-only": Path(reference["onnx_path"]),
             **{a: Path(b["onnx_path"]) for a, b in builds.items()}}
    # OpenVINO runs the dense file and each INT8 file's QDQ twin (with sparse weights where the CPU has AMX)
    twins = {"int8-only": reference["qdq_path"], **{a: b["qdq_path"] for a, b in builds.items() if b.get("qdq_path")}}
    with_openvino = openvino_status()[0]
    engines = {label: ("deepsparse", *(("openvino",) if with_openvino and (label == "dense" or label in twins) else ()))
               for label in files}
    entrants, notes = plan_session(files, engines, (1, 16), reference="dense",
                                   engine_files={label: {"openvino": Path(path)} for label, path in twins.items()})
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
        vs_int8 = session.fastest_ratios("int8-only", label)  # the file's fastest engine vs INT8 alone's
        for bs in (1, 16):
            for key, m in session.measurements[label].items():
                if key.endswith(f".bs{bs}"):
                    entry[f"{key}.ms"] = round(m.result.latency_ms_median, 3)
            entry[f"fastest.bs{bs}"] = session.fastest(label, bs)
            vs_dense = session.ratio("dense", label, f"deepsparse.bs{bs}")
            if bs in vs_int8 and label != "int8-only":
                best = vs_int8[bs]
                entry[f"x_int8_only.bs{bs}"] = [round(best.value, 3), round(best.low, 3), round(best.high, 3)]
            if vs_dense is not None and label != "dense":
                entry[f"x_dense_deepsparse.bs{bs}"] = round(vs_dense.value, 3)
        table.append(entry)
    reliability = session.reliability()
    print("per-layer analysis (DeepSparse, batch 1) ...", flush=True)
    layers = layer_timings({label: files[label] for label in ("int8-only", *builds)}, rows, 1)

    cpu = cpu_info()
    machine = machine_label(cpu)
    md = [f"{spec.describe()}, level {args.level:g} (1x4 blocks), {machine}; {args.rounds} interleaved rounds, "
          f"{'reliable' if reliability.reliable else 'UNRELIABLE: ' + reliability.reason}.", "",
          "| variant | sparsity (file) | layers | DS bs1 ms | OV bs1 ms | DS bs16 ms | OV bs16 ms | x INT8 alone bs1 | "
          f"x INT8 alone bs16 | DS ms per group at bs1 ({' / '.join(groups)}) |", "|---" * 10 + "|"]
    int8_fastest = {bs: session.fastest("int8-only", bs) for bs in (1, 16)}
    for entry in table:
        label = entry["variant"]
        shape = "" if "layer_sparsity" not in entry else \
            f"{'/'.join(f'{v:g}' for v in entry['layer_sparsity'])}, {entry['dense_layers']} dense"
        x = {bs: "" if f"x_int8_only.bs{bs}" not in entry else
             "{:.2f}x [{:.2f}-{:.2f}] {}".format(*entry[f"x_int8_only.bs{bs}"],
                                                 _short(entry[f"fastest.bs{bs}"])) for bs in (1, 16)}
        times = group_times(layers.get(label), spec.kind)
        per_group = " / ".join(f"{times.get(g, 0):.1f}" for g in groups) if times else ""
        md.append(f"| {label} | {entry['sparsity']:.2f} | {shape} | {entry.get('deepsparse.bs1.ms', '')} | "
                  f"{entry.get('openvino.bs1.ms', '')} | {entry.get('deepsparse.bs16.ms', '')} | "
                  f"{entry.get('openvino.bs16.ms', '')} | {x[1]} | {x[16]} | {per_group} |")
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


def _short(key: str | None) -> str:
    """"openvino.bs1" -> "(OV)": which engine a ratio's sparse side ran on."""
    return "" if not key else "(OV)" if key.startswith("openvino") else "(DS)"


if __name__ == "__main__":
    sys.exit(main())
