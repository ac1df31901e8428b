"""The issue's targets, checked against the measured figures (goals to print, not test asserts)."""
from __future__ import annotations

from typing import Any

# Engine targets per ISA: speedup of DeepSparse over the dense FP32 model on DeepSparse, with the
# 1x4-block masks --target auto writes at INT8 levels. (model, batch, level) -> goal.
# AVX-512 VNNI: what 1x4 blocks gave on a 2-core Intel VNNI+AMX machine (the speed issue's table).
# AVX2 without VNNI (INT8 emulated): no lower than the last AVX2 run with unstructured masks.
ENGINE_TARGETS = {
    "avx512_vnni": {("vision", 16, 0.5): 3.4, ("vision", 16, 1.0): 5.3, ("vision", 1, 0.5): 2.3,
                    ("bert", 16, 0.5): 4.2, ("bert", 16, 1.0): 6.9, ("bert", 1, 0.5): 4.2},
    "avx2": {("vision", 16, 0.5): 1.33, ("vision", 16, 1.0): 4.24, ("vision", 1, 0.5): 2.29,
             ("bert", 16, 0.5): 1.49, ("bert", 16, 1.0): 6.54, ("bert", 1, 0.5): 2.70},
}
MASK_OF_TARGETS = "block4"


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    machine = results["machine"]
    vnni = bool(machine.get("vnni")) and machine.get("isa") == "avx512"
    isa = f"{machine.get('isa')}{' + VNNI' if machine.get('vnni') else ', no VNNI'}"
    quick = results["mode"] == "quick"
    rows: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: float | None, ok: bool | None, unit: str, note: str = "") -> None:
        if quick:
            note = (note + "; " if note else "") + "--quick: small models/short runs, not comparable"
        rows.append({"name": name, "goal": goal, "measured": measured, "unit": unit,
                     "status": "N/A" if ok is None else ("PASS" if ok else "FAIL"), "isa": isa, "note": note})

    engine = results.get("sections", {}).get("engine") or {}
    goals = ENGINE_TARGETS["avx512_vnni" if vnni else "avx2"]
    for model in engine.get("models", []):
        label = "ResNet-50" if model["kind"] == "vision" else "BERT-base-shaped"
        if model["model"] not in ("resnet50", "bert-base") or (model["kind"] == "bert" and model["spec"]["layers"] != 12):
            label += f" ({model['description']})"
        for (kind, bs, level), goal in goals.items():
            if kind != model["kind"]:
                continue
            rows_ = [r for r in model["levels"] if r["level"] == level]
            row = next((r for r in rows_ if r.get("mask_type") == MASK_OF_TARGETS), rows_[0] if rows_ else None)
            value = _get(row, "deepsparse", f"bs{bs}", "speedup_vs_deepsparse_dense", "median") if row else None
            mask = row.get("mask_type") if row else None
            if row and row.get("layer_allocation") not in (None, "uniform"):
                mask = f"{mask} {row['layer_allocation']}"
            add(f"{label} level {level:g} ({mask or 'not built'}): DeepSparse bs{bs} speedup vs dense FP32 DeepSparse",
                f">= {goal:g}x", value, None if value is None else value >= goal, "x",
                "" if row else "level not measured in this mode")
    fractions = [(m["model"], r["level"], r.get("fraction_of_supported_ops"))
                 for m in engine.get("models", []) for r in m["levels"]]
    if fractions:
        worst = min((f for *_, f in fractions if f is not None), default=None)
        missing = [f"{m} L{lv:g}" for m, lv, f in fractions if f is None]
        bad = [f"{m} L{lv:g}: {f}" for m, lv, f in fractions if f is not None and f < 1.0]
        ok = None if worst is None else (worst >= 1.0 and not missing)
        add("every exported model fully supported by DeepSparse (fraction_of_supported_ops)", "= 1.0", worst, ok,
            "", "; ".join(bad + [f"not compiled: {', '.join(missing)}"] if missing else bad))

    training = results.get("sections", {}).get("training") or {}
    for phase, goal in (("pruning", 1.5), ("qat", 2.0)):
        value = _get(training, "phases", phase, "step_vs_plain", "median")
        add(f"training-aware step time during {'pruning' if phase == 'pruning' else 'QAT'} vs plain PyTorch loop",
            f"<= {goal:g}x", value, None if value is None else value <= goal, "x")

    e2e = results.get("sections", {}).get("e2e") or {}
    wall = _get(e2e, "wall_seconds", "median")
    add("default main job wall time (2 cores)", "<= 600 s", wall, None if wall is None else wall <= 600, "s",
        f"this machine: {machine.get('cores')} cores"
        + (f", other processes used {results['load']['other_cpu_cores']:.1f} cores on average"
           if results.get("load", {}).get("other_cpu_cores") is not None else ""))
    return rows
