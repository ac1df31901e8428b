"""Assertions on what an experiment left in an MLflow store (shared by the end-to-end tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient


def runs_of(store: str) -> list[Run]:
    client = MlflowClient(tracking_uri=store)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


def family(store: str, parent_id: str) -> tuple[Run, dict[str, Run]]:
    """The parent run and its children keyed by role (dense / sparse)."""
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(parent_id)
    children = {r.data.tags["sparsify.role"]: r
                for r in client.search_runs([parent.info.experiment_id],
                                            filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")}
    return parent, children


def registered_versions(store: str) -> list:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return [v for m in client.search_registered_models() for v in client.search_model_versions(f"name='{m.name}'")]


def assert_failed_cleanly(store: str, reason_fragment: str) -> None:
    """Every run ended FAILED with the reason tagged, and nothing was registered."""
    runs = runs_of(store)
    assert runs, "expected the failed run to be recorded"
    for run in runs:
        assert run.info.status == "FAILED", (run.info.run_name, run.info.status)
    assert any(reason_fragment in r.data.tags.get("sparsify.failure_reason", "") for r in runs)
    assert registered_versions(store) == []


def run_project(repo: Path, params: dict[str, str], store: str, cwd: Path, experiment: str,
                timeout: float = 1200) -> subprocess.CompletedProcess:
    """`mlflow run <repo> --env-manager local` with the test's environment on PATH and its store."""
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(repo), "--env-manager", "local",
               "--experiment-name", experiment]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    env = os.environ | {"MLFLOW_TRACKING_URI": store,
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
