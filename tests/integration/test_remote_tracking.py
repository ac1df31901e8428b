"""Remote tracking: a real `mlflow server` (basic-auth app) on PostgreSQL with proxied artifacts.

One tiny experiment serves every assertion about the remote store, the registry behind it and
the credentials that must never leak; the failure cases need no training.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from helpers.mlflow_checks import family
from helpers.servers import AUTH_ADMIN_PASSWORD, free_port
from helpers.tracking_procs import TINY_REMOTE
from sparsify_mlflow.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tracking-servers")]

# A tiny run; ONNX Runtime validates and benchmarks (DeepSparse adds nothing to tracking tests).
# MLflow's retries would make a dead server cost this test 20+ minutes; the probe must not use them.
PATIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "10"}


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_unreachable_server_fails_fast_without_credentials_in_the_message(capsys, monkeypatch, tmp_path) -> None:
    for key, value in PATIENT_RETRIES.items():
        monkeypatch.setenv(key, value)
    from sparsify_mlflow import tracking
    from sparsify_mlflow.errors import TrackingError

    port = free_port()  # nothing listens there
    uri = f"http://someone:{AUTH_ADMIN_PASSWORD}@127.0.0.1:{port}"
    began = time.monotonic()  # the probe alone (the CLI's imports take minutes on a loaded machine)
    with pytest.raises(TrackingError):
        tracking.connect(uri)
    assert time.monotonic() - began < 60, "the start-up probe must not go through MLflow's retries (~8 min)"
    code, _, err = run_cli(capsys, "training-aware", "--tracking-uri", uri, "--working-dir", str(tmp_path))
    assert code == 2
    line = assert_one_error_line(err)
    assert f"127.0.0.1:{port}" in line and "unreachable" in line and "connection refused" in line
    assert AUTH_ADMIN_PASSWORD not in err
    assert not list(tmp_path.glob("training-aware_*")), "nothing starts before the server answers"


def test_experiment_on_authenticated_postgres_server(auth_server, image_folder: Path, tmp_path: Path,
                                                     capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AUTH_ADMIN_PASSWORD)
    summary_path = tmp_path / "summary.json"
    work = tmp_path / "work"
    code, out, err = run_cli(capsys, "training-aware", "--data", str(image_folder), "--optim-level", "0.5",
                             "--tracking-uri", auth_server.uri, "--experiment-name", "remote-auth",
                             "--working-dir", str(work), "--summary-json", str(summary_path),
                             "--registered-model-name", "remote-tiny", *TINY_REMOTE)
    assert code == 0, err[-3000:]
    summary = json.loads(summary_path.read_text())
    client = MlflowClient(tracking_uri=auth_server.uri, registry_uri=auth_server.uri)

    # The runs, metrics and artifacts landed on the server; the artifacts went through its proxy.
    parent, children = family(auth_server.uri, summary["parent_run_id"])
    runs = [parent, *children.values()]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3 and set(children) == {"dense", "sparse"}
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    assert {"dense.accuracy", "sparse.accuracy", "main_drop", "sparse.onnxruntime.bs1.latency_ms_median"
            } <= set(parent.data.metrics)
    assert [m.step for m in client.get_metric_history(children["sparse"].info.run_id, "sparsity.overall")] == [1, 2]
    assert {"recipe.yaml", "figures", "experiment"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    stored = {p.name for p in (auth_server.root / "artifacts").rglob("*") if p.is_file()}
    assert {"model.onnx", "recipe.yaml", "latency.png"} <= stored, "artifacts are stored by the server"
    assert not (work / "mlartifacts").exists(), "nothing is written to a local artifact store"

    # The registry on PostgreSQL: version, tags, alias, and the model loads back through the proxy.
    assert summary["registered_model"]["model_uri"] == "models:/remote-tiny@candidate"
    version = client.get_model_version_by_alias("remote-tiny", "candidate")
    assert version.tags["parent_run_id"] == summary["parent_run_id"]
    model = mlflow.pyfunc.load_model("models:/remote-tiny@candidate")  # a raw-image pyfunc
    images = [base64.b64encode(f.read_bytes()).decode() for f in sorted(image_folder.rglob("*.png"))[:2]]
    prediction = model.predict({"image": images})
    assert set(prediction["label"]) <= {f.parent.name for f in image_folder.rglob("*.png")} and len(prediction) == 2

    # The credentials are nowhere: not in params, tags, metrics' names, artifacts, summary, output or files.
    needles = [AUTH_ADMIN_PASSWORD, base64.b64encode(f"admin:{AUTH_ADMIN_PASSWORD}".encode()).decode()]
    texts = [out, err, summary_path.read_text(), version.description or "", json.dumps(version.tags)]
    for run in runs:
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(list(run.data.metrics))]
        downloaded = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=auth_server.uri,
                                                              dst_path=str(tmp_path / "dl" / run.info.run_id)))
        texts += [p.read_bytes().decode("latin-1") for p in downloaded.rglob("*") if p.is_file()]
    texts += [p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file()]
    assert len(texts) > 40, "the artifacts were downloaded and read"
    for needle in needles:
        assert not [t[:200] for t in texts if needle in t], "a credential leaked"

    # A wrong password: one line, exit code 2, no new run.
    before = len(client.search_runs([parent.info.experiment_id]))
    capsys.readouterr()  # the downloads' progress bars above are not the CLI's output
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    code, out, err = run_cli(capsys, "training-aware", "--data", str(image_folder), "--tracking-uri",
                             auth_server.uri, "--experiment-name", "remote-auth", "--working-dir", str(work),
                             *TINY_REMOTE)
    assert code == 2
    line = assert_one_error_line(err)
    assert "refused the credentials" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert "not-the-password" not in out + err
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AUTH_ADMIN_PASSWORD)
    assert len(client.search_runs([parent.info.experiment_id])) == before
