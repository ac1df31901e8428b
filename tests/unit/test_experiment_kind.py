"""Experiments are marked as model development, so MLflow 3's UI files their runs under Runs."""
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from sparsify_mlflow import tracking


def test_new_and_existing_experiments_are_marked_model_development_unless_the_user_chose(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    new = tracking.ensure_experiment("fresh", tmp_path)
    assert client.get_experiment(new).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("made-before")  # e.g. by an earlier version, or by `mlflow run`
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", older)
    assert tracking.ensure_experiment("ignored under mlflow run", tmp_path) == older
    assert client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = client.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "finetuning"})
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    assert tracking.ensure_experiment("chosen", tmp_path) == chosen
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "finetuning"
