"""The training-aware experiment as one straight line:

config -> use case -> data + model -> recipe -> dense baseline (cached) -> training-aware model
-> export -> ONNX check + benchmarks -> MLflow comparison -> registry -> summary.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import mlflow
import torch
from torch import nn

from sparsify_mlflow import distributed, run_logging, stages, tracking, usecases
from sparsify_mlflow.benchmark import BenchmarkResult, benchmark
from sparsify_mlflow.checkpoint import CHECKPOINT_NAME, Checkpoint, save_atomically
from sparsify_mlflow.config import TEACHER_SELF, ExperimentConfig
from sparsify_mlflow.deployment import Handover, write_deployment, write_metrics
from sparsify_mlflow.engines import load_engine, plan_benchmarks, predict_batches
from sparsify_mlflow.export import ExportedModel, export_onnx
from sparsify_mlflow.levels import Distillation, PruningScope, RecipePlan, plan_recipe, recipe_yaml
from sparsify_mlflow.resume import CONFIG_ARTIFACT, FOLDER_TAG, RESUMED_TAG, ResumePoint, mark_alive
from sparsify_mlflow.registry import CANDIDATE_ALIAS, RegisteredVersion, register_onnx, register_pyfunc
from sparsify_mlflow.training import (
    EpochStats,
    TrainResult,
    epoch_stats_from_dict,
    resolve_device,
    scope_sparsity,
    torch_predictor,
    train_stepping_down,
)
from sparsify_mlflow.usecases.base import DataBundle, Metrics, UseCase

BASELINE_KEY_TAG = "sparsify.baseline_key"
BASELINE_CACHE_VERSION = 1


@dataclass
class ModelReport:
    """One side of the comparison (dense baseline or training-aware model), as logged."""

    role: str
    run_id: str
    metrics: Metrics                       # PyTorch, validation split
    onnx_metrics: Metrics                  # the exported file on the deployment engine
    onnx_engine: str
    exported: ExportedModel
    benchmarks: dict[str, BenchmarkResult]  # "deepsparse.bs1", "onnxruntime.bs16", ...
    history: list[EpochStats]
    layer_sparsity: dict[str, float]
    sparsity: float                        # over the pruned layers, PyTorch
    train_seconds: float
    reused_from_run: str | None = None
    notes: list[str] = field(default_factory=list)

    def flat_metrics(self) -> dict[str, float]:
        """The same names on child runs (bare) and on the parent (prefixed dense./sparse.)."""
        out = {"main": self.metrics.main, **self.metrics.values}
        out.update({f"onnx.{k}": v for k, v in self.onnx_metrics.values.items()})
        out.update({
            "sparsity.pruned_layers": self.sparsity,
            "sparsity.exported": self.exported.weight_sparsity,
            "size.onnx_bytes": self.exported.size_bytes,
            "size.onnx_gzip_bytes": self.exported.gzip_size_bytes,
            "train_seconds": self.train_seconds,
        })
        for key, result in self.benchmarks.items():
            out.update(result.as_metrics(key))
        return out


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    plan: RecipePlan
    dense: ModelReport
    sparse: ModelReport
    comparison: dict[str, float]
    experiment_dir: Path
    deployment_dir: Path
    registered: RegisteredVersion | None = None
    notes: list[str] = field(default_factory=list)


def run_training_aware(cfg: ExperimentConfig, resume: ResumePoint | None = None) -> ExperimentResult:
    """The experiment; with `resume`, the stopped one continued in its own runs (`cfg` is then its config)."""
    cfg, use_case, tracking_uri, experiment_id = open_store(cfg)
    folder = make_folder(resume.folder) if resume else _experiment_folder(cfg, use_case)
    clock = stages.start()  # stage_seconds.* metrics + timing/stages.json (benchmarks/ reads them)
    with tracking.kept_locally(folder), tracking.run(
            f"{use_case.name}-{Path(cfg.model).stem}-L{cfg.optim_level:g}", experiment_id=experiment_id,
            tags={"sparsify.use_case": use_case.name}, run_id=resume.parent_run_id if resume else None) as parent:
        if resume is None:  # a resumed run keeps the params (and config) it was started with
            tracking.log_params(cfg.as_params())
            mlflow.log_dict(cfg.to_json(), CONFIG_ARTIFACT)
        mlflow.set_tags({FOLDER_TAG: str(folder), **mark_alive()})
        session = prepare(cfg, use_case, experiment_id, tracking_uri)
        session.resume = resume
        plan, recipe = plan_level(session, cfg)
        dense = train_dense_baseline(session, folder)
        result = finish_level(session, cfg, dense, plan, recipe, folder, parent.info.run_id)
        tracking.log_metrics(clock.metrics())
        mlflow.log_dict(clock.as_dict(), "timing/stages.json")
    return result


# The steps of run_training_aware, public so that a sweep prepares data, model and dense baseline
# once and runs only plan_level + finish_level per optim level (sweep.py).

@dataclass
class Session:
    """What every optim level of one model on one dataset shares, prepared once in the parent run."""

    cfg: ExperimentConfig
    use_case: UseCase
    data: DataBundle
    model: nn.Module               # the input model; the dense baseline fine-tunes it in place
    scope: PruningScope
    device: torch.device
    experiment_id: str
    tracking_uri: str
    notes: list[str]
    resume: ResumePoint | None = None  # --resume: the stopped experiment's runs and checkpoints


def open_store(cfg: ExperimentConfig) -> tuple[ExperimentConfig, UseCase, str, str]:
    """Use-case defaults, tracking store and experiment id: everything before the first run starts."""
    use_case = usecases.resolve(cfg.use_case)
    cfg = cfg.with_defaults(model=use_case.default_model, epochs=use_case.default_epochs,
                            batch_size=use_case.default_batch_size, lr=use_case.default_lr,
                            pretrained=getattr(use_case, "default_pretrained", None),
                            distill=getattr(use_case, "default_distill", False),
                            eval_metric=use_case.main_metric)
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri, cfg.working_dir)
    tracking.connect(tracking_uri)
    return cfg, use_case, tracking_uri, tracking.ensure_experiment(cfg.experiment_name, cfg.working_dir)


def prepare(cfg: ExperimentConfig, use_case: UseCase, experiment_id: str, tracking_uri: str) -> Session:
    """In the active run: load the data, build the model, find the pruning scope and the device."""
    data = use_case.load_data(cfg)
    run_logging.log_data(data)
    model = use_case.build_model(cfg, data)
    tracking.log_params(data.info | {"data.fingerprint": data.fingerprint, "data.source": data.source})
    scope = use_case.pruning_scope(model)
    device = resolve_device(cfg.device)
    print(f"Training on {device} (--device {cfg.device}); benchmarks run on the CPU.")
    mlflow.set_tags({"sparsify.device": str(device), "sparsify.deploy_engine": cfg.deploy_engine})
    notes = run_logging.engine_notes() if cfg.deploy_engine == "deepsparse" else []
    return Session(cfg, use_case, data, model, scope, device, experiment_id, tracking_uri, notes)


def plan_level(session: Session, cfg: ExperimentConfig) -> tuple[RecipePlan, str]:
    """The level's recipe plan and YAML (the user's --recipe if given), logged to the active run."""
    distillation = Distillation(cfg.distill_hardness, cfg.distill_temperature) if cfg.distill else None
    plan = plan_recipe(cfg.optim_level, cfg.epochs, session.scope, cfg.lr, distillation=distillation,
                       args=cfg.recipe_args)
    tracking.log_params(plan.summary())
    recipe = cfg.recipe.read_text() if cfg.recipe else recipe_yaml(plan)
    mlflow.log_text(recipe, "recipe.yaml")
    return plan, recipe


def train_dense_baseline(session: Session, folder: Path) -> _Trained:
    """The dense baseline as a child of the active run (trained, or reused from the MLflow cache)."""
    s = session
    return _dense_baseline(s.cfg, s.use_case, s.data, s.model, s.scope, s.experiment_id, s.device, folder,
                           s.resume)


def finish_level(session: Session, cfg: ExperimentConfig, dense: _Trained, plan: RecipePlan, recipe: str,
                 folder: Path, run_id: str, alias: str | None = CANDIDATE_ALIAS) -> ExperimentResult:
    """In the active run (`run_id`): train the level's model from the dense baseline, compare both,
    log figures and the experiment folder, write the deployment folder, register (with `alias`)."""
    use_case, data, scope = session.use_case, session.data, session.scope
    notes = list(session.notes)
    if cfg.optim_level == 0 and cfg.recipe is None:
        sparse = dense  # level 0: the input model (fine-tuned) is the result
        notes.append("optim level 0: no sparsification; the dense baseline is the result")
    else:
        sparse = _training_aware(cfg, use_case, data, dense.model, scope, recipe, session.device, folder,
                                 session.resume)
    comparison = _compare(dense.report, sparse.report)
    tracking.log_metrics(comparison)
    for role, side in (("dense", dense.report), ("sparse", sparse.report)):
        tracking.log_metrics({f"{role}.{k}": v for k, v in side.flat_metrics().items()})
    notes += dense.report.notes + (sparse.report.notes if sparse is not dense else [])
    handover = Handover(f"{use_case.name} {Path(cfg.model).stem}, optim level {cfg.optim_level:g}", run_id, plan,
                        dense.report, sparse.report, comparison, notes)
    with stages.stage("tracking"):
        run_logging.log_figures(dense.report, sparse.report, plan, scope, use_case)
        run_logging.log_prediction_figures(use_case, data, dense.model, sparse.model)
        deployment = write_deployment(folder, use_case, data, recipe, handover)
        write_metrics(folder, handover)
        mlflow.log_artifacts(str(folder), artifact_path="experiment")  # the folder as written, nothing else
    result = ExperimentResult(cfg, run_id, session.experiment_id, session.tracking_uri, plan,
                              dense.report, sparse.report, comparison, folder, deployment, notes=notes)
    if cfg.register:
        with stages.stage("registration"):
            result.registered = _register(cfg, use_case, data, result, recipe, alias)
        mlflow.set_tags({"sparsify.registered_model": result.registered.name,
                         "sparsify.registered_version": result.registered.version})
    return result


@dataclass
class _Trained:
    report: ModelReport
    model: nn.Module


def _dense_baseline(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, model: nn.Module,
                    scope: PruningScope, experiment_id: str, device: torch.device, folder: Path,
                    resume: ResumePoint | None = None) -> _Trained:
    """Fine-tune the input model with the same schedule and no sparsification, or reuse a cached one.

    Resumed: a dense child that finished is reused as is; an unfinished one continues from its checkpoint.
    """
    key = _baseline_key(cfg, data)
    plan = plan_recipe(0.0, cfg.epochs, scope, cfg.lr)
    work = folder / "training_artifacts" / "dense"
    run_id, status = resume.child("dense") if resume else (None, None)
    with tracking.run("dense-baseline", nested=True, tags={"sparsify.role": "dense"}, run_id=run_id) as child:
        tracking.log_params(plan.summary() | {"baseline_key": key})
        own = status == "FINISHED"  # resumed after the baseline finished: its own logged model
        cached = run_id if own else tracking.find_finished_run(experiment_id, BASELINE_KEY_TAG, key)
        if cached:
            print(f"Resuming: the dense baseline of run {run_id} is complete; reusing it." if own else
                  f"Reusing the dense baseline trained in run {cached} (same model, data, epochs, seed).")
            state = torch.load(tracking.download(cached, "checkpoint/model.pt", work), map_location="cpu",
                               weights_only=True)
            model.load_state_dict(state)
            history = _history_from_json(tracking.download(cached, "history.json", work).read_text(),
                                         cfg.eval_metric)
            seconds = 0.0
            if not own:
                mlflow.set_tag("sparsify.reused_from_run", cached)
                for stats in history:
                    run_logging.log_epoch(stats)
        else:
            with stages.stage("baseline_training"):
                model, result = _train(cfg, model, use_case, data, recipe_yaml(plan), scope, device, folder, "dense",
                                       resume_from=resume.checkpoints.get("dense") if resume else None)
            history, seconds = result.history, result.seconds
        mlflow.log_text(recipe_yaml(plan), "recipe.yaml")
        model.cpu()
        save_atomically(model.state_dict(), work / "model.pt")
        mlflow.log_artifact(str(work / "model.pt"), "checkpoint")
        tracking.log_json([asdict(h) for h in history], "history.json")
        report_ = _finish_model(cfg, use_case, data, model, scope, "dense", child.info.run_id,
                                history, seconds, work, engines=benchmark_engines(cfg.deploy_engine, "dense"))
        report_.reused_from_run = None if own else cached
        mlflow.set_tag(BASELINE_KEY_TAG, key)  # only now: a failed run must not be found as a cache
    return _Trained(report_, model)


def _training_aware(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, dense_model: nn.Module,
                    scope: PruningScope, recipe: str, device: torch.device, folder: Path,
                    resume: ResumePoint | None = None) -> _Trained:
    """Prune and quantize, starting from the fine-tuned dense baseline (GMP prunes a trained model).

    Resumed: the same child run continues from its checkpoint (the recipe restarts at its epoch).
    """
    model = copy.deepcopy(dense_model)
    work = folder / "training_artifacts" / "sparse"
    run_id = resume.child("sparse")[0] if resume else None
    with tracking.run("training-aware", nested=True, tags={"sparsify.role": "sparse"}, run_id=run_id) as child:
        mlflow.log_text(recipe, "recipe.yaml")
        teacher = _teacher(cfg, use_case, data, dense_model)
        with stages.stage("training_aware_training"):
            model, result = _train(cfg, model, use_case, data, recipe, scope, device, folder, "sparse", teacher,
                                   resume_from=resume.checkpoints.get("sparse") if resume else None)
        model.cpu()
        save_atomically(model.state_dict(), work / "model.pt")
        tracking.log_json([asdict(h) for h in result.history], "history.json")
        report_ = _finish_model(cfg, use_case, data, model, scope, "sparse", child.info.run_id,
                                result.history, result.seconds, work,
                                engines=benchmark_engines(cfg.deploy_engine, "sparse"))
    return _Trained(report_, model)


def _train(cfg: ExperimentConfig, model: nn.Module, use_case: UseCase, data: DataBundle, recipe: str,
           scope: PruningScope, device: torch.device, folder: Path, role: str, teacher: nn.Module | None = None,
           resume_from: Checkpoint | None = None) -> tuple[nn.Module, TrainResult]:
    """One training stage in the active run; out-of-memory errors halve the batch size (logged).

    Each epoch ends with a checkpoint in the stage's folder, also logged to its run (--resume reads either).
    """
    if resume_from is not None:
        mlflow.set_tag(RESUMED_TAG, str(resume_from.epoch))
    ctx = distributed.current()
    if ctx is not None:  # the workers train the same stage beside us
        batch = resume_from.batch_size if resume_from else cfg.batch_size
        distributed.send(distributed.Job(cfg, recipe, batch, cfg.lr, cfg.seed, role, cfg.eval_metric, cfg.train_kwargs,
                                         str(resume_from.source) if resume_from and resume_from.source else None))
        mlflow.set_tags({"sparsify.ddp.world_size": str(ctx.world_size), "sparsify.ddp.backend": dist_backend()})
    model, result = train_stepping_down(
        model, use_case, data, recipe, scope, batch_size=resume_from.batch_size if resume_from else cfg.batch_size,
        lr=cfg.lr, seed=cfg.seed, device=device,
        desc=role, on_epoch=run_logging.log_epoch, log_dir=folder / "logs", teacher=teacher,
        main_metric=cfg.eval_metric, kwargs=cfg.train_kwargs, on_retry=run_logging.log_oom_retry,
        resume_from=resume_from, checkpoint_path=folder / "training_artifacts" / role / CHECKPOINT_NAME,
        on_checkpoint=run_logging.log_checkpoint)
    # Done: the run keeps the logged copy (what --resume falls back to); the folder, logged whole
    # to the parent as experiment/, should not carry a second one.
    (folder / "training_artifacts" / role / CHECKPOINT_NAME).unlink(missing_ok=True)
    tracking.log_params({"train.batch_size": result.batch_size, "train.oom_retries": len(result.oom_retries)})
    return model, result


def dist_backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend())


def _teacher(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, dense_model: nn.Module) -> nn.Module | None:
    """--teacher: none (off), the dense baseline (self), or a named model loaded with its weights."""
    if not cfg.distill:
        return None
    if cfg.teacher == TEACHER_SELF:
        return dense_model
    teacher, facts = use_case.create_model(replace(cfg, model=cfg.teacher), len(data.label_names), pretrained=True)
    tracking.log_params({f"teacher.{k}": v for k, v in facts.items()})
    return teacher.eval()


def _finish_model(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, model: nn.Module,
                  scope: PruningScope, role: str, run_id: str, history: list[EpochStats], seconds: float,
                  work: Path, engines: tuple[str, ...]) -> ModelReport:
    """Evaluate in PyTorch, export, check the ONNX file on the engine, benchmark; log it all."""
    with stages.stage("evaluate"):
        metrics = use_case.evaluate(torch_predictor(model, torch.device("cpu")), data, cfg.batch_size
                                    ).with_main(cfg.eval_metric)
    sparsity, per_layer = scope_sparsity(model, scope)
    input_names, output_names = use_case.io_names(data)
    sample = use_case.sample_inputs(data, 2)
    with stages.stage("export"):
        exported = export_onnx(model, tuple(torch.from_numpy(x) for x in sample), work,
                               input_names=input_names, output_names=output_names)
    with stages.stage("benchmark"):  # the DeepSparse probe compiles in a child process
        settings, (check_engine, check_bs), notes = _engine_settings(
            exported.path, engines, (1, cfg.benchmark_batch_size))
    with stages.stage("evaluate"):
        engine = load_engine(exported.path, check_engine, batch_size=check_bs)
        onnx_metrics = use_case.evaluate(lambda xs: predict_batches(engine, xs), data, check_bs
                                         ).with_main(cfg.eval_metric)
        del engine
    rows = use_case.sample_inputs(data, cfg.benchmark_batch_size)
    benchmarks: dict[str, BenchmarkResult] = {}
    for name, bs in settings:
        print(f"Benchmarking the {role} model on {name}, batch size {bs}...")
        with stages.stage("benchmark"):
            benchmarks[f"{name}.bs{bs}"] = benchmark(exported.path, rows, engine=name, batch_size=bs,
                                                    iterations=cfg.benchmark_iterations,
                                                    warmup_iterations=max(3, cfg.benchmark_iterations // 5))
    rep = ModelReport(role, run_id, metrics, onnx_metrics, check_engine, exported, benchmarks, history,
                      per_layer, sparsity, seconds, notes=notes)
    for note in notes:
        print(f"note: {note}")
    if notes:
        mlflow.set_tag("sparsify.engine_fallback", "; ".join(notes)[:5000])
    rep.notes += run_logging.supported_ops_warning(exported.path, role, benchmarks)
    tracking.log_metrics(rep.flat_metrics())
    tracking.log_rows(run_logging.sparsity_rows(per_layer, scope), "sparsity_per_layer.json")
    for table, rows_ in metrics.tables.items():
        tracking.log_rows(rows_, f"{table}.json")
    mlflow.log_artifact(str(exported.path), "onnx")
    return rep


def benchmark_engines(deploy_engine: str, role: str) -> tuple[str, ...]:
    """The deploy engine measures both models; ONNX Runtime also measures the dense one, as the reference."""
    return tuple(dict.fromkeys((deploy_engine, "onnxruntime"))) if role == "dense" else (deploy_engine,)


def _engine_settings(path: Path, engines: tuple[str, ...], batch_sizes: tuple[int, ...]
                     ) -> tuple[list[tuple[str, int]], tuple[str, int], list[str]]:
    """Which (engine, batch size) pairs to benchmark, which one checks the ONNX metric, and notes."""
    settings, safe, notes = plan_benchmarks(path, engines, batch_sizes)
    check = ("deepsparse", max(safe)) if safe else ("onnxruntime", batch_sizes[-1])
    return settings, check, notes


def _compare(dense: ModelReport, sparse: ModelReport) -> dict[str, float]:
    """Drop in the main metric (points) and speedups at matching settings."""
    out = {"main_drop": round(100 * (dense.metrics.main - sparse.metrics.main), 4)}
    for key, result in sparse.benchmarks.items():
        if key in dense.benchmarks:
            out[f"speedup.{key}"] = result.items_per_second / dense.benchmarks[key].items_per_second
        ort = dense.benchmarks.get("onnxruntime." + key.split(".", 1)[1])
        if ort is not None:
            out[f"speedup_vs_onnxruntime.{key}"] = result.items_per_second / ort.items_per_second
    return out


def _baseline_key(cfg: ExperimentConfig, data: DataBundle) -> str:
    """What makes two dense baselines the same: model, data, schedule and seed."""
    fields = {
        "v": BASELINE_CACHE_VERSION, "use_case": cfg.use_case, "model": cfg.model, "pretrained": cfg.pretrained,
        "data": data.fingerprint, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "seed": cfg.seed, "image_size": cfg.image_size,
    }
    if cfg.train_kwargs.given():  # only when set, so caches of runs without --train-kwargs stay valid
        fields["train_kwargs"] = cfg.train_kwargs.given()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _history_from_json(text: str, main_metric: str | None) -> list[EpochStats]:
    return [epoch_stats_from_dict(row, main_metric) for row in json.loads(text)]


def _register(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, result: ExperimentResult,
              recipe: str, alias: str | None = CANDIDATE_ALIAS) -> RegisteredVersion:
    """Register the sparse ONNX model in its own run, tagged with what a reviewer compares."""
    sparse, dense = result.sparse, result.dense
    input_names, output_names = use_case.io_names(data)
    inputs = dict(zip(input_names, use_case.sample_inputs(data, 2)))
    engine = load_engine(sparse.exported.path, "onnxruntime", batch_size=2)
    outputs = dict(zip(output_names, engine.run(list(inputs.values()))))
    name = cfg.registered_model_name or f"{use_case.name}-{Path(cfg.model).stem}"
    speedup = result.comparison.get(f"speedup.{sparse.onnx_engine}.bs1", 1.0)
    main = sparse.metrics.main_name
    tags = {
        "use_case": use_case.name, "model": cfg.model, "optim_level": f"{cfg.optim_level:g}",
        "target_sparsity": f"{result.plan.target_sparsity:g}", "sparsity": f"{sparse.exported.weight_sparsity:.4f}",
        "main_metric": main, main: f"{sparse.metrics.main:.4f}", "main_drop": f"{result.comparison['main_drop']:.2f}",
        "speedup": f"{speedup:.2f}", "engine": sparse.onnx_engine,
        "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest()[:16], "data_fingerprint": data.fingerprint,
        "parent_run_id": result.parent_run_id,
    }
    description = (
        f"{use_case.name} {cfg.model} at optim level {cfg.optim_level:g}: "
        f"{sparse.exported.weight_sparsity:.1%} sparse{' + INT8' if result.plan.quantize else ''}; "
        f"{main} {sparse.metrics.main:.4f} vs dense {dense.metrics.main:.4f} "
        f"({result.comparison['main_drop']:+.2f} points drop); {sparse.onnx_engine} batch-1 latency "
        f"{sparse.benchmarks[f'{sparse.onnx_engine}.bs1'].latency_ms_median:.2f} ms vs dense "
        f"{dense.benchmarks[f'{sparse.onnx_engine}.bs1'].latency_ms_median:.2f} ms ({speedup:.2f}x)."
    )
    with mlflow.start_run(run_id=sparse.run_id, nested=True):
        serving = getattr(use_case, "serving_model", None)  # raw inputs in (text): a pyfunc around the ONNX
        if serving is not None:
            return register_pyfunc(name=name, tags=tags, description=description, alias=alias,
                                   **serving(data, result.deployment_dir))
        return register_onnx(sparse.exported.path, name, example_inputs=inputs, example_outputs=outputs,
                             tags=tags, description=description, alias=alias)


def _experiment_folder(cfg: ExperimentConfig, use_case: UseCase) -> Path:
    """Sparsify's layout: <type>_<use-case>_<date-time>/ with deployment/, training_artifacts/, logs/."""
    return make_folder(cfg.working_dir / f"training-aware_{use_case.name}_{timestamp()}")


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def make_folder(folder: Path, parts: tuple[str, ...] = ("deployment", "training_artifacts/dense",
                                                        "training_artifacts/sparse", "logs")) -> Path:
    for sub in parts:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder
