"""Child processes, memory sampling and the small statistics every section shares.

Heavy work (training, export, engine compiles) runs in child processes: peak memory is then the
child's own, one DeepSparse abort (a native assertion that kills the process) costs one child and
not the suite, and RSS is not inflated by what an earlier section left behind.
"""
from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
MB = 1024.0 * 1024.0


def machine_label(cpu: dict[str, Any]) -> str:
    """engines.cpu_info() as the focused scripts print it: "<model>, 2 cores, ISA avx512 + VNNI + AMX"."""
    return (f"{cpu['model']}, {cpu['cores']} cores, ISA {cpu['isa']}{' + VNNI' if cpu['vnni'] else ''}"
            f"{' + AMX' if cpu.get('amx') else ''}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: offline, no analytics, the repository importable."""
    env = dict(os.environ)
    env.update(NM_DISABLE_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def threads_env(threads: int | None) -> dict[str, str]:
    """Environment that caps torch's OpenMP/MKL threads (empty: the library default)."""
    return {} if not threads else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class RssSampler:
    """Peak resident memory of a process (and optionally its children), sampled in a thread.

    ``mark(label)`` starts a new labelled span; ``peaks()`` gives the peak per label. psutil
    sampling sees what `ru_maxrss` cannot: the peak *within* a phase of one process, and the
    sum over a process tree (a CLI that starts probe subprocesses).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05, tree: bool = False) -> None:
        self.proc = psutil.Process(pid or os.getpid())
        self.interval, self.tree = interval, tree
        self.label = "start"
        self.peak_by_label: dict[str, float] = {}
        self.samples: list[tuple[float, float]] = []  # (unix time, MB) for timelines
        self.peak_main = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def mark(self, label: str) -> float:
        """Start a new span; returns the RSS (MB) at this moment."""
        now = self._sample()
        self.label = label
        self._record(now)
        return now

    def current(self) -> float:
        return self._sample()

    def _sample(self) -> float:
        try:
            rss = self.proc.memory_info().rss
            main = rss
            if self.tree:
                for child in self.proc.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
        except psutil.Error:
            return 0.0
        self.peak_main = max(self.peak_main, main / MB)
        return rss / MB

    def _record(self, mb: float) -> None:
        self.peak_by_label[self.label] = max(self.peak_by_label.get(self.label, 0.0), mb)
        self.samples.append((time.time(), mb))

    def _run(self) -> None:
        while not self._stop.is_set():
            mb = self._sample()
            if mb:
                self._record(mb)
            self._stop.wait(self.interval)

    def peak_between(self, start: float, end: float) -> float | None:
        values = [mb for t, mb in self.samples if start <= t <= end]
        return max(values) if values else None


def maxrss_mb() -> float:
    """This process's peak RSS so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class ChildResult:
    ok: bool
    returncode: int
    seconds: float
    result: dict[str, Any]            # what the worker wrote (may be partial on a crash)
    output_tail: str                  # last lines of stdout+stderr, for the reason of a failure
    peak_rss_mb: float                # sampled, process tree
    peak_main_rss_mb: float = 0.0     # sampled, the process itself
    samples: list[tuple[float, float]] = field(default_factory=list)


def run_worker(task: str, args: dict[str, Any], *, timeout: float, cwd: Path | None = None,
               log: Path | None = None, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``python -m benchmarks.worker task`` with ``args``; the worker writes its result as JSON.

    The worker writes the result file progressively, so a crash still leaves what was done.
    """
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        args_path, out_path = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_path.write_text(json.dumps(args))
        cmd = [sys.executable, "-m", "benchmarks.worker", task, str(args_path), str(out_path)]
        return run_command(cmd, timeout=timeout, cwd=cwd or ROOT, result_path=out_path, log=log,
                           env=child_env(env))


def run_command(cmd: Sequence[str], *, timeout: float, cwd: Path, result_path: Path | None = None,
                log: Path | None = None, env: dict[str, str] | None = None, interval: float = 0.5) -> ChildResult:
    """Run a command with its output in a log file, sampling the RSS of its process tree.

    Walking the process tree costs CPU the measured child could use: workers sample their own
    memory finely, so the parent samples coarsely unless asked (the end-to-end job).
    """
    log_file = open(log, "w") if log else tempfile.TemporaryFile("w+")
    start = time.perf_counter()
    with log_file:
        proc = subprocess.Popen(list(cmd), cwd=str(cwd), env=env or child_env(),
                                stdout=log_file, stderr=subprocess.STDOUT, text=True)
        with RssSampler(proc.pid, interval=interval, tree=True) as sampler:
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                returncode = -9
        seconds = time.perf_counter() - start
        log_file.flush()
        if log:
            text = Path(log).read_text(errors="replace")
        else:
            log_file.seek(0)
            text = log_file.read()
    tail = "\n".join(text.strip().splitlines()[-25:])
    if returncode == -9 and seconds >= timeout:
        tail += f"\n(killed after the {timeout:.0f} s timeout)"
    result: dict[str, Any] = {}
    if result_path is not None and result_path.is_file():
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            result = {}
    peak = max((mb for _, mb in sampler.samples), default=0.0)
    return ChildResult(returncode == 0, returncode, seconds, result, tail, peak, sampler.peak_main, sampler.samples)


def failure_reason(child: ChildResult) -> str:
    """One line saying why a child failed: DeepSparse's assertion, a Python error, or the exit code.

    DeepSparse's native report goes to a temp file while it compiles (engines._native_output_to_log,
    whose DEBUG line the worker logs); after an abort that file is read here and removed.
    """
    lines = [ln.strip() for ln in child.output_tail.splitlines() if ln.strip()]
    native = re.findall(r"DeepSparse native output goes to (\S+) while compiling", child.output_tail)
    if native and Path(native[-1]).is_file():
        report = Path(native[-1]).read_text(errors="replace").splitlines()
        Path(native[-1]).unlink()
        lines += [ln.strip() for ln in report if ln.strip()]
    for line in reversed(lines):
        if line.startswith("Assertion at"):
            return f"DeepSparse aborted: {line} (exit code {child.returncode})"
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line or "timeout" in line:
            return f"{line[:300]} (exit code {child.returncode})"
    return f"exit code {child.returncode}" + (f": {lines[-1][:300]}" if lines else "")


# ---- statistics -------------------------------------------------------------------------------

def figure(runs: Sequence[float], unit: str, **extra: Any) -> dict[str, Any]:
    """A reported figure: the median of the per-run values, and the per-run values themselves."""
    values = [float(v) for v in runs if v is not None]
    return {"median": statistics.median(values) if values else None, "unit": unit,
            "runs": [round(v, 6) for v in values], **extra}


def ratio_figure(numerators: Sequence[float], denominators: Sequence[float], unit: str = "x") -> dict[str, Any]:
    """Per-round ratios of two side-by-side measurements, then their median (drift cancels out)."""
    pairs = [a / b for a, b in zip(numerators, denominators) if a and b]
    return figure(pairs, unit)
