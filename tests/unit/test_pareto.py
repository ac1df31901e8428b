"""The sweep's verdict on hand-made numbers: Pareto fronts, the recommendation, option checks, the table."""
from __future__ import annotations

import pytest

from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.pareto import Point, pareto_front, recommend
from sparsify_mlflow.summary import sweep_table_rows
from sparsify_mlflow.sweep import build_sweep_options

DENSE = Point("dense", main=0.950, latency_ms=40.0, throughput=30.0, is_dense=True, speedup=1.0)
L01 = Point("0.1", main=0.948, latency_ms=13.0, throughput=75.0, main_drop=0.2, speedup=3.08)
L05 = Point("0.5", main=0.941, latency_ms=9.0, throughput=90.0, main_drop=0.9, speedup=4.44)
L07 = Point("0.7", main=0.930, latency_ms=9.5, throughput=110.0, main_drop=2.0, speedup=4.21)  # slower than 0.5 at bs1
L10 = Point("1.0", main=0.880, latency_ms=5.0, throughput=160.0, main_drop=7.0, speedup=8.0)
SWEEP = [DENSE, L01, L05, L07, L10]


def test_latency_front_drops_a_level_beaten_on_both_axes() -> None:
    # 0.7 is both less accurate and slower at batch size 1 than 0.5: off the latency front.
    assert pareto_front(SWEEP, "latency") == [4, 2, 1, 0]


def test_throughput_front_keeps_that_level() -> None:
    # at the throughput batch size 0.7 is faster than 0.5, so it is a fair trade there.
    assert pareto_front(SWEEP, "throughput") == [4, 3, 2, 1, 0]


def test_front_leaves_out_points_without_a_figure_and_keeps_exact_ties() -> None:
    points = [Point("a", 0.9, 10.0, None), Point("b", 0.9, 10.0, None), Point("c", 0.8, None, 50.0),
              Point("d", 0.85, 12.0, None)]
    assert sorted(pareto_front(points, "latency")) == [0, 1]
    assert pareto_front(points, "throughput") == [2]
    with pytest.raises(ValueError, match="axis"):
        pareto_front(points, "size")


def test_a_dominated_dense_baseline_is_off_the_front() -> None:
    better = Point("0.3", main=0.96, latency_ms=20.0, throughput=60.0, main_drop=-1.0, speedup=2.0)
    assert pareto_front([DENSE, better], "latency") == [1]


def test_recommends_the_fastest_level_within_the_drop() -> None:
    pick = recommend(SWEEP, max_metric_drop=1.0)
    assert pick.index == 2
    assert "level 0.5" in pick.reason and "at most 1 points" in pick.reason
    assert recommend(SWEEP, max_metric_drop=10.0).index == 4
    assert recommend(SWEEP, max_metric_drop=0.5).index == 1


def test_the_drop_gate_is_inclusive_and_a_gain_always_passes() -> None:
    assert recommend(SWEEP, max_metric_drop=0.9).index == 2
    gained = Point("0.3", main=0.96, latency_ms=11.0, throughput=80.0, main_drop=-1.0, speedup=3.6)
    assert recommend([DENSE, gained], max_metric_drop=0.0).index == 1


def test_min_speedup_alone_and_combined() -> None:
    assert recommend(SWEEP, min_speedup=4.0).index == 4          # fastest, any drop
    assert recommend(SWEEP, max_metric_drop=1.0, min_speedup=4.0).index == 2
    assert recommend(SWEEP, max_metric_drop=0.5, min_speedup=4.0).index is None


def test_no_gate_no_recommendation_and_none_met_says_why() -> None:
    assert recommend(SWEEP).index is None
    assert "--max-metric-drop" in recommend(SWEEP).reason
    none = recommend(SWEEP, max_metric_drop=0.1)
    assert none.index is None and none.reason == "no level met a drop of at most 0.1 points"


def test_only_levels_faster_than_int8_alone_count_else_the_reference_is_recommended() -> None:
    from dataclasses import replace

    int8 = Point("int8-only", main=0.945, latency_ms=8.0, throughput=100.0, main_drop=0.5, speedup=5.0,
                 is_int8_only=True)
    faster = [DENSE, replace(L01, over_int8_only=0.6), replace(L05, over_int8_only=0.9),
              replace(L10, over_int8_only=1.6), int8]
    pick = recommend(faster, max_metric_drop=10.0)  # 1.0 beats INT8 alone: it stays the pick
    assert pick.index == 3 and "1.60x INT8 alone" in pick.reason
    pick = recommend(faster, max_metric_drop=1.0)   # within 1 point no level beats it: the reference wins
    assert pick.index == 4 and "no level with a drop of at most 1 points is faster than INT8 alone" in pick.reason
    assert "level 0.5, runs at 0.90x its speed" in pick.reason and "INT8-only model is recommended" in pick.reason
    strict = recommend(faster, max_metric_drop=0.2)  # INT8 alone loses 0.5 points: it misses the gate too
    assert strict.index is None and "INT8 alone misses the gates" in strict.reason
    without = recommend([p for p in faster if not p.is_int8_only], max_metric_drop=1.0)
    assert without.index == 2, "without a reference the rule is unchanged"


def test_the_dense_baseline_is_never_recommended_and_ties_go_to_accuracy() -> None:
    assert recommend([DENSE], max_metric_drop=100).index is None
    a = Point("0.5", main=0.90, latency_ms=9.0, throughput=90.0, main_drop=1.0, speedup=4.0)
    b = Point("0.6", main=0.92, latency_ms=9.0, throughput=90.0, main_drop=0.5, speedup=4.0)
    assert recommend([DENSE, a, b], max_metric_drop=2).index == 2
    no_latency = Point("0.9", main=0.95, latency_ms=None, throughput=90.0, main_drop=0.0, speedup=None)
    assert recommend([DENSE, no_latency], max_metric_drop=2).index is None


def test_sweep_options_are_checked_at_the_door() -> None:
    assert build_sweep_options("0.7, 0.3,0.5").levels == (0.3, 0.5, 0.7)
    opts = build_sweep_options("0,1", max_metric_drop=1.5, min_speedup=2)
    assert opts.as_params() == {"sweep.optim_levels": "0,1", "sweep.max_metric_drop": "1.5", "sweep.min_speedup": "2"}
    for bad, message in (("", "at least one level"), ("0.3,x", "a percent 1..100, got 'x'"), ("0.3,1.2", "outside"),
                         ("0.5,0.5", "given twice")):
        with pytest.raises(ConfigError, match=message):
            build_sweep_options(bad)
    with pytest.raises(ConfigError, match="--min-speedup"):
        build_sweep_options("0.5", min_speedup=0)
    with pytest.raises(ConfigError, match="--max-metric-drop"):
        build_sweep_options("0.5", max_metric_drop=float("nan"))


def test_console_table_marks_the_recommendation_and_failures() -> None:
    rows = [
        {"level": "dense", "status": "FINISHED", "sparsity": 0.0, "main": 0.95, "main_drop": 0.0,
         "latency_ms_bs1": 40.0, "items_per_second_bs16": 30.0, "speedup_bs1": 1.0, "size_mb": 42.7,
         "registered_version": "", "recommended": False},
        {"level": "0.5", "status": "FINISHED", "sparsity": 0.7, "main": 0.941, "main_drop": 0.9,
         "latency_ms_bs1": 9.0, "items_per_second_bs16": 90.0, "speedup_bs1": 4.44, "size_mb": 10.7,
         "registered_version": "3", "recommended": True},
        {"level": "0.7", "status": "FAILED", "failure_reason": "RuntimeError: out of memory"},
    ]
    table = sweep_table_rows(rows, 16)
    assert table[0] == ("dense", "0.0%", "0.9500", "", "40.00", "30.0", "1.00x", "-", "42.70", "")
    assert table[1][0] == "0.5 *" and table[1][3] == "-0.90 pt" and table[1][-1] == "3"
    assert table[2] == ("0.7", "FAILED", "", "", "", "", "", "", "", "")


def test_a_level_slower_than_dense_is_never_recommended_on_speed() -> None:
    slow = Point("0.5", main=0.95, latency_ms=50.0, throughput=25.0, main_drop=0.0, speedup=0.62)
    pick = recommend([DENSE, slow], max_metric_drop=1.0, engine="deepsparse")
    assert pick.index is None
    assert pick.reason.startswith("no level is faster than the dense model on deepsparse") and "0.62x" in pick.reason


def test_a_change_in_points_reads_as_a_gain_or_a_loss() -> None:
    from sparsify_mlflow.summary import points

    assert points(1.5) == "-1.50 pt" and points(-3.9) == "+3.90 pt"
    assert points(0.0) == "+0.00 pt" == points(-0.0)  # no change is not a loss
