"""What the tests share: tiny real datasets, MLflow store checks, real servers, CLI helpers.

Tests import from here, never from each other.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def use_every_cpu() -> None:
    """``preexec_fn`` for a child process that runs parallel work of its own (several processes,
    sections side by side), which one pinned core would serialise."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
