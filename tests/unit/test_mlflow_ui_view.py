"""What a user meets in MLflow 3's UI: experiments typed as model development, links to the training view."""
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


def test_the_hint_links_the_training_view_of_the_experiment() -> None:
    from rich.console import Console

    from sparsify_mlflow.summary import print_ui_hint

    def hint(uri: str) -> str:
        console = Console(record=True, width=60)  # narrower than the link: it must not be wrapped
        print_ui_hint(uri, "7", console)
        return console.export_text()

    local = hint("sqlite:////work/mlflow.db")
    assert "mlflow ui --backend-store-uri sqlite:////work/mlflow.db, then open " \
           "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" in local
    served = hint("https://alice:secret@mlflow.example.com/")
    assert "https://mlflow.example.com/#/experiments/7/runs?workflowType=machine_learning" in served
    assert "secret" not in served
    assert "server on postgresql://" in hint("postgresql://db/mlflow")
