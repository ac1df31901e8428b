"""`--resume RUN_ID`: find a stopped experiment, its config, runs and checkpoints, at the door.

Everything is checked before any run is reopened, so a bad resume (unknown or finished run,
corrupt checkpoint) is a one-line error that leaves the store as it was. The experiment then
continues in the same MLflow runs: the parent, a dense child that finished is reused as is, and
an unfinished stage continues from the last epoch its checkpoint holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sparsify_mlflow import tracking
from sparsify_mlflow.checkpoint import ARTIFACT_DIR, CHECKPOINT_NAME, Checkpoint, CheckpointError
from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.remote import redact_uri

CONFIG_ARTIFACT = "resume/config.json"     # on the parent run: the resolved config
FOLDER_TAG = "sparsify.experiment_dir"     # on the parent run: the local experiment folder
HOST_TAG, PID_TAG = "sparsify.host", "sparsify.pid"  # who runs it now (to refuse resuming a live run)
RESUMED_TAG = "sparsify.resumed_from_epoch"  # on a stage's run: the epoch its last resume started after


@dataclass
class ResumePoint:
    """A stopped experiment to continue: its config, folder, child runs and stage checkpoints."""

    parent_run_id: str
    cfg: ExperimentConfig
    folder: Path
    children: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (run id, status)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)     # role -> last checkpoint

    def child(self, role: str) -> tuple[str | None, str | None]:
        return self.children.get(role, (None, None))


def find(run_id: str, tracking_uri: str, working_dir: Path) -> ResumePoint:
    """The resume point of `run_id` (the parent run, or one of its children) in `tracking_uri`."""
    tracking.connect(tracking_uri)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume: no run {run_id!r} in the tracking store {redact_uri(tracking_uri)}") from None
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if parent_id:
        run = client.get_run(parent_id)
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume: run {run.info.run_id} already FINISHED; there is nothing to resume")
    _refuse_if_alive(run.data.tags)
    cfg = _config_of(client, run.info.run_id, working_dir)
    folder = Path(run.data.tags.get(FOLDER_TAG, ""))
    if not run.data.tags.get(FOLDER_TAG) or not folder.is_dir():
        folder = working_dir / f"resumed_{run.info.run_id}"  # e.g. resumed on another machine
    point = ResumePoint(run.info.run_id, cfg, folder)
    for child in client.search_runs([run.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"):
        role = child.data.tags.get("sparsify.role")
        if role and role not in point.children:  # newest first: a retried stage keeps its newest run
            point.children[role] = (child.info.run_id, child.info.status)
    for role, (child_id, status) in point.children.items():
        if role == "dense" and status == "FINISHED":
            continue  # reused from its logged model, no checkpoint needed
        path = _checkpoint_file(client, child_id, folder / "training_artifacts" / role)
        if path is not None:
            ckpt = Checkpoint.from_file(path)
            if ckpt.key and ckpt.key != stage_key(cfg, role):  # before any run is reopened
                raise ConfigError(f"--resume: the {role} checkpoint {path} was written by another configuration "
                                  f"than run {run.info.run_id}'s (its options or data changed); start a new "
                                  f"experiment instead")
            point.checkpoints[role] = ckpt
    return point


# Options that say where results go, not what is trained: a resume may change them.
_LOCATION_OPTIONS = ("tracking_uri", "working_dir", "summary_json", "experiment_name", "registered_model_name",
                     "register")


def stage_key(cfg: ExperimentConfig, role: str) -> str:
    """What a stage's checkpoint must have been trained with to be continued: the config (less where
    results go) and the stage."""
    values = {k: v for k, v in cfg.to_json().items() if k not in _LOCATION_OPTIONS}
    return hashlib.sha256(json.dumps([role, values], sort_keys=True, default=str).encode()).hexdigest()[:16]


def mark_alive() -> dict[str, str]:
    """Tags naming this process, set on the parent run while it works."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _refuse_if_alive(tags: dict[str, str]) -> None:
    """A RUNNING run whose process still lives on this host is not stopped: resuming would fork it."""
    pid = tags.get(PID_TAG)
    if tags.get(HOST_TAG) != socket.gethostname() or not pid or not pid.isdigit():
        return
    try:
        os.kill(int(pid), 0)
    except OSError:
        return
    if Path(f"/proc/{pid}/cmdline").exists() and b"sparsify" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        return  # the pid was reused by another program
    raise ConfigError(f"--resume: the run is still being worked on by process {pid} on this host; stop it first")


def _config_of(client: MlflowClient, run_id: str, working_dir: Path) -> ExperimentConfig:
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONFIG_ARTIFACT,
                                                         dst_path=str(_scratch(working_dir))))
        values = json.loads(local.read_text())
        from sparsify_mlflow.usecases import resolve  # its own options' dataclass

        return ExperimentConfig.from_json(values, resolve(values["use_case"]).options)
    except (MlflowException, OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--resume: run {run_id} has no readable {CONFIG_ARTIFACT} (was it started by "
                          f"sparsify-mlflow with checkpoints?): {type(exc).__name__}") from None


def _checkpoint_file(client: MlflowClient, run_id: str, local_dir: Path) -> Path | None:
    """The stage's checkpoint: the local file if the folder is here, else the run's logged copy."""
    local = local_dir / CHECKPOINT_NAME
    if local.is_file():
        return local
    logged = {a.path for a in client.list_artifacts(run_id, ARTIFACT_DIR)}
    if f"{ARTIFACT_DIR}/{CHECKPOINT_NAME}" not in logged:
        return None
    local_dir.mkdir(parents=True, exist_ok=True)
    try:
        return tracking.download(run_id, f"{ARTIFACT_DIR}/{CHECKPOINT_NAME}", local_dir.parent / "downloaded")
    except (MlflowException, OSError) as exc:
        raise CheckpointError(f"--resume: cannot download the checkpoint of run {run_id}: {exc}") from None


def _scratch(working_dir: Path) -> Path:
    folder = working_dir / ".resume"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
