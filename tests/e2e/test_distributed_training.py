"""Two CPU processes (torchrun, gloo) through `--nproc-per-node 2`: the single-process contract holds.

One parent run with its dense and sparse children (no run per rank), the target sparsity, one
registered version; bad input still fails in one line with exit code 2 and nothing registered.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import use_every_cpu
from helpers.data import make_image_folder
from helpers.mlflow_checks import assert_exported_sparsity, assert_failed_cleanly, family, registered_versions, runs_of

pytestmark = pytest.mark.e2e

TINY = ["--model", "resnet18", "--no-pretrained", "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--image-size", "16",
        "--benchmark-batch-size", "2", "--benchmark-iterations", "3",
        "--benchmark-rounds", "3", "--no-int8-reference", "--deploy-engine", "onnxruntime"]


def cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """The CLI in its own process group, so that a hang is killed with torchrun and both ranks."""
    command = [sys.executable, "-m", "sparsify_mlflow", "training-aware", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=os.environ | {"PYTHONWARNINGS": "ignore"},
                            preexec_fn=use_every_cpu)  # two ranks: not on the xdist worker's one core
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {out[-2000:]}{err[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_two_processes_train_one_experiment(store: str, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=12)
    summary_path = tmp_path / "summary.json"
    proc = cli("--nproc-per-node", "2", "--data", str(data), "--optim-level", "0.5", "--tracking-uri", store,
               "--working-dir", str(tmp_path / "work"), "--summary-json", str(summary_path),
               "--registered-model-name", "ddp", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert len(runs_of(store)) == 3, [r.info.run_name for r in runs_of(store)]  # rank 1 logged nothing
    parent, children = family(store, summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and set(children) == {"dense", "sparse"}
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert child.data.tags["sparsify.ddp.world_size"] == "2" and child.data.tags["sparsify.ddp.backend"] == "gloo"
        assert child.data.params["train.batch_size"] == "8"  # the global batch: 4 per rank
    assert abs(parent.data.metrics["sparse.sparsity.pruned_layers"] - 0.7) <= 0.01
    assert_exported_sparsity(parent.data.metrics["sparse.sparsity.exported"], 0.7)
    steps = MlflowClient(tracking_uri=store).get_metric_history(children["sparse"].info.run_id, "train.step_seconds")
    assert [m.step for m in steps] == [1, 2, 3]
    assert [str(v.version) for v in registered_versions(store)] == ["1"]
    assert len(list((tmp_path / "work").glob("training-aware_*"))) == 1  # one experiment folder, rank 0's


def test_a_failure_on_the_leader_fails_the_run_in_one_line(store: str, tmp_path: Path) -> None:
    proc = cli("--nproc-per-node", "2", "--data", str(tmp_path / "absent"), "--tracking-uri", store,
               "--working-dir", str(tmp_path / "work"), *TINY)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: data folder" in proc.stderr and "does not exist" in proc.stderr
    assert_failed_cleanly(store, "does not exist")


def test_bad_process_counts_stop_at_the_door(store: str, tmp_path: Path) -> None:
    proc = cli("--nproc-per-node", "0", "--tracking-uri", store, "--working-dir", str(tmp_path / "work"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: --nproc-per-node must be a positive integer, got 0")
    assert runs_of(store) == []
