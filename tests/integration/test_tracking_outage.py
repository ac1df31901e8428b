"""The tracking server goes away: at start (fail fast, tested in test_remote_tracking), mid-run
(training goes on, metrics are buffered and delivered), and for good (kept locally, said so)."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from helpers.mlflow_checks import family
from helpers.servers import free_port
from helpers.tracking_procs import start_experiment
from sparsify_mlflow import tracking
from sparsify_mlflow.errors import TrackingError
from sparsify_mlflow.remote import MetricBuffer

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tracking-servers")]
EPOCHS = 4
# Patience for the restart below (about eight minutes per call: a loaded CI machine restarts slowly);
# it only waits as long as the server is away.
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def test_server_lost_mid_training_and_back(tracking_server, image_folder: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = start_experiment(tracking_server.uri, image_folder, work, "--experiment-name", "outage",
                            "--no-register", env=RETRIES, epochs=EPOCHS)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("dense epoch 1/"):
                tracking_server.crash()  # the server vanishes while the dense baseline trains
            elif line.startswith("warning: the tracking server does not answer") and not tracking_server.healthy():
                tracking_server.start()  # back on the same port, same database and artifact folder
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not tracking_server.healthy():
            tracking_server.start()
    output = "".join(lines)
    assert proc.returncode == 0, output[-3000:]
    assert "warning: the tracking server does not answer" in output, "the outage happened during training"
    assert "Tracking server is back: delivered" in output

    summary = json.loads((work / "summary.json").read_text())
    parent, children = family(tracking_server.uri, summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and {c.info.status for c in children.values()} == {"FINISHED"}
    client = MlflowClient(tracking_uri=tracking_server.uri)
    for child in children.values():  # every epoch's metrics arrived, in order, none twice
        for name in ("train.loss", "val.accuracy", "sparsity.overall"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, name)] == list(range(1, EPOCHS + 1))
    assert "sparse.accuracy" in parent.data.metrics


def test_server_gone_for_good_keeps_metrics_and_names_the_folder(tmp_path: Path, monkeypatch) -> None:
    """No training needed: a real client against a port nowhere listens."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")
    try:
        buffer = MetricBuffer(spill_dir=tmp_path / "kept")
        for step in (1, 2):
            buffer.log("0" * 32, {"train.loss": 1.0 / step}, step)  # does not raise: kept for later
        assert [p.step for p in buffer.pending] == [1, 2]
        with pytest.raises(TrackingError, match=r"2 metric records not delivered, kept in .*undelivered_metrics"):
            buffer.flush()
        kept = [json.loads(line) for line in (tmp_path / "kept" / "undelivered_metrics.jsonl").read_text().splitlines()]
        assert [(k["step"], k["metrics"]) for k in kept] == [(1, {"train.loss": 1.0}), (2, {"train.loss": 0.5})]

        with pytest.raises(TrackingError, match=f"kept in {tmp_path / 'folder'}") as failure:
            with tracking.kept_locally(tmp_path / "folder"), tracking.run("never-starts"):
                pass
        assert "lost the MLflow tracking server" in str(failure.value)
    finally:
        mlflow.set_tracking_uri(previous)
