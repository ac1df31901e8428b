"""Everything that talks to MLflow runs: store selection, run lifecycle, params, metrics, artifacts.

Runs are never left RUNNING: a failure ends them FAILED with the reason as a tag, Ctrl-C as KILLED
(unless the tracking server itself is gone; remote.py keeps metrics until it is back).
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sparsify_mlflow import remote
from sparsify_mlflow.errors import TrackingError

FAILURE_TAG = "sparsify.failure_reason"
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
# The experiment tag MLflow 3's UI shows as the experiment's type, and its value for training
# experiments (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def resolve_tracking_uri(explicit: str | None, working_dir: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a sqlite store in the working folder."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{working_dir / 'mlflow.db'}"


def require_existing_store(tracking_uri: str) -> None:
    """Commands that only read a store (benchmark, promote) must not create an empty one: a sqlite
    store that does not exist is a mistake (run from another folder?), said in one line."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix):].split("?", 1)[0]).is_file():
        raise TrackingError(f"no MLflow store at {tracking_uri[len(prefix):]}: run this from the folder of your "
                            "experiments, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)")


def connect(tracking_uri: str) -> None:
    """Point MLflow at the store and fail fast, in one line, if it cannot be used.

    A tracking server gets one short probe without retries (MLflow's own would wait minutes), so an
    unreachable server or wrong credentials stop the command before any run exists.
    """
    if remote.is_http(tracking_uri):
        remote.probe(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with _sqlite_setup_lock(tracking_uri):  # the first open creates or migrates the tables
            MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # network, auth and database errors all surface here
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow tracking store {remote.redact_uri(tracking_uri)} is unusable: "
                            f"{first_line}") from None


@contextmanager
def _sqlite_setup_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time creates or migrates a sqlite store's tables: MLflow's migration is not
    safe to run concurrently, and jobs started together on a new store failed ("duplicate column
    name", "table _alembic_tmp_tags already exists")."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or len(tracking_uri) == len(prefix):
        yield
        return
    lock_path = Path(tracking_uri[len(prefix):].split("?", 1)[0] + ".setup-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextmanager
def kept_locally(folder: Path) -> Iterator[None]:
    """If the tracking server is lost for good, say so in one line naming `folder`, which keeps the
    checkpoints, ONNX files and logs (and undelivered metrics) of the run."""
    remote.BUFFER.spill_dir = folder
    try:
        yield
    except TrackingError as exc:
        if remote.BUFFER.pending or "not delivered" in str(exc):
            raise TrackingError(f"{exc}; the experiment's files are kept in {folder}") from None
        raise
    except Exception as exc:
        if not remote.is_unreachable(exc):
            raise
        spilled = f", undelivered metrics in {remote.BUFFER.spill()}" if remote.BUFFER.pending else ""
        raise TrackingError(f"lost the MLflow tracking server {remote.redact_uri(mlflow.get_tracking_uri())} "
                            f"and it did not come back in time; the experiment's files (checkpoints, ONNX, "
                            f"logs) are kept in {folder}{spilled}") from None
    finally:
        remote.BUFFER.pending.clear()


def ensure_experiment(name: str, working_dir: Path) -> str:
    """The experiment id: `mlflow run`'s when we run inside it, else `name` (created if missing).

    A new experiment on a local store keeps its artifacts beside the database, in the working folder.
    The experiment is marked as model development (the type MLflow 3's UI shows for it) unless someone
    chose another kind. Experiments started together on a shared server race to create and tag it:
    a new one is created with its tag, and losing the race to tag an old one is not an error.
    """
    client = MlflowClient()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or _find_or_create(client, name, working_dir)
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        try:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
        except MlflowException:  # PostgreSQL: the other process inserted the same tag first
            if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
                raise
    return experiment_id


def _find_or_create(client: MlflowClient, name: str, working_dir: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (working_dir / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    except MlflowException as exc:  # another experiment process created it just now (shared server)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def run(run_name: str, *, experiment_id: str | None = None, nested: bool = False,
        tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or attach to, under `mlflow run`) a run and close it with the right status.

    A nested run goes into its parent's experiment (MLflow would otherwise use the default one).
    With `run_id`, reopen that run (--resume): it goes back to RUNNING and ends as any other.
    """
    if run_id is not None:
        active = mlflow.start_run(run_id=run_id, nested=nested, tags=tags)
    else:
        if nested and experiment_id is None and mlflow.active_run() is not None:
            experiment_id = mlflow.active_run().info.experiment_id
        active = mlflow.start_run(run_name=run_name, experiment_id=experiment_id, nested=nested, tags=tags)
    try:
        yield active
        remote.BUFFER.flush()  # buffered metrics land before the run is marked FINISHED
    except KeyboardInterrupt:
        _end(active, "KILLED", "interrupted by the user")
        raise
    except BaseException as exc:
        _end(active, "FAILED", f"{type(exc).__name__}: {exc}", gone=remote.is_unreachable(exc)
             or (isinstance(exc, TrackingError) and bool(remote.BUFFER.pending)))
        raise
    else:
        mlflow.end_run("FINISHED")


def _end(active: mlflow.ActiveRun, status: str, reason: str, gone: bool = False) -> None:
    """Tag the reason and end the run; with the server `gone`, one quick try and no further error."""
    if not gone:
        try:
            MlflowClient().set_tag(active.info.run_id, FAILURE_TAG, reason[:5000])
        finally:
            mlflow.end_run(status)
        return
    for action in (lambda: MlflowClient().set_tag(active.info.run_id, FAILURE_TAG, reason[:5000]),
                   lambda: mlflow.end_run(status)):  # end_run forgets the run locally even if the call fails
        try:
            with remote.quick_requests():
                action()
        except Exception:
            pass


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({k: str(v)[:PARAM_VALUE_LIMIT] for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
    """Log to `run_id` (default: the active run); if the tracking server is away, keep them and carry
    on (remote.BUFFER)."""
    remote.BUFFER.log(run_id or mlflow.active_run().info.run_id, {k: float(v) for k, v in metrics.items()}, step)


def log_rows(rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A table as MLflow table JSON (shown in the UI) and as CSV beside it (for spreadsheets)."""
    if not rows:
        return
    import pandas as pd

    frame = pd.DataFrame(rows)
    mlflow.log_table(frame, artifact_file=artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / Path(artifact_file).with_suffix(".csv").name
        frame.to_csv(csv, index=False)
        folder = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(csv), artifact_path=None if folder == "." else folder)


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, default=str), artifact_file)


def find_finished_run(experiment_id: str, tag: str, value: str) -> str | None:
    """The newest FINISHED run of the experiment carrying tag=value, if any."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def download(run_id: str, artifact_path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
