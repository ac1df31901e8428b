"""Optim-level sweep: the training-aware experiment at several levels, the dense baseline trained once.

Runs in MLflow (each level mirrors a standalone `training-aware` parent run, so the UI's compare
view lines sweep levels and standalone experiments up under the same names):

    sweep-<use-case>-<model>         role=sweep   comparison table, Pareto figure, recommendation
    |-- dense-baseline               role=dense   trained once (or reused from the baseline cache)
    |-- int8-only                    role=int8_only  the dense model quantized post-training: the reference
    |-- level-0.3                    role=level   config.*, recipe.*, dense.*/sparse.*, main_drop, speedup.*
    |   `-- training-aware           role=sparse  the level's pruned + INT8 model
    `-- level-0.5 ...

A level that fails ends its run FAILED (reason in `sparsify.failure_reason`) and the sweep goes on;
the sweep fails only when every level failed.
"""
from __future__ import annotations

import math
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from sparsify_mlflow import experiment, pareto, report, stages, tracking
from sparsify_mlflow.config import ExperimentConfig, parse_optim_level
from sparsify_mlflow.errors import ConfigError, UserError
from sparsify_mlflow.headline import MB, headline_speedup
from sparsify_mlflow.registry import CANDIDATE_ALIAS, RegisteredVersion, register
from sparsify_mlflow.results import ExperimentResult, Int8Only, ModelReport
from sparsify_mlflow.speed_session import RELIABLE_TAG

RECOMMENDED_ALIAS = "recommended"
TABLE_FILE = "sweep_table.json"          # + sweep_table.csv beside it
PARETO_FIGURE = "figures/pareto.png"


class AllLevelsFailed(UserError):
    """Every level of the sweep failed; the reasons are in the level runs."""

    exit_code = 1


@dataclass(frozen=True)
class SweepOptions:
    levels: tuple[float, ...]
    max_metric_drop: float | None = None     # points
    min_speedup: float | None = None         # x, batch size 1, against the dense baseline

    def as_params(self) -> dict[str, str]:
        return {"sweep.optim_levels": ",".join(f"{x:g}" for x in self.levels),
                "sweep.max_metric_drop": "" if self.max_metric_drop is None else f"{self.max_metric_drop:g}",
                "sweep.min_speedup": "" if self.min_speedup is None else f"{self.min_speedup:g}"}


def build_sweep_options(levels: str | None, max_metric_drop: float | None = None,
                        min_speedup: float | None = None) -> SweepOptions:
    """Validate --optim-levels ("0.3,0.5,0.7"), --max-metric-drop and --min-speedup at the door."""
    text = (levels or "").strip()
    if not text:
        raise ConfigError("--optim-levels needs at least one level, e.g. 0.3,0.5,0.7")
    values: list[float] = []
    for part in text.split(","):
        value = parse_optim_level(part.strip(), "--optim-levels")
        if value in values:
            raise ConfigError(f"--optim-levels: {value:g} is given twice")
        values.append(value)
    if max_metric_drop is not None and not math.isfinite(max_metric_drop):
        raise ConfigError(f"--max-metric-drop must be a finite number of points, got {max_metric_drop!r}")
    if min_speedup is not None and not (math.isfinite(min_speedup) and min_speedup > 0):
        raise ConfigError(f"--min-speedup must be a positive number, got {min_speedup!r}")
    return SweepOptions(tuple(sorted(values)), max_metric_drop, min_speedup)


@dataclass
class LevelOutcome:
    level: float
    run_id: str | None
    result: ExperimentResult | None = None
    error: str | None = None


@dataclass
class SweepResult:
    config: ExperimentConfig
    options: SweepOptions
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    folder: Path
    dense: ModelReport
    levels: list[LevelOutcome]
    rows: list[dict[str, Any]]                 # the comparison table, dense first
    recommendation: pareto.Recommendation      # index into `levels` (not into rows)
    registered_model_name: str | None = None
    notes: list[str] = field(default_factory=list)
    int8_only: Int8Only | None = None
    int8_only_version: RegisteredVersion | None = None  # the reference, registered when it is recommended

    @property
    def recommended(self) -> LevelOutcome | None:
        i = self.recommendation.index
        return None if i is None or i >= len(self.levels) else self.levels[i]

    @property
    def recommends_int8_only(self) -> bool:
        return self.recommendation.index == len(self.levels)


def run_sweep(cfg: ExperimentConfig, options: SweepOptions) -> SweepResult:
    """Dense baseline once, every level trained, then one benchmark session timing every level against
    the dense model (alternating rounds), then each level's comparison, registration and the verdict."""
    cfg, use_case, tracking_uri, experiment_id = experiment.open_store(cfg)
    root = experiment.make_folder(cfg.working_dir / f"sweep_{use_case.name}_{experiment.timestamp()}",
                                  ("training_artifacts/dense", "logs"))
    clock = stages.start()
    with tracking.run(f"sweep-{use_case.name}-{Path(cfg.model).stem}", experiment_id=experiment_id,
                      tags={"sparsify.use_case": use_case.name, "sparsify.role": "sweep"}) as parent:
        params = cfg.as_params()
        params.pop("config.optim_level")  # each level run logs its own
        tracking.log_params(params | options.as_params())
        session = experiment.prepare(cfg, use_case, experiment_id, tracking_uri)
        dense = experiment.train_dense_baseline(session, root)
        trained = []
        for n, level in enumerate(options.levels, 1):
            print(f"=== optim level {level:g} ({n}/{len(options.levels)}): training ===")
            trained.append(_train_level(session, cfg, dense, level, root))
        ready = [t for t in trained if t.error is None]
        int8_only = experiment.int8_only_reference(session, dense, root) \
            if cfg.int8_reference and any(t.model is not dense for t in ready) else None
        speed = experiment.measure_speed(session, dense.report, {t.label: t.model.report for t in ready}
                                         | experiment.timed_reference(int8_only)) if ready else None
        outcomes = [t.outcome() if t.error else _conclude_level(session, dense, t, speed, int8_only) for t in trained]
        result = _conclude(cfg, options, parent.info.run_id, experiment_id, tracking_uri, root, dense.report,
                           outcomes, session.notes, int8_only, speed)
        tracking.log_metrics(clock.metrics())
        mlflow.log_dict(clock.as_dict(), "timing/stages.json")
        if not any(o.result for o in outcomes):
            reasons = "; ".join(f"{o.level:g}: {_first_line(o.error)}" for o in outcomes)
            raise AllLevelsFailed(f"every level of the sweep failed ({reasons})")
    return result


@dataclass
class _TrainedLevel:
    """A level after its training: its run (ended, reopened to conclude), model, plan and folder."""

    level: float
    cfg: ExperimentConfig
    run_id: str | None
    folder: Path
    model: Any = None
    plan: Any = None
    recipe: str = ""
    error: str | None = None

    @property
    def label(self) -> str:
        return f"level-{self.level:g}"

    def outcome(self) -> LevelOutcome:
        return LevelOutcome(self.level, self.run_id, error=self.error)


def _train_level(session: experiment.Session, cfg: ExperimentConfig, dense: Any, level: float,
                 root: Path) -> _TrainedLevel:
    """One level's model in its own child run; an exception ends that run FAILED and is returned."""
    level_cfg = replace(cfg, optim_level=level)
    folder = experiment.make_folder(root / f"level-{level:g}", ("deployment", "training_artifacts/sparse", "logs"))
    out = _TrainedLevel(level, level_cfg, None, folder)
    try:
        with tracking.run(f"level-{level:g}", nested=True,
                          tags={"sparsify.role": "level", "sparsify.optim_level": f"{level:g}",
                                "sparsify.use_case": session.use_case.name}) as run:
            out.run_id = run.info.run_id
            tracking.log_params(level_cfg.as_params())
            out.plan, out.recipe = experiment.plan_level(session, level_cfg)
            out.model = experiment.train_level(session, level_cfg, dense, out.recipe, folder)
    except Exception as exc:  # noqa: BLE001 - one level's failure must not end the sweep
        out.error = _level_failed(level, exc)
    return out


def _conclude_level(session: experiment.Session, dense: Any, trained: _TrainedLevel,
                    speed: experiment.SessionResult, int8_only: Int8Only | None) -> LevelOutcome:
    """Back in the level's run: its comparison from the shared session, figures, registration."""
    try:
        with tracking.run(trained.label, nested=True, run_id=trained.run_id):
            result = experiment.conclude_level(session, trained.cfg, dense, trained.model, trained.plan,
                                               trained.recipe, trained.folder, trained.run_id, speed,
                                               trained.label, alias=None,
                                               int8_only=int8_only if trained.model is not dense else None)
        return LevelOutcome(trained.level, trained.run_id, result=result)
    except Exception as exc:  # noqa: BLE001 - one level's failure must not end the sweep
        return LevelOutcome(trained.level, trained.run_id, error=_level_failed(trained.level, exc))


def _level_failed(level: float, exc: Exception) -> str:
    if not isinstance(exc, UserError):
        traceback.print_exc()
    reason = f"{type(exc).__name__}: {exc}"
    print(f"error: optim level {level:g} failed ({_first_line(reason)}); the sweep goes on", file=sys.stderr)
    return reason


def _conclude(cfg: ExperimentConfig, options: SweepOptions, parent_id: str, experiment_id: str, tracking_uri: str,
              root: Path, dense: ModelReport, outcomes: list[LevelOutcome], notes: list[str],
              int8_only: Int8Only | None = None, speed: experiment.SessionResult | None = None) -> SweepResult:
    """Table, Pareto fronts, recommendation and figure, logged to the sweep run; aliases moved.

    Every figure is on the deploy engine and every speedup compares it with itself (the session's
    per-round ratios); a level DeepSparse could not compile at a batch size has no figure on that axis.
    A usable INT8-only reference is a point and a row of its own, and the recommendation when no level
    beats it (pareto.recommend); it is then registered, with the aliases.
    """
    engine, bs = dense.onnx_engine, cfg.benchmark_batch_size  # the deploy engine, as it ran here
    done = [o for o in outcomes if o.result]
    reference = int8_only.usable if int8_only is not None and speed is not None else None
    points = [_point("dense", dense, {}, engine, bs, is_dense=True)]
    points += [_point(f"{o.level:g}", o.result.sparse, o.result.comparison, engine, bs) for o in done]
    own = experiment.compare(dense, reference, speed, experiment.INT8_ONLY_LABEL)[0] if reference else {}
    if reference is not None:
        points.append(_point(INT8_ONLY_ROW, reference, own, engine, bs, is_int8_only=True))
    fronts = {axis: pareto.pareto_front(points, axis) for axis in ("latency", "throughput")}
    pick = pareto.recommend(points, options.max_metric_drop, options.min_speedup, engine=engine)
    picks_reference = pick.index is not None and points[pick.index].is_int8_only
    recommended = None if pick.index is None or picks_reference else done[pick.index - 1]
    unreliable = [o for o in done if not o.result.reliability.reliable]
    reason = pick.reason
    if unreliable:
        reason += f" (speedups unreliable: {unreliable[0].result.reliability.reason})"
    index = len(outcomes) if picks_reference else None if recommended is None else outcomes.index(recommended)
    recommendation = pareto.Recommendation(index, reason)

    rows = [_row("dense", dense, {}, engine, bs, "FINISHED", dense.run_id, points[0], 0, fronts, False)]
    if reference is not None:
        rows.append(_row(INT8_ONLY_ROW, reference, own, engine, bs, "FINISHED", reference.run_id, points[-1],
                         len(points) - 1, fronts, picks_reference, reliable=done[0].result.reliability.reliable
                         if done else True))
    by_level = {id(o): i for i, o in enumerate(done, 1)}
    for o in outcomes:
        if o.result:
            i = by_level[id(o)]
            rows.append(_row(f"{o.level:g}", o.result.sparse, o.result.comparison, engine, bs, "FINISHED", o.run_id,
                             points[i], i, fronts, o is recommended, o.result))
        else:
            rows.append({"level": f"{o.level:g}", "status": "FAILED", "run_id": o.run_id or "",
                         "failure_reason": _first_line(o.error)[:300]})
    tracking.log_rows(rows, TABLE_FILE)
    import matplotlib.pyplot as plt

    fig = report.pareto_figure(points, fronts, pick.index,
                               dense.metrics.main_name, bs)
    mlflow.log_figure(fig, PARETO_FIGURE)
    plt.close(fig)

    name = next((o.result.registered.name for o in done if o.result.registered), None)
    int8_only_version = None
    if picks_reference and cfg.register and reference.logged_model is not None:
        name = name or cfg.registered_model_name or f"{cfg.use_case}-{Path(cfg.model).stem}"
        int8_only_version = _register_int8_only(name, reference, own, parent_id, reason, reliable=not unreliable)
        rows[1]["registered_version"] = int8_only_version.version
    tags = {"sparsify.recommendation": reason[:5000],
            "sparsify.levels_failed": ",".join(f"{o.level:g}" for o in outcomes if not o.result),
            RELIABLE_TAG: str(not unreliable).lower()}
    if name:
        tags["sparsify.registered_model"] = name
        _tag_versions(name, parent_id, done)
    if picks_reference:
        tags["sparsify.recommended_level"] = INT8_ONLY_ROW
        if int8_only_version is not None:
            tags["sparsify.recommended_version"] = int8_only_version.version
    if recommended is not None:
        tags["sparsify.recommended_level"] = f"{recommended.level:g}"
        MlflowClient().set_tag(recommended.run_id, "sparsify.recommended", "true")
        if recommended.result.registered:
            version = recommended.result.registered.version
            tags["sparsify.recommended_version"] = version
            client = MlflowClient()
            for alias in (RECOMMENDED_ALIAS, CANDIDATE_ALIAS):
                client.set_registered_model_alias(name, alias, version)
            client.set_model_version_tag(name, version, "recommended_by_sweep", parent_id)
    mlflow.set_tags(tags)
    tracking.log_metrics({"levels.finished": len(done), "levels.failed": len(outcomes) - len(done)}
                         | ({} if recommended is None else {"recommended_level": recommended.level}))
    lost = [experiment.large_drop_note(o.result.comparison["main_drop"], dense.metrics.main_name, o.result.plan)
            for o in done]
    return SweepResult(cfg, options, parent_id, experiment_id, tracking_uri, root, dense, outcomes, rows,
                       recommendation, name, notes=[*notes, *filter(None, lost)], int8_only=int8_only,
                       int8_only_version=int8_only_version)


INT8_ONLY_ROW = "int8-only"  # the reference's label in the sweep's table, figure and recommendation


def _register_int8_only(name: str, reference: ModelReport, own: dict[str, float], parent_id: str,
                        reason: str, reliable: bool) -> RegisteredVersion:
    """The INT8-only model as a version, recommended: no level of the sweep was faster within the gates."""
    main = reference.onnx_metrics
    tags = {"int8_only": "true", "recipe_source": "post-training INT8 (no pruning, no training)",
            "optim_level": "", "target_sparsity": "0", "int8": "true",
            "sparsity": f"{reference.exported.weight_sparsity:.4f}", "main_metric": main.main_name,
            main.main_name: f"{main.main:.4f}", "main_drop": f"{own['main_drop']:.2f}",
            "speedup_vs_int8_only": "1.00", "benchmark_reliable": str(reliable).lower(),
            "recommended_by_sweep": parent_id, "sweep_run_id": parent_id}
    if "speedup_vs_best_dense.bs1" in own:
        tags["speedup_vs_best_dense"] = f"{own['speedup_vs_best_dense.bs1']:.2f}"
    version = register(reference.logged_model, name, tags=tags, description=f"INT8 alone: the dense model "
                       f"quantized post-training. Recommended by sweep {parent_id}: {reason}"[:5000],
                       alias=RECOMMENDED_ALIAS)
    MlflowClient().set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
    return version


def _tag_versions(name: str, parent_id: str, done: list[LevelOutcome]) -> None:
    client = MlflowClient()
    for o in done:
        if o.result.registered:
            client.set_model_version_tag(name, o.result.registered.version, "sweep_run_id", parent_id)


def _point(label: str, side: ModelReport, comparison: dict[str, float], engine: str, bs: int,
           is_dense: bool = False, is_int8_only: bool = False) -> pareto.Point:
    lat, thr = side.benchmarks.get(f"{engine}.bs1"), side.benchmarks.get(f"{engine}.bs{bs}")
    return pareto.Point(
        label=label, main=side.onnx_metrics.main,
        latency_ms=lat.latency_ms_median if lat else None,
        throughput=thr.items_per_second if thr else None,
        main_drop=comparison.get("main_drop", 0.0),
        speedup=1.0 if is_dense else comparison.get(f"speedup.{engine}.bs1"),
        is_dense=is_dense, over_int8_only=comparison.get("speedup_vs_int8_only.bs1"), is_int8_only=is_int8_only)


def _row(label: str, side: ModelReport, comparison: dict[str, float], engine: str, bs: int,
         status: str, run_id: str | None, point: pareto.Point, index: int, fronts: dict[str, list[int]],
         recommended: bool, result: ExperimentResult | None = None, reliable: bool | None = None) -> dict[str, Any]:
    """One line of the table; speedups only against the dense model on the same engine, with the
    engine named where DeepSparse could not compile the level (its speedup is then ONNX Runtime's)."""
    row: dict[str, Any] = {
        "level": label, "status": status,
        "target_sparsity": 0.0 if result is None else result.plan.target_sparsity,
        "sparsity": round(side.exported.weight_sparsity, 4),
        "main_metric": side.metrics.main_name, "main": round(point.main, 4),
        "main_drop": point.main_drop, "engine": engine,
        "latency_ms_bs1": None if point.latency_ms is None else round(point.latency_ms, 3),
        f"items_per_second_bs{bs}": None if point.throughput is None else round(point.throughput, 1),
    }
    for batch in (1, bs):
        headline = (engine, 1.0) if not comparison else headline_speedup(comparison, engine, batch)
        name = f"speedup.{headline[0]}.bs{batch}" if headline else ""
        row[f"speedup_bs{batch}"] = None if headline is None else round(headline[1], 3)
        row[f"speedup_bs{batch}_range"] = (f"{comparison[name + '.min']:.2f}-{comparison[name + '.max']:.2f}"
                                           if name in comparison else "")
        row[f"speedup_bs{batch}_engine"] = "" if headline is None else headline[0]
    row |= {
        "reliable": reliable if reliable is not None else True if result is None else result.reliability.reliable,
        "speedup_vs_int8_only_bs1": comparison.get("speedup_vs_int8_only.bs1"),
        "size_mb": round(side.exported.size_bytes / MB, 3),
        "size_gzip_mb": round(side.exported.gzip_size_bytes / MB, 3),
        "pareto_latency": index in fronts["latency"], "pareto_throughput": index in fronts["throughput"],
        "recommended": recommended,
        "registered_version": "" if result is None or result.registered is None else result.registered.version,
        "run_id": run_id or "", "failure_reason": "",
    }
    return row


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""
