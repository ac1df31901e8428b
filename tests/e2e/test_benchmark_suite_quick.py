"""`python benchmarks/run.py --quick` runs end to end and writes complete results (schema, not speed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, use_every_cpu

ROOT = REPO


def _figure(fig: dict, where: str) -> None:
    assert set(fig) >= {"median", "unit", "runs"}, where
    assert isinstance(fig["runs"], list) and fig["runs"], f"{where}: no runs"
    assert fig["median"] is not None and fig["median"] >= 0, where


@pytest.mark.e2e
def test_quick_suite_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = dict(os.environ, NM_DISABLE_ANALYTICS="1", HF_HUB_OFFLINE="1")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                          preexec_fn=use_every_cpu)  # --quick runs its sections side by side
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets" in proc.stdout  # the printed table
    check_results(json.loads((out / "results.json").read_text()), (out / "results.md").read_text())


def check_results(res: dict, md: str) -> None:
    """The schema of results.json (and results.md) that README.md documents."""
    assert res["schema_version"] == 1 and res["mode"] == "quick" and not res["errors"]
    assert {"isa", "vnni", "cores", "model", "deepsparse_status"} <= set(res["machine"])
    assert {"torch", "sparseml", "deepsparse", "onnxruntime", "mlflow"} <= set(res["versions"])
    assert res["settings"]["levels"] and res["wall_seconds"] > 0

    engine = res["sections"]["engine"]
    assert [m["kind"] for m in engine["models"]] == ["vision", "bert"]
    from sparsify_mlflow.engines import openvino_status
    from sparsify_mlflow.levels import target_sparsity

    for model in engine["models"]:  # a level that prunes once per --target of the suite, with its mask
        expected = [(lv, t) for lv in res["settings"]["levels"]
                    for t in (res["settings"]["targets"] if target_sparsity(lv) > 0 else ["auto"])]
        assert [(row["level"], row["target"]) for row in model["levels"]] == expected
        assert all((row["mask_type"] == "block4") == (row["target"] == "vnni") for row in model["levels"])
        # built as the use case builds it: image classification spreads the sparsity by_compute
        shipped = "by_compute" if model["kind"] == "vision" else "uniform"
        assert {row["layer_allocation"] for row in model["levels"] if row["target_sparsity"] > 0} == {shipped}
        assert set(model["best_dense"]) == {"bs1", "bs16"}
        assert all(key.endswith(".L0") for key in model["best_dense"].values()), model["best_dense"]
        for bs in ("bs1", "bs16"):
            _figure(model["onnxruntime_dense"][bs]["items_per_second"], f"{model['model']} ORT {bs}")
        for row in model["levels"]:
            where = f"{model['model']} level {row['level']}"
            assert 0.0 <= row["exported_sparsity"] <= 1.0, where
            assert row["fraction_of_supported_ops"] is not None, where
            assert row["export"]["export_seconds"] > 0, where
            for bs in ("bs1", "bs16"):
                entry = row["deepsparse"][bs]
                for key in ("latency_ms", "items_per_second", "speedup_vs_deepsparse_dense",
                            "speedup_vs_onnxruntime_dense", "speedup_vs_best_dense"):
                    _figure(entry[key], f"{where} {bs} {key}")
                assert len(entry["latency_ms"]["runs"]) == res["settings"]["rounds"], where
                assert row["compile"][bs]["compile_seconds"] > 0, where
        dense = next(r for r in model["levels"] if r["level"] == 0)
        assert dense["deepsparse"]["bs16"]["speedup_vs_deepsparse_dense"]["median"] == pytest.approx(1.0)
        reference = model["int8_only"]  # the dense model quantized post-training, on each engine
        assert reference["quantized"] and reference["exported_sparsity"] < 0.2, reference
        engines = ["deepsparse", *(["openvino"] if openvino_status()[0] else [])]
        for engine in engines:
            for bs in ("bs1", "bs16"):
                _figure(reference[engine][bs]["latency_ms"], f"{model['model']} INT8 alone on {engine} {bs}")
        for bs in ("bs1", "bs16"):
            assert reference["fastest"][bs].split(".")[0] in engines
            for row in model["levels"]:
                _figure(row["deepsparse"][bs]["speedup_vs_int8_only"], f"{model['model']} {row['level']} vs INT8 {bs}")
                # the suite's OpenVINO levels also run on OpenVINO (the QDQ twin); the faster engine is named
                on_openvino = openvino_status()[0] and row["level"] in res["settings"]["openvino_levels"]
                assert set(row["openvino"]) == ({"bs1", "bs16"} if on_openvino else set()), row["level"]
                if on_openvino:
                    _figure(row["openvino"][bs]["speedup_vs_int8_only"], f"{model['model']} {row['level']} OV {bs}")
                assert row["fastest"][bs] in engines
            if openvino_status()[0]:
                _figure(model["openvino_dense"][bs]["latency_ms"], f"{model['model']} OpenVINO dense {bs}")

    training = res["sections"]["training"]
    assert {"plain", "dense", "pruning", "qat"} <= set(training["phases"])
    for phase, fig in training["phases"].items():
        _figure(fig["step_ms"], f"training {phase}")
        _figure(fig["step_vs_plain"], f"training {phase}")
        _figure(fig["peak_rss_mb"], f"training {phase}")

    e2e = res["sections"]["e2e"]
    _figure(e2e["wall_seconds"], "e2e wall")
    _figure(e2e["peak_rss_mb"], "e2e peak rss")
    assert {"baseline_training", "training_aware_training", "export", "benchmark", "registration"} <= set(e2e["stages"])

    names = " ".join(t["name"] for t in res["targets"])
    assert "level 1" in names and "fully supported" in names and "main job" in names
    assert all(t["status"] in ("PASS", "FAIL", "N/A") for t in res["targets"])
    assert "| engine: level |" in md and "Targets" in md
    assert ("| OV: 1 block4 QDQ |" in md) == openvino_status()[0]  # BERT level 1 on OpenVINO
