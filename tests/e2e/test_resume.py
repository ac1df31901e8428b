"""Kill -9 a real training-aware run mid-training, then `--resume` it through the CLI.

What must hold: the killed run stays RUNNING (nothing could end it), bad resumes change nothing,
and the resumed experiment ends FINISHED in the same runs, with the epochs continued (not
restarted), the target sparsity reached and exactly one registered version.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers.data import make_image_folder
from helpers.mlflow_checks import assert_exported_sparsity, family, registered_versions, runs_of

pytestmark = pytest.mark.e2e

EPOCHS = 4
TINY = ["--model", "resnet18", "--no-pretrained", "--epochs", str(EPOCHS), "--batch-size", "4",
        "--image-size", "16", "--benchmark-batch-size", "2", "--benchmark-iterations", "3", "--benchmark-rounds", "3",
        "--no-int8-reference",
        "--deploy-engine", "onnxruntime", "--registered-model-name", "resumed"]


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsify_mlflow", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"PYTHONWARNINGS": "ignore"})


def statuses(store: str) -> dict[str, str]:
    return {r.info.run_name: r.info.status for r in runs_of(store)}


def test_sigkill_mid_training_then_resume(store: str, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=8)
    work = tmp_path / "work"
    common = ["--tracking-uri", store, "--working-dir", str(work)]
    proc = subprocess.Popen([sys.executable, "-m", "sparsify_mlflow", "training-aware", *common, "--data", str(data),
                             "--optim-level", "0.5", *TINY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 1800  # generous: a busy CI machine; idle, the first checkpoint comes in ~30 s
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None and not checkpoints:
        time.sleep(0.2)  # the sparse stage's first checkpoint: the dense baseline is done by then
        checkpoints = list(work.glob("training-aware_*/training_artifacts/sparse/checkpoint.pt"))
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = statuses(store)
    assert before["training-aware"] == "RUNNING" and before["dense-baseline"] == "FINISHED", before
    parent_id = next(r.info.run_id for r in runs_of(store) if "mlflow.parentRunId" not in r.data.tags)
    assert registered_versions(store) == []

    # A corrupt checkpoint: one line, exit 2, and the store is left exactly as it was.
    good = checkpoints[0].read_bytes()
    checkpoints[0].write_bytes(good[: len(good) // 3])
    bad = cli("training-aware", "--resume", parent_id, *common)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("error: checkpoint ") and "corrupt" in bad.stderr
    assert "Traceback" not in bad.stderr and statuses(store) == before
    checkpoints[0].write_bytes(good)
    unknown = cli("training-aware", "--resume", "0" * 32, *common)
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines()[-1].startswith("error: --resume: no run")
    mixed = cli("training-aware", "--resume", parent_id, "--epochs", "9", *common)
    assert mixed.returncode == 2 and "drop --epochs" in mixed.stderr

    summary_path = tmp_path / "summary.json"
    done = cli("training-aware", "--resume", parent_id, "--summary-json", str(summary_path), *common)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["parent_run_id"] == parent_id
    assert len(runs_of(store)) == 3, statuses(store)  # the same parent, dense and sparse runs: no new ones
    parent, children = family(store, parent_id)
    assert parent.info.status == "FINISHED" and {c.info.status for c in children.values()} == {"FINISHED"}
    sparse = children["sparse"]
    resumed_after = int(sparse.data.tags["sparsify.resumed_from_epoch"])
    assert 1 <= resumed_after < EPOCHS
    client = MlflowClient(tracking_uri=store)
    steps = [m.step for m in client.get_metric_history(sparse.info.run_id, "sparsity.overall")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # continued: no epoch trained twice
    assert abs(parent.data.metrics["sparse.sparsity.pruned_layers"] - 0.7) <= 0.01
    assert_exported_sparsity(parent.data.metrics["sparse.sparsity.exported"], 0.7)
    assert [str(v.version) for v in registered_versions(store)] == ["1"]
    logged = {a.path for a in client.list_artifacts(sparse.info.run_id, "checkpoint")}
    assert logged == {"checkpoint/checkpoint.pt"}

    again = cli("training-aware", "--resume", parent_id, *common)
    assert again.returncode == 2 and "already FINISHED" in again.stderr.strip().splitlines()[-1]
    assert [str(v.version) for v in registered_versions(store)] == ["1"]
