"""stages.StageClock: what experiment.py logs as stage_seconds.* and timing/stages.json."""
from __future__ import annotations

import time

from sparsify_mlflow import stages


def test_stage_clock_sums_spans_per_stage() -> None:
    clock = stages.start()
    with stages.stage("export"):
        time.sleep(0.01)
    with stages.stage("benchmark"):
        pass
    with stages.stage("export"):
        time.sleep(0.01)
    totals = clock.totals()
    assert set(totals) == {"export", "benchmark"} and totals["export"] >= 0.02
    metrics = clock.metrics()
    assert metrics["stage_seconds.total"] >= metrics["stage_seconds.export"]
    spans = clock.as_dict()["spans"]
    assert [s["stage"] for s in spans] == ["export", "benchmark", "export"]
    assert all(s["start"] <= s["end"] for s in spans)


def test_stage_is_a_no_op_without_a_clock(monkeypatch) -> None:
    monkeypatch.setattr(stages, "_current", None)
    with stages.stage("export"):
        pass  # functions called alone (tests) time nothing and fail nothing
