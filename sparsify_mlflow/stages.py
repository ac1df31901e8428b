"""Wall-clock time per stage of one experiment (training, export, benchmark, registration, ...).

experiment.py starts a clock per experiment (``start()``) and wraps each stage in
``with stage(name):`` (a no-op when no clock runs, e.g. a function called alone in a test); at the
end the totals go to the parent run as ``stage_seconds.<name>`` metrics and the spans (unix
start/end) as ``timing/stages.json``, so benchmarks can line them up with memory samples.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext


class StageClock:
    def __init__(self) -> None:
        self.started = time.time()
        self.spans: list[dict[str, object]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.spans.append({"stage": name, "start": start, "end": time.time()})

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for span in self.spans:
            out[str(span["stage"])] = out.get(str(span["stage"]), 0.0) + float(span["end"]) - float(span["start"])
        return out

    def metrics(self) -> dict[str, float]:
        """``stage_seconds.<stage>`` for every stage, plus ``stage_seconds.total`` since creation."""
        out = {f"stage_seconds.{k}": round(v, 3) for k, v in self.totals().items()}
        out["stage_seconds.total"] = round(time.time() - self.started, 3)
        return out

    def as_dict(self) -> dict[str, object]:
        return {"started": self.started, "ended": time.time(), "spans": self.spans}


_current: StageClock | None = None


def start() -> StageClock:
    """A fresh clock that ``stage()`` records into (one experiment at a time per process)."""
    global _current
    _current = StageClock()
    return _current


def stage(name: str) -> AbstractContextManager[None]:
    return _current.stage(name) if _current is not None else nullcontext()
