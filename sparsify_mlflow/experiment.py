"""The training-aware experiment as one straight line:

config -> use case -> data + model -> recipe -> dense baseline (cached) -> training-aware model
-> export -> ONNX check + benchmarks -> MLflow comparison -> registry -> summary.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from sparsify_mlflow import distributed, run_logging, stages, tracking, usecases
from sparsify_mlflow.checkpoint import CHECKPOINT_NAME, Checkpoint, save_atomically
from sparsify_mlflow.config import DEFAULT_LEVEL, TEACHER_SELF, ExperimentConfig
from sparsify_mlflow.deployment import Handover, write_deployment, write_metrics
from sparsify_mlflow.engines import (
    layer_timings,
    load_engine,
    openvino_facts,
    openvino_status,
    plan_benchmarks,
    predict_batches,
)
from sparsify_mlflow.errors import TrackingError
from sparsify_mlflow.export import export_onnx
from sparsify_mlflow.headline import headline_speedup, model_name, reference_name
from sparsify_mlflow.levels import (
    Distillation,
    PruningScope,
    RecipePlan,
    plan_recipe,
    post_training_recipe,
    recipe_yaml,
)
from sparsify_mlflow.options import given
from sparsify_mlflow.post_training import quantize_post_training, reference_failure
from sparsify_mlflow.qdq import QDQ_FILE, QdqError, export_qdq
from sparsify_mlflow.recipe_facts import check_qat_steps, plan_from_recipe, recipe_facts
from sparsify_mlflow.registry import (
    CANDIDATE_ALIAS,
    LoggedModel,
    find_logged_model,
    link_metrics,
    log_onnx,
    log_pyfunc,
    register,
)
from sparsify_mlflow.results import EpochStats, ExperimentResult, Int8Only, ModelReport, Qdq, epoch_stats_from_dict
from sparsify_mlflow.resume import CONFIG_ARTIFACT, FOLDER_TAG, RESUMED_TAG, ResumePoint, mark_alive, stage_key
from sparsify_mlflow.speed_session import Reliability, SessionResult, plan_session, run_session
from sparsify_mlflow.training import (
    Stage,
    TrainResult,
    error_line,
    resolve_device,
    scope_sparsity,
    torch_predictor,
    train_stepping_down,
    with_layer_costs,
)
from sparsify_mlflow.ui_view import ensure_headline_view
from sparsify_mlflow.usecases.base import DataBundle, UseCase

BASELINE_KEY_TAG = "sparsify.baseline_key"
BASELINE_CACHE_VERSION = 1


def run_training_aware(cfg: ExperimentConfig, resume: ResumePoint | None = None) -> ExperimentResult:
    """The experiment; with `resume`, the stopped one continued in its own runs (`cfg` is then its config)."""
    cfg, use_case, tracking_uri, experiment_id = open_store(cfg)
    folder = make_folder(resume.folder) if resume else _experiment_folder(cfg, use_case)
    clock = stages.start()  # stage_seconds.* metrics + timing/stages.json (benchmarks/ reads them)
    with removed_if_empty(folder), tracking.kept_locally(folder), tracking.run(
            f"{use_case.name}-{Path(cfg.model).stem}-{run_suffix(cfg)}", experiment_id=experiment_id,
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
    teacher: nn.Module | None = None   # a named --teacher, loaded and checked in prepare()
    resume: ResumePoint | None = None  # --resume: the stopped experiment's runs and checkpoints


def run_suffix(cfg: ExperimentConfig) -> str:
    """L0.5 for a level, the file's stem for --recipe: what the run name says was trained."""
    return f"L{cfg.optim_level:g}" if cfg.recipe is None else f"recipe-{cfg.recipe.stem}"


def open_store(cfg: ExperimentConfig) -> tuple[ExperimentConfig, UseCase, str, str]:
    """Use-case defaults, tracking store and experiment id: everything before the first run starts."""
    use_case = usecases.resolve(cfg.use_case)
    cfg = cfg.with_defaults(model=use_case.default_model, epochs=use_case.default_epochs,
                            batch_size=use_case.default_batch_size, lr=use_case.default_lr,
                            pretrained=use_case.default_pretrained, distill=use_case.default_distill,
                            eval_metric=use_case.main_metric)
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri, cfg.working_dir)
    tracking.connect(tracking_uri)
    experiment_id = tracking.ensure_experiment(cfg.experiment_name, cfg.working_dir)
    ensure_headline_view(experiment_id, cfg.benchmark_batch_size)
    return cfg, use_case, tracking_uri, experiment_id


def prepare(cfg: ExperimentConfig, use_case: UseCase, experiment_id: str, tracking_uri: str) -> Session:
    """In the active run: load the data, build the model, find the pruning scope and the device."""
    data = use_case.load_data(cfg)
    run_logging.log_data(data)
    run_logging.log_datasets(data)
    model = use_case.build_model(cfg, data)
    tracking.log_params(data.info | {"data.fingerprint": data.fingerprint, "data.source": data.source})
    scope = use_case.pruning_scope(model)
    if cfg.recipe_args.allocates_layers(use_case.default_layer_allocation):
        scope = with_layer_costs(model, scope, use_case.sample_inputs(data, 1))
    device = resolve_device(cfg.device)
    print(f"Training on {device} (--device {cfg.device}); benchmarks run on the CPU.")
    mlflow.set_tags({"sparsify.device": str(device), "sparsify.deploy_engine": cfg.deploy_engine})
    notes = run_logging.engine_notes() if cfg.deploy_engine == "deepsparse" else []
    if cfg.deploy_engine == "openvino" and not (openvino := openvino_status())[0]:
        notes.append(f"OpenVINO unavailable ({openvino[1]}); validated and benchmarked with ONNX Runtime instead")
        mlflow.set_tag("sparsify.engine_fallback", f"onnxruntime ({openvino[1]})")
    teacher = _external_teacher(cfg, use_case, data)
    return Session(cfg, use_case, data, model, scope, device, experiment_id, tracking_uri, notes, teacher)


def plan_level(session: Session, cfg: ExperimentConfig) -> tuple[RecipePlan, str]:
    """The level's recipe plan and YAML, logged to the active run. With --recipe, the YAML is the
    user's file and the plan describes it (its sparsity per parameter group, whether it quantizes)."""
    distillation = Distillation(cfg.distill_hardness, cfg.distill_temperature) if cfg.distill else None
    level = DEFAULT_LEVEL if cfg.optim_level is None else cfg.optim_level
    plan = plan_recipe(level, cfg.epochs, session.scope, cfg.lr, distillation=distillation, args=cfg.recipe_args,
                       target=cfg.target, **session.use_case.recipe_defaults())
    recipe = cfg.recipe.read_text() if cfg.recipe else recipe_yaml(plan)
    facts = recipe_facts(recipe, f"--recipe {cfg.recipe}" if cfg.recipe else "the derived recipe",
                         cfg.recipe.name if cfg.recipe else "the derived recipe")
    check_qat_steps(facts, len(session.data.train), cfg.batch_size, facts.epochs)
    if cfg.recipe is not None:
        plan = plan_from_recipe(facts, plan)
    tracking.log_params(plan.summary())
    mlflow.log_text(recipe, "recipe.yaml")
    return plan, recipe


def train_dense_baseline(session: Session, folder: Path) -> _Trained:
    """The dense baseline as a child of the active run: the input model fine-tuned with the same schedule
    and no sparsification, or reused from the MLflow cache.

    Resumed: a dense child that finished is reused as is; an unfinished one continues from its checkpoint.
    """
    cfg, model, resume = session.cfg, session.model, session.resume
    key = _baseline_key(cfg, session.data)
    plan = plan_recipe(0.0, cfg.epochs, session.scope, cfg.lr)
    work = folder / "training_artifacts" / "dense"
    run_id, status = resume.child("dense") if resume else (None, None)
    with tracking.run("dense-baseline", nested=True, tags={"sparsify.role": "dense"}, run_id=run_id) as child:
        tracking.log_params(plan.summary() | {"baseline_key": key})
        run_logging.log_datasets(session.data)
        own = status == "FINISHED"  # resumed after the baseline finished: its own logged model
        cached = run_id if own else tracking.find_finished_run(session.experiment_id, BASELINE_KEY_TAG, key)
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
                model, result = _train(session, cfg, model, recipe_yaml(plan), folder, "dense",
                                       resume_from=resume.checkpoints.get("dense") if resume else None)
            history, seconds = result.history, result.seconds
        mlflow.log_text(recipe_yaml(plan), "recipe.yaml")
        model.cpu()
        save_atomically(model.state_dict(), work / "model.pt")
        mlflow.log_artifact(str(work / "model.pt"), "checkpoint")
        tracking.log_json([asdict(h) for h in history], "history.json")
        report_ = _finish_model(session, cfg, model, "dense", child.info.run_id, history, seconds, work)
        report_.reused_from_run = None if own else cached
        report_.logged_model = _dense_logged_model(session, report_, plan, cached)
        mlflow.set_tag(BASELINE_KEY_TAG, key)  # only now: a failed run must not be found as a cache
    return _Trained(report_, model)


def finish_level(session: Session, cfg: ExperimentConfig, dense: _Trained, plan: RecipePlan, recipe: str,
                 folder: Path, run_id: str, alias: str | None = CANDIDATE_ALIAS) -> ExperimentResult:
    """In the active run (`run_id`): train the level's model from the dense baseline, time both in one
    benchmark session, compare, log, write the deployment folder, register (with `alias`)."""
    sparse = train_level(session, cfg, dense, recipe, folder)
    int8_only = int8_only_reference(session, dense, folder) if cfg.int8_reference and sparse is not dense else None
    speed = measure_speed(session, dense.report, {SPARSE_LABEL: sparse.report} | timed_reference(int8_only))
    return conclude_level(session, cfg, dense, sparse, plan, recipe, folder, run_id, speed, SPARSE_LABEL, alias,
                          int8_only)


SPARSE_LABEL = "sparse"  # the training-aware model's name in a single experiment's benchmark session
INT8_ONLY_LABEL = "int8_only"  # the post-training INT8 reference's, and its metrics' prefix on the parent


class _ReferenceFailed(Exception):
    """The INT8-only reference was built but must not be compared against (post_training.reference_failure)."""


def int8_only_reference(session: Session, dense: _Trained, folder: Path) -> Int8Only:
    """The dense baseline quantized post-training (post_training.py), in a child run of its own, exported
    and checked like the other models. One that cannot be built or fails its check is reported as failed
    (its run FAILED with the reason), never compared against, and costs the experiment nothing else."""
    cfg = session.cfg
    built: list[ModelReport] = []
    try:
        with tracking.run("int8-only", nested=True, tags={"sparsify.role": INT8_ONLY_LABEL}) as child:
            mlflow.log_text(post_training_recipe(session.scope), "recipe.yaml")
            run_logging.log_datasets(session.data)  # calibrated on the training split, checked on validation
            with stages.stage("int8_only_calibration"):
                started = time.perf_counter()
                model = quantize_post_training(dense.model, session.use_case, session.data, session.scope,
                                               cfg.batch_size, cfg.seed)
                seconds = time.perf_counter() - started
            work = folder / "training_artifacts" / INT8_ONLY_LABEL
            built.append(_finish_model(session, cfg, model, INT8_ONLY_LABEL, child.info.run_id, [], seconds, work))
            failure = reference_failure(dense.report, built[0])
            if failure is not None:
                raise _ReferenceFailed(failure)
            built[0].logged_model = log_onnx(built[0].exported.path, reference_name(cfg.model), params={
                "use_case": session.use_case.name, "model": Path(cfg.model).stem, "int8": "True",
                "quantization": "post-training: calibrated, not trained", "data_fingerprint": session.data.fingerprint},
                extra_files=[built[0].qdq.path] if built[0].qdq is not None else None)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reference that fails is reported, the experiment goes on
        reason = str(exc) if isinstance(exc, _ReferenceFailed) else error_line(exc)
        print(f"warning: the INT8-only reference failed ({reason}); the sparse model is not compared with it")
        return Int8Only(built[0] if built else None, reason)
    return Int8Only(built[0])


def timed_reference(int8_only: Int8Only | None) -> dict[str, ModelReport]:
    """The benchmark session's entry for the INT8-only reference: only a usable one is timed."""
    usable = int8_only.usable if int8_only is not None else None
    return {INT8_ONLY_LABEL: usable} if usable is not None else {}


def train_level(session: Session, cfg: ExperimentConfig, dense: _Trained, recipe: str, folder: Path) -> _Trained:
    """The level's training-aware model, exported and checked (the dense baseline itself at level 0)."""
    if cfg.optim_level == 0 and cfg.recipe is None:
        return dense  # level 0: the input model (fine-tuned) is the result
    return _training_aware(session, cfg, dense.model, recipe, folder)


def measure_speed(session: Session, dense: ModelReport, candidates: dict[str, ModelReport]) -> SessionResult:
    """The dense baseline and every candidate in one interleaved benchmark session on the deploy engine
    (the dense one also on ONNX Runtime, the reference); the figures go to each model's report and run.

    Beside DeepSparse, OpenVINO times every model too where it is installed (the dense file at its
    default precision, an INT8 model's QDQ twin): the fastest dense deployment on many CPUs, which
    `speedup_vs_best_dense` compares with and the `sparsify.fastest_<label>.bs<N>` tags name.
    """
    cfg = session.cfg
    timed = {"dense": dense} | {label: rep for label, rep in candidates.items() if rep is not dense}
    files = {label: rep.exported.path for label, rep in timed.items()}
    with_openvino = cfg.deploy_engine == "deepsparse" and openvino_status()[0]
    engines = {label: (cfg.deploy_engine, *(("openvino",) if with_openvino else ())) for label in files}
    engine_files = {label: {"openvino": _openvino_file(rep)} for label, rep in timed.items()}
    with stages.stage("benchmark"):  # the DeepSparse probe compiles in a child process
        entrants, notes = plan_session(files, engines, (1, cfg.benchmark_batch_size), reference="dense",
                                       num_cores=cfg.num_cores, engine_files=engine_files)
        for note in notes:
            print(f"note: {note}")
        print(f"Benchmarking {', '.join(files)} in one session: {cfg.benchmark_rounds} alternating rounds "
              f"at batch sizes 1 and {cfg.benchmark_batch_size}...")
        speed = run_session(entrants, session.use_case.sample_inputs(session.data, cfg.benchmark_batch_size),
                            iterations=cfg.benchmark_iterations, rounds=cfg.benchmark_rounds,
                            num_cores=cfg.num_cores, notes=notes)
        if cfg.deploy_engine == "deepsparse":  # where the time goes, layer by layer, at batch size 1
            rows = session.use_case.sample_inputs(session.data, 1)
            speed.layers = layer_timings(files, rows, 1, cfg.num_cores)
    for label, rep in candidates.items():
        if rep is dense:  # level 0: the dense file is the candidate
            speed.measurements[label] = speed.measurements["dense"]
            if "dense" in speed.layers:
                speed.layers[label] = speed.layers["dense"]
    for label, rep in timed.items():
        rep.benchmarks = speed.results(label)
        names = {f"{path.parent.name}/{path.name}" for path in (rep.exported.path, _openvino_file(rep))}
        _log_benchmarks(rep, speed, label, [note for note in notes if any(name in note for name in names)])
    mlflow.set_tags({f"sparsify.fastest_{label}.bs{bs}": key.split(".")[0] for label in speed.measurements
                     for bs in (1, cfg.benchmark_batch_size) if (key := speed.fastest(label, bs))})
    if any(key.startswith("openvino.") for by_key in speed.measurements.values() for key in by_key):
        mlflow.set_tag("sparsify.openvino", ", ".join(f"{k} {v}" for k, v in openvino_facts().items()))
    if dense.logged_model is not None:  # the candidates' models are logged when they conclude
        link_metrics(dense.logged_model, dense.run_id,
                     dense.headline(None, cfg.deploy_engine, cfg.benchmark_batch_size) | dense.engine_figures())
    return speed


def _openvino_file(rep: ModelReport) -> Path:
    """The file OpenVINO deploys: an INT8 model's QDQ twin where there is one, else the export."""
    return rep.qdq.path if rep.qdq is not None else rep.exported.path


def _log_benchmarks(rep: ModelReport, speed: SessionResult, label: str, notes: list[str]) -> None:
    """A model's session figures on its own run: the whole-session figures, each round's median as steps."""
    metrics: dict[str, float] = {}
    for key, result in rep.benchmarks.items():
        metrics.update(result.as_metrics(key))
        for step, ms in enumerate(speed.measurements[label][key].round_ms):
            tracking.log_metrics({f"{key}.round_latency_ms": ms}, step=step, run_id=rep.run_id)
    tracking.log_metrics(metrics, run_id=rep.run_id)
    rep.notes += notes
    if notes:
        MlflowClient().set_tag(rep.run_id, "sparsify.engine_fallback", "; ".join(notes)[:5000])
    rep.notes += run_logging.supported_ops_warning(rep.exported.path, rep.role, rep.benchmarks, rep.run_id)


def conclude_level(session: Session, cfg: ExperimentConfig, dense: _Trained, sparse: _Trained, plan: RecipePlan,
                   recipe: str, folder: Path, run_id: str, speed: SessionResult, label: str,
                   alias: str | None = CANDIDATE_ALIAS, int8_only: Int8Only | None = None) -> ExperimentResult:
    """In the active run: the comparison from the session, figures, deployment folder, registration."""
    use_case, data, scope = session.use_case, session.data, session.scope
    notes = list(session.notes)
    if sparse is dense:
        notes.append("optim level 0: no sparsification; the dense baseline is the result")
    comparison, reliability = compare(dense.report, sparse.report, speed, label,
                                      int8_only.usable if int8_only is not None else None)
    if int8_only is not None:
        log_reference(session, dense.report, int8_only, speed)
    if (lost := large_drop_note(comparison["main_drop"], sparse.report.metrics.main_name, plan)) is not None:
        notes.append(lost)
    tracking.log_metrics(sparse.report.headline(comparison, cfg.deploy_engine, cfg.benchmark_batch_size))
    tracking.log_metrics(comparison)
    mlflow.set_tags(reliability.tags())
    if not reliability.reliable:
        print(f"warning: speedups unreliable: {reliability.reason}")
    for role, side in (("dense", dense.report), ("sparse", sparse.report)):
        tracking.log_metrics({f"{role}.{k}": v for k, v in side.flat_metrics().items()})
    notes += dense.report.notes + (sparse.report.notes if sparse is not dense else [])
    handover = Handover(f"{use_case.name} {Path(cfg.model).stem}, {plan.label}", run_id, plan,
                        dense.report, sparse.report, comparison, notes, reliability)
    with stages.stage("tracking"):
        run_logging.log_figures(dense.report, sparse.report, plan, scope, use_case)
        run_logging.log_layer_timings({role: speed.layers[name] for role, name in (("dense", "dense"), ("sparse", label))
                                       if name in speed.layers})
        run_logging.log_prediction_figures(use_case, data, dense.model, sparse.model)
        deployment = write_deployment(folder, use_case, data, recipe, handover)
        write_metrics(folder, handover)
        mlflow.log_artifacts(str(folder), artifact_path="experiment")  # the folder as written, nothing else
    result = ExperimentResult(cfg, run_id, session.experiment_id, session.tracking_uri, plan,
                              dense.report, sparse.report, comparison, folder, deployment, reliability, notes=notes,
                              int8_only=int8_only)
    with stages.stage("registration"):
        result.sparse.logged_model = _log_result_model(cfg, use_case, data, result, recipe)
        mlflow.set_tag("sparsify.model_id", result.sparse.logged_model.model_id)
        if cfg.register:
            result.registered = register(result.sparse.logged_model,
                                         cfg.registered_model_name or f"{use_case.name}-{Path(cfg.model).stem}",
                                         tags=registry_tags(cfg, use_case, data, result, recipe),
                                         description=_description(cfg, use_case, result), alias=alias)
            mlflow.set_tags({"sparsify.registered_model": result.registered.name,
                             "sparsify.registered_version": result.registered.version})
    return result


@dataclass
class _Trained:
    report: ModelReport
    model: nn.Module


def _training_aware(session: Session, cfg: ExperimentConfig, dense_model: nn.Module, recipe: str,
                    folder: Path) -> _Trained:
    """Prune and quantize, starting from the fine-tuned dense baseline (GMP prunes a trained model).

    Resumed: the same child run continues from its checkpoint (the recipe restarts at its epoch).
    """
    resume = session.resume
    model = copy.deepcopy(dense_model)
    work = folder / "training_artifacts" / "sparse"
    run_id = resume.child("sparse")[0] if resume else None
    with tracking.run("training-aware", nested=True, tags={"sparsify.role": "sparse"}, run_id=run_id) as child:
        mlflow.log_text(recipe, "recipe.yaml")
        run_logging.log_datasets(session.data)
        teacher = _teacher(session, dense_model)
        with stages.stage("training_aware_training"):
            model, result = _train(session, cfg, model, recipe, folder, "sparse", teacher,
                                   resume_from=resume.checkpoints.get("sparse") if resume else None)
        model.cpu()
        save_atomically(model.state_dict(), work / "model.pt")
        tracking.log_json([asdict(h) for h in result.history], "history.json")
        report_ = _finish_model(session, cfg, model, "sparse", child.info.run_id, result.history, result.seconds,
                                work)
    return _Trained(report_, model)


def _train(session: Session, cfg: ExperimentConfig, model: nn.Module, recipe: str, folder: Path, role: str,
           teacher: nn.Module | None = None, resume_from: Checkpoint | None = None) -> tuple[nn.Module, TrainResult]:
    """One training stage in the active run; out-of-memory errors halve the batch size (logged).

    Each epoch ends with a checkpoint in the stage's folder, also logged to its run (--resume reads either).
    """
    if resume_from is not None:
        mlflow.set_tag(RESUMED_TAG, str(resume_from.epoch))
    stage = Stage(recipe, resume_from.batch_size if resume_from else cfg.batch_size, cfg.lr, cfg.seed, role,
                  folder / "logs", main_metric=cfg.eval_metric, kwargs=cfg.train_kwargs, teacher=teacher,
                  resume_from=resume_from, checkpoint_path=folder / "training_artifacts" / role / CHECKPOINT_NAME,
                  checkpoint_key=stage_key(cfg, role), on_epoch=run_logging.log_epoch,
                  on_checkpoint=run_logging.log_checkpoint)
    ctx = distributed.current()
    if ctx is not None:  # the workers train the same stage beside us
        distributed.send(distributed.Job(cfg, distributed.portable(stage),
                                         str(resume_from.source) if resume_from and resume_from.source else None))
        mlflow.set_tags({"sparsify.ddp.world_size": str(ctx.world_size), "sparsify.ddp.backend": dist_backend()})
    model, result = train_stepping_down(model, session.use_case, session.data, session.scope, stage, session.device,
                                        on_retry=run_logging.log_oom_retry)
    # Done: the run keeps the logged copy (what --resume falls back to); the folder, logged whole
    # to the parent as experiment/, should not carry a second one.
    (folder / "training_artifacts" / role / CHECKPOINT_NAME).unlink(missing_ok=True)
    tracking.log_params({"train.batch_size": result.batch_size, "train.oom_retries": len(result.oom_retries)})
    return model, result


def dist_backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend())


def _teacher(session: Session, dense_model: nn.Module) -> nn.Module | None:
    """--teacher: none (off), the dense baseline (self), or the named model prepare() loaded and checked."""
    if not session.cfg.distill:
        return None
    return dense_model if session.cfg.teacher == TEACHER_SELF else session.teacher


def _external_teacher(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle) -> nn.Module | None:
    """A named --teacher, loaded and checked against the data (labels, vocabulary) before any training."""
    if not cfg.distill or cfg.teacher == TEACHER_SELF:
        return None
    teacher, facts = use_case.load_teacher(cfg.teacher, data)
    tracking.log_params({f"teacher.{k}": v for k, v in facts.items()})
    return teacher.eval()


def _finish_model(session: Session, cfg: ExperimentConfig, model: nn.Module, role: str, run_id: str,
                  history: list[EpochStats], seconds: float, work: Path) -> ModelReport:
    """Evaluate in PyTorch, export, check the ONNX file on the deploy engine; log it all.

    The timing comes later, in one benchmark session with the model it is compared with (measure_speed).
    """
    use_case, data, scope = session.use_case, session.data, session.scope
    with stages.stage("evaluate"):
        metrics = use_case.evaluate(torch_predictor(model, torch.device("cpu")), data, cfg.batch_size
                                    ).with_main(cfg.eval_metric)
    sparsity, per_layer = scope_sparsity(model, scope)
    input_names, output_names = use_case.io_names(data)
    sample = use_case.sample_inputs(data, 2)
    with stages.stage("export"):
        exported = export_onnx(model, tuple(torch.from_numpy(x) for x in sample), work,
                               input_names=input_names, output_names=output_names)
    with stages.stage("evaluate"):  # the DeepSparse probe compiles in a child process
        check_engine, check_bs = _check_engine(exported.path, cfg)
        engine = load_engine(exported.path, check_engine, batch_size=check_bs, num_cores=cfg.num_cores)
        onnx_metrics = use_case.evaluate(partial(predict_batches, engine), data, check_bs
                                         ).with_main(cfg.eval_metric)
        del engine  # a compiled engine holds the model's memory
    qdq, qdq_notes = _qdq_twin(session, exported.path) if exported.quantized else (None, [])
    rep = ModelReport(role, run_id, metrics, onnx_metrics, check_engine, exported, {}, history,
                      per_layer, sparsity, seconds, notes=qdq_notes, qdq=qdq)
    tracking.log_metrics(rep.flat_metrics())
    tracking.log_rows(run_logging.sparsity_rows(per_layer, scope), "sparsity_per_layer.json")
    for table, rows_ in metrics.tables.items():
        tracking.log_rows(rows_, f"{table}.json")
    mlflow.log_artifact(str(exported.path), "onnx")
    if qdq is not None:
        mlflow.log_artifact(str(qdq.path), "onnx")
        mlflow.set_tag("sparsify.onnx_qdq_engine", qdq.engine)
    return rep


def _qdq_twin(session: Session, converted: Path) -> tuple[Qdq | None, list[str]]:
    """The QDQ INT8 twin of an INT8 export (the form OpenVINO and ONNX Runtime run with integer kernels),
    its metric checked on OpenVINO (ONNX Runtime where OpenVINO cannot run it) like the export's.
    A graph the rewrite does not know costs the twin, with one warning, not the run."""
    cfg = session.cfg
    try:
        with stages.stage("export"):
            path = export_qdq(converted, converted.with_name(QDQ_FILE))
    except QdqError as exc:
        note = f"no QDQ INT8 file for OpenVINO ({exc}); OpenVINO runs {converted.name} at float precision"
        print(f"warning: {note}")
        return None, [note]
    with stages.stage("evaluate"):
        (engine_name, bs), *_ = plan_benchmarks(path, ("openvino",), (cfg.benchmark_batch_size,), cfg.num_cores)[0]
        engine = load_engine(path, engine_name, batch_size=bs, num_cores=cfg.num_cores)
        metrics = session.use_case.evaluate(partial(predict_batches, engine), session.data, bs
                                            ).with_main(cfg.eval_metric)
        del engine
    return Qdq(path, metrics, engine_name), []


def _check_engine(path: Path, cfg: ExperimentConfig) -> tuple[str, int]:
    """The engine (and batch size) that checks the exported file's metric: the deploy engine where it
    compiles the file (DeepSparse at the largest safe benchmark batch size), else ONNX Runtime."""
    batch_sizes = (1, cfg.benchmark_batch_size)
    plan, _, _ = plan_benchmarks(path, (cfg.deploy_engine,), batch_sizes, cfg.num_cores)
    on_engine = [bs for engine, bs in plan if engine == cfg.deploy_engine]
    return (cfg.deploy_engine, max(on_engine)) if on_engine else ("onnxruntime", batch_sizes[-1])


def compare(dense: ModelReport, sparse: ModelReport, speed: SessionResult, label: str,
            int8_only: ModelReport | None = None) -> tuple[dict[str, float], Reliability]:
    """The comparison a run logs and the gates read.

    `main_drop` is measured on what ships: the exported files on the deploy engine (`onnx.*`); the
    PyTorch figure stays beside it as `main_drop_pytorch`. Each speedup is the median over the
    session's rounds of (dense latency / sparse latency) in that round, with its min and max.
    With a usable INT8-only reference: `speedup_vs_int8_only.bs<N>` (fastest engine against its fastest)
    and `main_drop_vs_int8_only`, what pruning added over quantizing alone.
    """
    out = {"main_drop": round(100 * (dense.onnx_metrics.main - sparse.onnx_metrics.main), 4),
           "main_drop_pytorch": round(100 * (dense.metrics.main - sparse.metrics.main), 4)}
    ratios = speed.speedups("dense", label)
    for name, ratio in ratios.items():
        out.update(ratio.as_metrics(name))
    if int8_only is not None:
        out["main_drop_vs_int8_only"] = round(100 * (int8_only.onnx_metrics.main - sparse.onnx_metrics.main), 4)
        for bs, ratio in speed.fastest_ratios(INT8_ONLY_LABEL, label).items():
            out.update(ratio.as_metrics(f"speedup_vs_int8_only.bs{bs}"))
    out.update(speed.load.as_metrics())
    return out, speed.reliability(ratios)


LARGE_DROP_PT = 10.0  # far past what seeds and schedules move (a few points): the level did not recover


def large_drop_note(main_drop: float, metric: str, plan: RecipePlan) -> str | None:
    """What to try when the sparse model lost more than LARGE_DROP_PT points: the run still registers it as a
    candidate (it is a result), so the summary says so where a user reads the figures."""
    if main_drop <= LARGE_DROP_PT:
        return None
    return (f"the sparse model lost {main_drop:.1f} points of {metric} at {plan.label}: the schedule did not "
            f"recover it (docs/optim-levels.md says why level 1.0 collapses a small text encoder); try a lower "
            f"--optim-level or more --epochs, and keep such a version out of production with "
            f"`promote --max-metric-drop`")


def log_reference(session: Session, dense: ModelReport, int8_only: Int8Only, speed: SessionResult) -> None:
    """The INT8-only reference on the active (parent or level) run: `int8_only.*` (its figures and its own
    comparison with the dense model) and the `sparsify.int8_only` tag (ok, or why it failed); its LoggedModel
    gets its headline linked once. The summary's last line says the rest (summary.int8_only_line)."""
    cfg, rep = session.cfg, int8_only.report
    mlflow.set_tag("sparsify.int8_only", "ok" if int8_only.failure is None else f"failed: {int8_only.failure}"[:5000])
    if rep is None:
        return
    own, _ = compare(dense, rep, speed, INT8_ONLY_LABEL)
    tracking.log_metrics({f"{INT8_ONLY_LABEL}.{k}": v for k, v in (rep.flat_metrics() | own).items()})
    if rep.logged_model is not None and not int8_only.linked:
        link_metrics(rep.logged_model, rep.run_id, rep.headline(own, cfg.deploy_engine, cfg.benchmark_batch_size)
                     | rep.engine_figures())
        int8_only.linked = True


def _baseline_key(cfg: ExperimentConfig, data: DataBundle) -> str:
    """What makes two dense baselines the same: model (its content, for a local file or folder), data,
    schedule, seed and the number of training processes (DDP changes the per-rank batches)."""
    fields = {
        "v": BASELINE_CACHE_VERSION, "use_case": cfg.use_case, "model": cfg.model, "pretrained": cfg.pretrained,
        "data": data.fingerprint, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "seed": cfg.seed, **given(cfg.use_case_options),
    }
    # Only when they apply, so the caches of runs without them stay valid.
    if cfg.train_kwargs.given():
        fields["train_kwargs"] = cfg.train_kwargs.given()
    if Path(cfg.model).expanduser().exists():  # overwritten in place, the same path is another model
        fields["model_sha256"] = content_hash(Path(cfg.model).expanduser())
    ctx = distributed.current()
    if ctx is not None and ctx.world_size > 1:
        fields["world_size"] = ctx.world_size
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _history_from_json(text: str, main_metric: str | None) -> list[EpochStats]:
    return [epoch_stats_from_dict(row, main_metric) for row in json.loads(text)]


def _dense_logged_model(session: Session, dense: ModelReport, plan: RecipePlan, trained_in: str | None
                        ) -> LoggedModel:
    """The dense baseline's LoggedModel (logged, not registered); a reused baseline links to the model
    logged where it was trained, not to a copy."""
    name = model_name(session.cfg.model)
    if trained_in is not None and (found := find_logged_model(session.experiment_id, trained_in, name)) is not None:
        return found
    return log_onnx(dense.exported.path, name, params=model_params(session.cfg, session.use_case, session.data, plan,
                                                                   recipe_yaml(plan)))


def _log_result_model(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, result: ExperimentResult,
                      recipe: str) -> LoggedModel:
    """The level's file as a LoggedModel of its run, named by the scheme, with its figures linked: a pyfunc
    where the use case serves raw inputs (text), else the ONNX model with a signature and an input example."""
    sparse = result.sparse
    name = model_name(cfg.model, result.plan, sparse.exported.weight_sparsity, sparse.exported.quantized)
    params = model_params(cfg, use_case, data, result.plan, recipe)
    with mlflow.start_run(run_id=sparse.run_id, nested=True):
        serving = use_case.serving_model(data, result.deployment_dir)
        if serving is not None:
            logged = log_pyfunc(name, params=params, **serving)
        else:
            input_names, output_names = use_case.io_names(data)
            inputs = dict(zip(input_names, use_case.sample_inputs(data, 2)))
            engine = load_engine(sparse.exported.path, "onnxruntime", batch_size=2)
            outputs = dict(zip(output_names, engine.run(list(inputs.values()))))
            logged = log_onnx(sparse.exported.path, name, example_inputs=inputs, example_outputs=outputs,
                              params=params, extra_files=[sparse.qdq.path] if sparse.qdq else None)
    link_metrics(logged, sparse.run_id, sparse.headline(result.comparison, cfg.deploy_engine, cfg.benchmark_batch_size)
                 | sparse.engine_figures())
    return logged


def model_params(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, plan: RecipePlan, recipe: str
                 ) -> dict[str, str]:
    """A LoggedModel's params: what it is (use case, model, level, sparsity target, mask, recipe, data) and
    the settings its linked figures were measured with."""
    return {
        "use_case": use_case.name, "model": cfg.model,
        "optim_level": "" if plan.optim_level is None else f"{plan.optim_level:g}",
        "target_sparsity": f"{plan.target_sparsity:g}", "mask_type": plan.mask_type or "none",
        "layer_allocation": plan.layer_allocation,
        "int8": str(plan.quantize).lower(), "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest()[:16],
        "data_fingerprint": data.fingerprint, "deploy_engine": cfg.deploy_engine,
        "benchmark.batch_size": str(cfg.benchmark_batch_size), "benchmark.iterations": str(cfg.benchmark_iterations),
        "benchmark.rounds": str(cfg.benchmark_rounds), "benchmark.num_cores": str(cfg.num_cores or "all physical"),
    }


def registry_tags(cfg: ExperimentConfig, use_case: UseCase, data: DataBundle, result: ExperimentResult,
                  recipe: str) -> dict[str, str]:
    """What a reviewer compares and the promotion gates read, all about the file that is registered:
    its metric on the deploy engine, its measured sparsity and INT8, the session's same-engine speedups."""
    sparse, comparison, plan = result.sparse, result.comparison, result.plan
    main = sparse.metrics.main_name
    tags = {
        "use_case": use_case.name, "model": cfg.model, "recipe_source": plan.source,
        "optim_level": "" if plan.optim_level is None else f"{plan.optim_level:g}",
        "target_sparsity": f"{plan.target_sparsity:g}", "sparsity": f"{sparse.exported.weight_sparsity:.4f}",
        "mask_type": plan.mask_type or "none", "target": cfg.target, "layer_allocation": plan.layer_allocation,
        "int8": str(sparse.exported.quantized).lower(),
        "main_metric": main, main: f"{sparse.onnx_metrics.main:.4f}", f"{main}_pytorch": f"{sparse.metrics.main:.4f}",
        "main_drop": f"{comparison['main_drop']:.2f}", "main_drop_pytorch": f"{comparison['main_drop_pytorch']:.2f}",
        "engine": sparse.onnx_engine, "benchmark_reliable": str(result.reliability.reliable).lower(),
        "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest()[:16], "data_fingerprint": data.fingerprint,
        "parent_run_id": result.parent_run_id,
    }
    if not result.reliability.reliable:
        tags["benchmark_load"] = result.reliability.reason[:5000]
    for bs, tag in ((1, "speedup"), (cfg.benchmark_batch_size, f"speedup_bs{cfg.benchmark_batch_size}")):
        headline = headline_speedup(comparison, cfg.deploy_engine, bs)
        if headline is not None:
            tags[tag], tags[f"{tag}_engine"] = f"{headline[1]:.2f}", headline[0]
        best = comparison.get(f"speedup_vs_best_dense.bs{bs}")
        if best is not None:  # the fastest deployment against the fastest dense engine (promote's default gate)
            tags[tag.replace("speedup", "speedup_vs_best_dense")] = f"{best:.2f}"
        over_int8 = comparison.get(f"speedup_vs_int8_only.bs{bs}")
        if over_int8 is not None:  # against INT8 alone (promote --min-speedup-vs-int8)
            tags[tag.replace("speedup", "speedup_vs_int8_only")] = f"{over_int8:.2f}"
    return tags


def _description(cfg: ExperimentConfig, use_case: UseCase, result: ExperimentResult) -> str:
    sparse, dense, comparison = result.sparse, result.dense, result.comparison
    main = sparse.metrics.main_name
    text = (f"{use_case.name} {cfg.model}, {result.plan.label}: {sparse.exported.weight_sparsity:.1%} sparse"
            f"{' + INT8' if sparse.exported.quantized else ''}; {main} {sparse.onnx_metrics.main:.4f} vs dense "
            f"{dense.onnx_metrics.main:.4f} on {sparse.onnx_engine} ({comparison['main_drop']:+.2f} points drop)")
    headline = headline_speedup(comparison, cfg.deploy_engine, 1)
    if headline is not None:
        engine, ratio = headline
        text += (f"; {engine} batch-1 latency {sparse.benchmarks[f'{engine}.bs1'].latency_ms_median:.2f} ms vs dense "
                 f"{dense.benchmarks[f'{engine}.bs1'].latency_ms_median:.2f} ms ({ratio:.2f}x, median of "
                 f"{result.config.benchmark_rounds} interleaved rounds"
                 f"{'' if result.reliability.reliable else '; UNRELIABLE: ' + result.reliability.reason})")
    return text + "."


def _experiment_folder(cfg: ExperimentConfig, use_case: UseCase) -> Path:
    """Sparsify's layout: <type>_<use-case>_<date-time>/ with deployment/, training_artifacts/, logs/."""
    return make_folder(cfg.working_dir / f"training-aware_{use_case.name}_{timestamp()}")


@contextmanager
def removed_if_empty(folder: Path) -> Iterator[None]:
    """A run that fails before writing any file (bad data, a refused teacher) leaves no empty folder."""
    try:
        yield
    except BaseException:
        if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def make_folder(folder: Path, parts: tuple[str, ...] = ("deployment", "training_artifacts/dense",
                                                        "training_artifacts/sparse", "logs")) -> Path:
    for sub in parts:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder
