"""What people look at: matplotlib figures for MLflow and the console summary table."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

if TYPE_CHECKING:
    from sparsify_mlflow.training import EpochStats


def sparsity_figure(per_param: dict[str, float], target: float, kept_dense: Sequence[str]) -> Figure:
    """Per-layer sparsity as horizontal bars, kept-dense layers greyed, the target as a line."""
    names = list(per_param)
    height = max(3.0, 0.22 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    colors = ["#9e9e9e" if n in kept_dense else "#1f77b4" for n in names]
    ax.barh(range(len(names)), [per_param[n] for n in names], color=colors)
    ax.set_yticks(range(len(names)), [n.removesuffix(".weight") for n in names], fontsize=7)
    ax.invert_yaxis()
    if target > 0:
        ax.axvline(target, color="#d62728", linestyle="--", label=f"target {target:.0%}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of zero weights (grey: kept dense)")
    ax.set_title("Sparsity per layer")
    fig.tight_layout()
    return fig


def history_figure(dense: Sequence[EpochStats], sparse: Sequence[EpochStats] | None, main_name: str) -> Figure:
    """Validation metric per epoch for both models, sparsity of the sparse one on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s.epoch for s in dense], [s.val.main for s in dense], "o-", label=f"dense {main_name}")
    if sparse:
        ax.plot([s.epoch for s in sparse], [s.val.main for s in sparse], "s-", label=f"sparse {main_name}")
        twin = ax.twinx()
        twin.plot([s.epoch for s in sparse], [s.sparsity for s in sparse], ":", color="#7f7f7f", label="sparsity")
        twin.set_ylim(0, 1)
        twin.set_ylabel("sparsity (pruned layers)")
        twin.legend(loc="lower right")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {main_name}")
    ax.legend(loc="lower left")
    ax.set_title("Validation metric per epoch")
    fig.tight_layout()
    return fig


def latency_figure(bars: dict[str, dict[str, float]]) -> Figure:
    """Grouped bars: {setting: {model label: milliseconds}}, lower is better."""
    settings = list(bars)
    labels = sorted({label for values in bars.values() for label in values})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(settings))]
        ys = [bars[s].get(label, 0.0) for s in settings]
        rects = ax.bar(xs, ys, width, label=label)
        ax.bar_label(rects, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(settings))], settings)
    ax.set_ylabel("milliseconds per batch (median)")
    ax.set_title("Latency, dense vs sparse")
    ax.legend()
    fig.tight_layout()
    return fig


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], console: Console | None = None) -> None:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)
