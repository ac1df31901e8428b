"""Pure functions behind a sweep's verdict: the Pareto front and the recommended level.

No MLflow, no torch: a point is a plain value, so the rules are tested on hand-made numbers.
Higher main metric is better; lower latency and higher throughput are better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

EPS = 1e-9


@dataclass(frozen=True)
class Point:
    """One model of a sweep (the dense baseline or one optim level) as the comparison sees it."""

    label: str                      # "dense" or the level, e.g. "0.5"
    main: float                     # the use case's main metric, 0..1
    latency_ms: float | None        # batch-size-1 median latency on the deployment engine
    throughput: float | None        # items/s at the throughput batch size
    main_drop: float = 0.0          # points lost against the dense baseline (negative: gained)
    speedup: float | None = None    # batch-1 speed against the dense baseline on the same engine
    is_dense: bool = False
    over_int8_only: float | None = None  # batch-1 speed against the INT8-only reference (fastest vs fastest)
    is_int8_only: bool = False           # the reference: the dense model quantized post-training


def pareto_front(points: list[Point], axis: str) -> list[int]:
    """Indices of the points no other point beats on both the main metric and `axis`.

    `axis` is "latency" (lower is better) or "throughput" (higher is better). Points without a
    figure on that axis are left out. Exact ties are all kept. The result is sorted from the
    fastest point to the slowest.
    """
    if axis not in ("latency", "throughput"):
        raise ValueError(f"axis must be 'latency' or 'throughput', got {axis!r}")

    def speed(p: Point) -> float | None:  # higher is better on both axes
        value = p.latency_ms if axis == "latency" else p.throughput
        if value is None or not math.isfinite(value):
            return None
        return -value if axis == "latency" else value

    scored = [(i, speed(p), p.main) for i, p in enumerate(points) if speed(p) is not None]

    def dominated(s: float, m: float) -> bool:
        return any(s2 >= s - EPS and m2 >= m - EPS and (s2 > s + EPS or m2 > m + EPS) for _, s2, m2 in scored)

    front = [(i, s) for i, s, m in scored if not dominated(s, m)]
    return [i for i, _ in sorted(front, key=lambda item: -item[1])]


@dataclass(frozen=True)
class Recommendation:
    index: int | None               # into the points given; None when nothing qualifies
    reason: str                     # one sentence for the summary and the run tag


def recommend(points: list[Point], max_metric_drop: float | None = None,
              min_speedup: float | None = None, engine: str = "the same engine") -> Recommendation:
    """The fastest level (lowest batch-1 latency) within the gates, or why there is none.

    Gates: `main_drop <= max_metric_drop` (points) and `speedup >= min_speedup` (x). With no gate
    given there is no recommendation: "fastest" alone would always pick the sparsest level. A level
    no faster than the dense model (speedup <= 1 on `engine`) is never recommended on speed.
    Ties on latency go to the higher main metric, then to the lower level (listed first).
    With an INT8-only point among `points`, only levels faster than it count; when none is, the
    reference itself is recommended if it meets the gates (a pruned model slower than INT8 alone is
    not worth its training).
    """
    if max_metric_drop is None and min_speedup is None:
        return Recommendation(None, "no recommendation: give --max-metric-drop and/or --min-speedup")
    gates = []
    if max_metric_drop is not None:
        gates.append(f"a drop of at most {max_metric_drop:g} points")
    if min_speedup is not None:
        gates.append(f"a speedup of at least {min_speedup:g}x")
    wanted = " and ".join(gates)

    def meets_gates(p: Point) -> bool:
        return (p.latency_ms is not None and math.isfinite(p.latency_ms)
                and (max_metric_drop is None or p.main_drop <= max_metric_drop + EPS)
                and (min_speedup is None or (p.speedup is not None and p.speedup >= min_speedup - EPS)))

    ok = [i for i, p in enumerate(points) if not p.is_dense and not p.is_int8_only and meets_gates(p)]
    if not ok:
        return Recommendation(None, f"no level met {wanted}")
    reference = next((i for i, p in enumerate(points) if p.is_int8_only), None)
    if reference is not None:
        beating = [i for i in ok if points[i].over_int8_only is not None and points[i].over_int8_only > 1.0 + EPS]
        if not beating:
            fastest = min(ok, key=lambda i: (points[i].latency_ms, -points[i].main, i))
            versus = points[fastest].over_int8_only
            why = (f"no level with {wanted} is faster than INT8 alone (the dense model quantized post-training)"
                   + ("" if versus is None else f": the fastest, level {points[fastest].label}, runs at "
                      f"{versus:.2f}x its speed"))
            if meets_gates(points[reference]):
                ref = points[reference]
                return Recommendation(reference, f"{why}; the INT8-only model is recommended instead "
                                                 f"({ref.latency_ms:.2f} ms at batch size 1, {ref.main_drop:+.2f} points)")
            return Recommendation(None, f"{why}, and INT8 alone misses the gates; none recommended")
        ok = beating
    best = min(ok, key=lambda i: (points[i].latency_ms, -points[i].main, i))
    p = points[best]
    if p.speedup is not None and p.speedup <= 1.0 + EPS:
        return Recommendation(None, f"no level is faster than the dense model on {engine}: the fastest with "
                                    f"{wanted}, level {p.label}, runs at {p.speedup:.2f}x its speed; none recommended")
    speed = "" if p.speedup is None else f", {p.speedup:.2f}x the dense speed"
    if p.over_int8_only is not None:
        speed += f", {p.over_int8_only:.2f}x INT8 alone"
    return Recommendation(best, f"level {p.label} is the fastest with {wanted} "
                                f"({p.latency_ms:.2f} ms at batch size 1{speed}, {p.main_drop:+.2f} points)")
