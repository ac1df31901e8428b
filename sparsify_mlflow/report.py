"""What people look at: matplotlib figures for MLflow and the console summary table."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape
from rich.table import Table  # noqa: E402

if TYPE_CHECKING:
    from sparsify_mlflow.pareto import Point
    from sparsify_mlflow.results import EpochStats


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


def layer_figure(timings: dict[str, dict], top: int = 25) -> Figure:
    """DeepSparse's time per layer, one panel per model ({label: layer_timings(...)}), execution order,
    the `top` slowest layers of each named: where a model still spends its time."""
    fig, axes = plt.subplots(1, len(timings), figsize=(6 * len(timings), 7), sharex=True, squeeze=False)
    for ax, (label, report) in zip(axes[0], timings.items()):
        layers = report["layers"]
        times = [layer["ms"] for layer in layers]
        slow = set(sorted(range(len(layers)), key=lambda i: -times[i])[:top])
        ax.barh(range(len(layers)), times, color=["C3" if i in slow else "C0" for i in range(len(layers))])
        ax.set_yticks(range(len(layers)), [layer["name"] if i in slow else "" for i, layer in enumerate(layers)],
                      fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("ms per batch")
        ax.set_title(f"{label}: {report['total_ms']:.2f} ms in {len(layers)} layers", fontsize=9)
    fig.suptitle("DeepSparse time per layer (its own analysis; red: the slowest)")
    fig.tight_layout()
    return fig


def pareto_figure(points: Sequence[Point], fronts: dict[str, list[int]], recommended: int | None,
                  main_name: str, batch_size: int) -> Figure:
    """Main metric vs batch-1 latency and vs throughput: dense as a star, the Pareto front as a line.

    `fronts` maps "latency"/"throughput" to indices into `points` (pareto.pareto_front).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = (("latency", "latency_ms", "batch-1 latency, ms (lower is better)"),
              ("throughput", "throughput", f"throughput at batch size {batch_size}, items/s (higher is better)"))
    for ax, (axis, field, label) in zip(axes, panels):
        on_front = set(fronts.get(axis, []))
        labelled: dict[tuple[float, float], int] = {}  # level 0 sits on the dense star: stack the labels
        for i, p in enumerate(points):
            x = getattr(p, field)
            if x is None:
                continue
            if p.is_dense:
                ax.scatter([x], [p.main], marker="*", s=220, color="#d62728", zorder=4, label="dense baseline")
            else:
                ax.scatter([x], [p.main], s=60, zorder=3, color="#1f77b4" if i in on_front else "#b0b0b0",
                           edgecolors="black" if i in on_front else "none")
            if i == recommended:
                ax.scatter([x], [p.main], s=380, facecolors="none", edgecolors="#2ca02c", linewidths=2,
                           zorder=5, label="recommended")
            stacked = labelled.get((x, p.main), 0)
            labelled[(x, p.main)] = stacked + 1
            ax.annotate(p.label, (x, p.main), textcoords="offset points", xytext=(6, 5 - 11 * stacked), fontsize=8)
        front = [i for i in fronts.get(axis, []) if getattr(points[i], field) is not None]
        if front:
            xs = [getattr(points[i], field) for i in front]
            ys = [points[i].main for i in front]
            ax.plot(xs, ys, "--", color="#1f77b4", zorder=2, label="Pareto front")
        xs_all = [getattr(p, field) for p in points if getattr(p, field)]
        if xs_all and max(xs_all) / min(xs_all) > 20:  # e.g. 1 ms sparse vs 300 ms dense
            ax.set_xscale("log")
            label += ", log scale"
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        if unique:
            ax.legend(unique.values(), unique.keys(), loc="best", fontsize=8)
    axes[0].set_ylabel(f"validation {main_name}")
    fig.suptitle(f"Optim-level sweep: {main_name} vs speed (labels: optim level)")
    fig.tight_layout()
    return fig


def output_console() -> Console:
    """The terminal's width, or 132 columns when stdout is a log file or pipe (no wrapped lines there)."""
    return Console(width=None if sys.stdout.isatty() else 132)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], console: Console | None = None) -> None:
    console = console or output_console()
    console.print(escape(title), soft_wrap=True)  # a table title would wrap at the table's width
    table = Table()
    for i, column in enumerate(columns):
        table.add_column(escape(column), justify="left" if i == 0 else "right")
    for row in rows:  # plain text: "[0.9-1.1]" is a figure, not rich markup
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
