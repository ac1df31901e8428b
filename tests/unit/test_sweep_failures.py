"""A sweep whose every level fails ends FAILED with exit code 1 (one level failing is covered, for
real, by test_e2e_sweep.py). The dense baseline is stubbed so that this runs in seconds."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers.mlflow_checks import registered_versions, runs_of
from sparsify_mlflow import experiment, tracking
from sparsify_mlflow.cli import main
from sparsify_mlflow.export import ExportedModel
from sparsify_mlflow.results import ModelReport
from sparsify_mlflow.usecases.base import Metrics


def stub_dense_baseline(session: experiment.Session, folder: Path) -> experiment._Trained:
    with tracking.run("dense-baseline", nested=True, tags={"sparsify.role": "dense"}) as child:
        metrics = Metrics("accuracy", {"accuracy": 0.9})
        exported = ExportedModel(folder / "model.onnx", ("input",), ("logits",), 1000, 900, 0.0, {})
        report = ModelReport("dense", child.info.run_id, metrics, metrics, "onnxruntime", exported,
                                        {}, [], {}, 0.0, 1.0)
    return experiment._Trained(report, session.model)


def broken_training(session, cfg, *args, **kwargs):
    raise RuntimeError(f"no memory left at level {cfg.optim_level:g}")


def test_every_level_failing_fails_the_sweep(image_folder: Path, store: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(experiment, "train_dense_baseline", stub_dense_baseline)
    monkeypatch.setattr(experiment, "_training_aware", broken_training)
    code = main(["sweep", "--data", str(image_folder), "--optim-levels", "0.3,0.5", "--max-metric-drop", "1",
                 "--tracking-uri", store, "--working-dir", str(tmp_path), "--model", "resnet18", "--no-pretrained",
                 "--image-size", "32", "--epochs", "2", "--batch-size", "4"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "error: every level of the sweep failed (0.3: RuntimeError: no memory left at level 0.3; "
        "0.5: RuntimeError: no memory left at level 0.5)")
    runs = {r.info.run_name: r for r in runs_of(store)}
    sweep = runs["sweep-cv-classification-resnet18"]
    assert sweep.info.status == "FAILED"
    assert sweep.data.tags["sparsify.failure_reason"].startswith("AllLevelsFailed: every level of the sweep failed")
    for name in ("level-0.3", "level-0.5"):
        assert runs[name].info.status == "FAILED"
        assert "no memory left" in runs[name].data.tags["sparsify.failure_reason"]
    assert runs["dense-baseline"].info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient(tracking_uri=store).list_artifacts(sweep.info.run_id)}
    assert "sweep_table.json" in artifacts, "the table records the failures too"
    assert registered_versions(store) == []


def test_sweep_options_are_checked_before_any_run(store: str, tmp_path: Path, capsys) -> None:
    for args, message in ((["--optim-levels", "0.3,1.5"], "outside [0, 1]"),
                          (["--optim-levels", "0.3", "--min-speedup", "-1"], "--min-speedup"),
                          (["--optim-levels", "0.3", "--recipe", __file__], "--recipe does not combine with sweep")):
        assert main(["sweep", "--tracking-uri", store, "--working-dir", str(tmp_path), *args]) == 2
        assert message in capsys.readouterr().err
    assert runs_of(store) == []
