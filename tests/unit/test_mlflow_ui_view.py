"""What a user meets in MLflow 3's UI: experiments typed as model development, links to the training view
in the saved view with the headline columns."""
import json
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from sparsify_mlflow import tracking, ui_view


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
           "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" \
           "&viewStateShareKey=sparsify-headline" in local
    served = hint("https://alice:secret@mlflow.example.com/")
    assert "https://mlflow.example.com/#/experiments/7/runs?workflowType=machine_learning" in served
    assert "secret" not in served
    assert "server on postgresql://" in hint("postgresql://db/mlflow")


def _columns(client: MlflowClient, experiment_id: str) -> list[str]:
    envelope = json.loads(client.get_experiment(experiment_id).tags[ui_view.VIEW_TAG])
    assert envelope["name"] == ui_view.VIEW_NAME and isinstance(envelope["createdAt"], int)
    return json.loads(envelope["state"])["selectedColumns"]


def test_the_headline_view_names_the_headline_metrics_and_grows_with_new_batch_sizes(tmp_path: Path) -> None:
    """Batch 1 and the run's batch size; the browser test checks the UI shows them with the runs' values."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("views")
    ui_view.ensure_headline_view(experiment, 16, client)
    columns = _columns(client, experiment)
    assert columns == ["metrics.`metric`", "metrics.`metric_drop_pt`", "metrics.`sparsity`", "metrics.`speedup_bs1`",
                       "metrics.`speedup_bs16`", "metrics.`speedup_vs_best_dense_bs1`",
                       "metrics.`speedup_vs_int8_only_bs1`"]
    ui_view.ensure_headline_view(experiment, 16, client)
    assert _columns(client, experiment) == columns  # idempotent
    ui_view.ensure_headline_view(experiment, 4, client)
    grown = _columns(client, experiment)
    assert grown[:len(columns)] == columns and "metrics.`speedup_bs4`" in grown
    state = json.loads(json.loads(client.get_experiment(experiment).tags[ui_view.VIEW_TAG])["state"])
    assert state["orderByKey"] == "metrics.`speedup_bs1`" and state["orderByAsc"] is False  # nested runs flat
    client.set_experiment_tag(experiment, ui_view.VIEW_TAG, "not json")  # a view this code cannot read
    ui_view.ensure_headline_view(experiment, 1, client)
    assert "metrics.`speedup_bs16`" not in _columns(client, experiment)
