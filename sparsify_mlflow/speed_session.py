"""One benchmark session per comparison: every model compiled once, then timed in alternating rounds.

Timing the dense model after its training and the sparse one after its own, minutes apart, lets
any change in machine load land in their ratio: on a shared 2-core machine the same file measured
8 ms and 292 ms at batch size 1 minutes apart. Here every (model, engine) pair of one batch size
is compiled first, then timed round-robin (A B C, B C A, C A B, ...), so a load change hits all of
them alike, and a speedup is the median of the per-round ratios with their spread.

While the rounds run, the CPU time other processes take on the CPUs this process may use is
measured (psutil's per-CPU counters minus this process's own CPU time), and so is the hypervisor's
steal time. Past a threshold, or when the per-round ratios disagree, the session says the figures
are unreliable, names the cause and the fix.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sparsify_mlflow.benchmark import BenchmarkResult, tile_rows
from sparsify_mlflow.engines import load_engine, plan_benchmarks

__all__ = ["Entrant", "Load", "Measurement", "Ratio", "Reliability", "SessionResult", "plan_session", "run_session",
           "time_round"]

DEFAULT_ROUNDS = 7
MIN_ROUND_SECONDS = 0.2        # a round of a sub-millisecond model still spans many scheduler ticks
MAX_ROUND_ITERATIONS = 5000
WARMUP_SECONDS = 0.5           # once per engine, after compiling
# Each round re-warms its engine, untimed: right after another engine ran, the first batches run up
# to 1.5x slower for ~15 ms (its worker threads still spin, caches hold its weights).
ROUND_WARMUP_SECONDS = 0.03
OTHER_CORES_LIMIT = 0.25       # other processes' average use of our CPUs, in cores
STEAL_LIMIT = 0.10             # the hypervisor's steal time, in cores
SPREAD_LIMIT = 0.5             # interquartile range / median of a same-engine speedup over the rounds: a
                               # 1-ms model at bs1 on an idle 2-core VM has single rounds 2x off (min-max
                               # up to 1.1), its middle half within ~0.3; one CPU-bound neighbour: 0.9 to 30


@dataclass(frozen=True)
class Entrant:
    """A file to time, with the (engine, batch size) pairs it is timed at."""

    label: str                              # "dense", "sparse", "0.5", ...
    path: Path
    settings: tuple[tuple[str, int], ...]   # ("deepsparse", 1), ("onnxruntime", 16), ...
    engine_paths: tuple[tuple[str, Path], ...] = ()  # another file of the same model for an engine
                                                      # (OpenVINO: the QDQ twin of an INT8 model)

    def file_for(self, engine: str) -> Path:
        """The file `engine` runs for this model."""
        return dict(self.engine_paths).get(engine, self.path)


@dataclass(frozen=True)
class Measurement:
    """One entrant on one engine at one batch size: the per-round medians and the whole-session figure."""

    round_ms: tuple[float, ...]   # median batch latency of each round, in round order
    result: BenchmarkResult       # over every timed batch of every round


@dataclass(frozen=True)
class Ratio:
    """A speedup: the median over rounds of (reference latency / candidate latency) in that round."""

    value: float
    low: float
    high: float
    rounds: tuple[float, ...]

    @property
    def spread(self) -> float:
        """Interquartile range / median over the rounds: 0 when they agree, robust to one stray round."""
        if not self.value:
            return math.inf
        if len(self.rounds) < 4:
            return (self.high - self.low) / self.value
        q1, _, q3 = statistics.quantiles(self.rounds, n=4)
        return (q3 - q1) / self.value

    def as_metrics(self, name: str) -> dict[str, float]:
        return {name: self.value, f"{name}.min": self.low, f"{name}.max": self.high}


@dataclass(frozen=True)
class Load:
    """What else ran on our CPUs while the rounds were timed."""

    other_cores: float    # average CPU cores other processes used on the CPUs we may run on
    steal_cores: float    # average cores the hypervisor gave to other machines
    cpus: int             # how many CPUs this process may run on
    seconds: float        # wall time of the timed rounds

    def as_metrics(self) -> dict[str, float]:
        return {"benchmark.other_cores": round(self.other_cores, 4), "benchmark.steal_cores": round(self.steal_cores, 4),
                "benchmark.session_seconds": round(self.seconds, 3)}


RELIABLE_TAG, LOAD_TAG = "sparsify.benchmark_reliable", "sparsify.benchmark_load"  # run tags


@dataclass(frozen=True)
class Reliability:
    reliable: bool
    reason: str = ""   # when unreliable: what else ran or how far the rounds disagreed, and the fix

    def tags(self) -> dict[str, str]:
        return {RELIABLE_TAG: str(self.reliable).lower(), LOAD_TAG: (self.reason or "idle")[:5000]}


@dataclass
class SessionResult:
    measurements: dict[str, dict[str, Measurement]]   # label -> "deepsparse.bs1" -> Measurement
    load: Load
    rounds: int
    notes: list[str] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> engines.layer_timings at bs1

    def results(self, label: str) -> dict[str, BenchmarkResult]:
        return {key: m.result for key, m in self.measurements.get(label, {}).items()}

    def ratio(self, reference: str, candidate: str, key: str, reference_key: str | None = None) -> Ratio | None:
        """Candidate's speedup over the reference at `key` ("deepsparse.bs1"), per round; None if either
        was not timed there. `reference_key` compares with the reference on another engine (named so)."""
        ref = self.measurements.get(reference, {}).get(reference_key or key)
        cand = self.measurements.get(candidate, {}).get(key)
        if ref is None or cand is None:
            return None
        per_round = tuple(r / c for r, c in zip(ref.round_ms, cand.round_ms) if c > 0)
        if not per_round:
            return None
        return Ratio(statistics.median(per_round), min(per_round), max(per_round), per_round)

    def fastest(self, label: str, batch_size: int) -> str | None:
        """The key ("openvino.bs1") of `label`'s fastest engine at `batch_size`: by the median of its per-round
        medians, the figure the ratios are built from (the whole-session median leans toward the fast rounds,
        which hold more iterations, so on a noisy machine it can pick an engine that lost most rounds)."""
        timed = {key: statistics.median(m.round_ms) for key, m in self.measurements.get(label, {}).items()
                 if key.endswith(f".bs{batch_size}")}
        return min(timed, key=timed.__getitem__) if timed else None

    def speedups(self, reference: str, candidate: str) -> dict[str, Ratio]:
        """Every ratio a comparison logs: `speedup.<engine>.bs<N>` (the same engine on both sides),
        `speedup_vs_onnxruntime.<engine>.bs<N>` (the candidate against the reference on ONNX Runtime) and
        `speedup_vs_best_dense.bs<N>` (the candidate's fastest engine against the reference's fastest:
        what a user gains over the best dense deployment this machine has, see `fastest`)."""
        out: dict[str, Ratio] = {}
        for key in self.measurements.get(candidate, {}):
            same = self.ratio(reference, candidate, key)
            if same is not None:
                out[f"speedup.{key}"] = same
            engine, setting = key.split(".", 1)
            if engine != "onnxruntime":
                vs_ort = self.ratio(reference, candidate, key, f"onnxruntime.{setting}")
                if vs_ort is not None:
                    out[f"speedup_vs_onnxruntime.{key}"] = vs_ort
        out.update({f"speedup_vs_best_dense.bs{bs}": r for bs, r in self.fastest_ratios(reference, candidate).items()})
        return out

    def fastest_ratios(self, reference: str, candidate: str) -> dict[int, Ratio]:
        """Per batch size: the candidate's fastest engine against the reference's fastest (see `fastest`)."""
        out: dict[int, Ratio] = {}
        for bs in sorted({int(key.rsplit(".bs", 1)[1]) for key in self.measurements.get(candidate, {})}):
            ref_key, cand_key = self.fastest(reference, bs), self.fastest(candidate, bs)
            best = self.ratio(reference, candidate, cand_key, ref_key) if ref_key and cand_key else None
            if best is not None:
                out[bs] = best
        return out

    def reliability(self, ratios: dict[str, Ratio] | None = None) -> Reliability:
        """The load, and the spread over the rounds of the same-engine speedups (without `ratios`: of each
        model's latency, for a session that times one model), against their limits."""
        if ratios is None:
            ratios = {f"speedup.{key} ({label} latency)": _latency_spread(m)
                      for label, by_key in self.measurements.items() for key, m in by_key.items()}
        why = []
        if self.load.other_cores > OTHER_CORES_LIMIT:
            why.append(f"other processes used {self.load.other_cores:.2f} of this process's {self.load.cpus} "
                       f"CPU(s) during the benchmark")
        if self.load.steal_cores > STEAL_LIMIT:
            why.append(f"the hypervisor took {self.load.steal_cores:.2f} cores (steal time)")
        spread = {name: r for name, r in ratios.items() if name.startswith("speedup.") and r.spread > SPREAD_LIMIT}
        if spread:
            name, worst = max(spread.items(), key=lambda item: item[1].spread)
            why.append(f"the rounds disagree ({name} ranged {worst.low:.2f}x-{worst.high:.2f}x over "
                       f"{len(worst.rounds)} rounds, middle half {worst.spread:.0%} of the median)")
        if not why:
            return Reliability(True)
        return Reliability(False, "; ".join(why) + ": benchmark on an idle machine, or give the engines fewer "
                                  "cores (--num-cores) than other work leaves free")


def _latency_spread(m: Measurement) -> Ratio:
    """A model's per-round latencies as a ratio to their median, so the spread reads like a speedup's."""
    mid = statistics.median(m.round_ms)
    rounds = tuple(mid / ms for ms in m.round_ms)
    return Ratio(1.0, min(rounds), max(rounds), rounds)


def plan_session(files: dict[str, Path], engines: dict[str, Sequence[str]], batch_sizes: Sequence[int],
                 reference: str | None = None, num_cores: int | None = None,
                 engine_files: dict[str, dict[str, Path]] | None = None) -> tuple[list[Entrant], list[str]]:
    """Entrants for `files` (label -> ONNX file) on their `engines`, with the engines' fallbacks;
    `engine_files` (label -> engine -> file) gives an engine another file of that model (the QDQ twin).

    DeepSparse is probed at each batch size, OpenVINO once per file (engines.plan_benchmarks); where
    either cannot compile a file, ONNX Runtime times the label's own file instead. So that every ratio
    compares one engine with itself, a candidate timed on an engine the `reference` lacks at that batch
    size is also timed on ONNX Runtime, which the reference always gets.
    """
    planned: dict[str, list[tuple[str, int]]] = {}
    paths: dict[str, dict[str, Path]] = {}
    notes: list[str] = []
    for label, path in files.items():
        wanted = tuple(engines[label]) + (("onnxruntime",) if label == reference else ())
        paths[label] = {engine: file for engine, file in (engine_files or {}).get(label, {}).items()
                        if engine in wanted and engine != "onnxruntime"}
        settings: list[tuple[str, int]] = []
        for engine in dict.fromkeys(wanted):
            pairs, _, file_notes = plan_benchmarks(paths[label].get(engine, path), (engine,), batch_sizes, num_cores)
            settings += [pair for pair in pairs if pair not in settings]
            notes += file_notes
        planned[label] = settings
    if reference is not None:
        ref = set(planned[reference])
        for label, settings in planned.items():
            for engine, bs in list(settings):
                if label != reference and (engine, bs) not in ref and ("onnxruntime", bs) not in settings:
                    settings.append(("onnxruntime", bs))
    return [Entrant(label, files[label], tuple(planned[label]), tuple(sorted(paths[label].items())))
            for label in files], notes


def run_session(entrants: Sequence[Entrant], rows: list[np.ndarray], *, iterations: int = 30,
                rounds: int = DEFAULT_ROUNDS, warmup_iterations: int | None = None,
                num_cores: int | None = None, notes: Sequence[str] = ()) -> SessionResult:
    """Time every entrant at its settings: per batch size, compile all, warm up (`warmup_iterations` and
    WARMUP_SECONDS), then `rounds` rounds, the order rotating each round, of at least iterations/rounds
    batches and MIN_ROUND_SECONDS each, every one after an untimed re-warm-up."""
    if iterations < 1 or rounds < 1:
        raise ValueError(f"need iterations >= 1 and rounds >= 1, got {iterations}/{rounds}")
    per_round = max(1, math.ceil(iterations / rounds))
    warmup = max(3, iterations // 5) if warmup_iterations is None else warmup_iterations
    measurements: dict[str, dict[str, Measurement]] = {e.label: {} for e in entrants}
    meter = LoadMeter()
    for bs in sorted({bs for e in entrants for _, bs in e.settings}):
        pairs = [(e, engine) for e in entrants for engine, b in e.settings if b == bs]
        batch = tile_rows(rows, bs)
        compiled, compile_seconds = {}, {}
        for entrant, engine in pairs:
            start = time.perf_counter()
            compiled[(entrant.label, engine)] = load_engine(entrant.file_for(engine), engine, bs, num_cores)
            compile_seconds[(entrant.label, engine)] = time.perf_counter() - start
        for eng in compiled.values():
            time_round(partial(eng.run, batch), warmup, WARMUP_SECONDS, MAX_ROUND_ITERATIONS)
        times: dict[tuple[str, str], list[list[float]]] = {key: [] for key in compiled}
        keys = list(compiled)
        with meter.measuring(), tqdm(total=rounds * len(keys), desc=f"benchmark bs{bs}", unit="run",
                                     leave=False, disable=None) as bar:
            for rnd in range(rounds):
                for key in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:
                    run = partial(compiled[key].run, batch)
                    time_round(run, 1, ROUND_WARMUP_SECONDS, MAX_ROUND_ITERATIONS)
                    times[key].append(time_round(run, per_round, MIN_ROUND_SECONDS, MAX_ROUND_ITERATIONS))
                    bar.update()
        for (label, engine), per in times.items():
            eng = compiled[(label, engine)]
            measurements[label][f"{eng.name}.bs{bs}"] = _measurement(
                per, eng, bs, warmup, compile_seconds[(label, engine)])
        compiled.clear()
    return SessionResult(measurements, meter.load(), rounds, list(notes))


def time_round(run: Callable[[], Any], min_iterations: int, min_seconds: float, max_iterations: int) -> list[float]:
    """Batch times (ms) of one round: at least `min_iterations` batches and `min_seconds` of them."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iterations and (len(times) < min_iterations or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _measurement(per_round: list[list[float]], eng: Any, bs: int, warmup: int, compile_seconds: float) -> Measurement:
    ms = np.concatenate([np.asarray(r) for r in per_round])
    median = float(np.median(ms))
    result = BenchmarkResult(
        engine=eng.name, batch_size=bs, num_cores=int(eng.num_cores), latency_ms_median=median,
        latency_ms_mean=float(ms.mean()), latency_ms_std=float(ms.std()),
        latency_ms_p90=float(np.percentile(ms, 90)),
        items_per_second=bs / (median / 1000.0) if median > 0 else float("inf"),
        iterations=int(ms.size), warmup_iterations=warmup, compile_seconds=compile_seconds,
        fraction_of_supported_ops=eng.fraction_of_supported_ops)
    return Measurement(tuple(float(np.median(r)) for r in per_round), result)


class LoadMeter:
    """Accumulates, over the timed blocks, the CPU time others took on the CPUs we may run on."""

    def __init__(self) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        self.busy = self.own = self.steal = self.seconds = 0.0

    @contextmanager
    def measuring(self) -> Iterator[None]:
        import psutil

        me = psutil.Process()
        sys0, own0, t0 = psutil.cpu_times(percpu=True), me.cpu_times(), time.monotonic()
        try:
            yield
        finally:
            sys1, own1 = psutil.cpu_times(percpu=True), me.cpu_times()
            self.seconds += time.monotonic() - t0
            for cpu in self.cpus:
                if cpu < len(sys0) and cpu < len(sys1):
                    self.busy += _busy(sys1[cpu]) - _busy(sys0[cpu])
                    self.steal += getattr(sys1[cpu], "steal", 0.0) - getattr(sys0[cpu], "steal", 0.0)
            self.own += (own1.user + own1.system) - (own0.user + own0.system)

    def load(self) -> Load:
        if self.seconds <= 0:
            return Load(0.0, 0.0, len(self.cpus), 0.0)
        return Load(max(0.0, self.busy - self.own) / self.seconds, max(0.0, self.steal) / self.seconds,
                    len(self.cpus), self.seconds)


def _busy(times: Any) -> float:
    """CPU time spent running anything (user, nice, system, interrupts); guest time is inside user."""
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
