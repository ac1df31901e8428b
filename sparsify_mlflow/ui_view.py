"""A saved view of the MLflow UI's runs list that shows the headline metrics as columns.

MLflow 3's runs list shows no metric columns until a user picks them, and a run carries ~100
metrics. Its saved views live in experiment tags (`mlflow.sharedViewState.<id>`: a JSON envelope
{name, createdAt, updatedAt, state}, `state` the UI's view state as JSON text; mlflow/server/js,
saved-view helpers, checked against MLflow 3.17's UI in the browser test). Each experiment gets one
here; the UI lists it under "Views" and the links the summary prints open it (remote.ui_link).
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

VIEW_ID = "sparsify-headline"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_NAME = "sparsify: headline metrics"


def headline_columns(batch_size: int) -> list[str]:
    """The runs list's metric columns: what a reader compares first (headline.py), few enough to fit a
    1600 px window (the UI renders only the columns in view and sorts them by name)."""
    batches = [1] if batch_size == 1 else [1, batch_size]
    metrics = ["metric", "metric_drop_pt", "sparsity", *(f"speedup_bs{b}" for b in batches),
               "speedup_vs_best_dense_bs1", "speedup_vs_int8_only_bs1"]
    return [f"metrics.`{m}`" for m in metrics]


def ensure_headline_view(experiment_id: str, batch_size: int, client: MlflowClient | None = None) -> None:
    """Write the view, or add this run's batch size column to the one an earlier run wrote.

    Sorted by `speedup_bs1`, fastest first: a sort other than by time also lists nested runs (a sweep's
    levels) flat instead of folded under their parent, which has no headline of its own. A job that
    loses the race to write a new view (PostgreSQL: same tag inserted twice) merges into the winner's."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    try:
        _write_view(experiment_id, batch_size, client)
    except MlflowException:
        if VIEW_TAG not in client.get_experiment(experiment_id).tags:
            raise
        _write_view(experiment_id, batch_size, client)


def _write_view(experiment_id: str, batch_size: int, client: MlflowClient) -> None:
    existing = client.get_experiment(experiment_id).tags.get(VIEW_TAG)
    try:
        envelope = json.loads(existing or "null")
        known = list(json.loads(envelope["state"])["selectedColumns"]) if envelope else []
    except (ValueError, KeyError, TypeError):  # not a view this code can read: write ours over it
        envelope, known = None, []
    columns = [*known, *(c for c in headline_columns(batch_size) if c not in known)]
    if envelope and columns == known:
        return
    now = int(time.time() * 1000)
    state = {"selectedColumns": columns, "orderByKey": "metrics.`speedup_bs1`", "orderByAsc": False}
    envelope = {"name": VIEW_NAME, "createdAt": envelope.get("createdAt", now) if envelope else now, "updatedAt": now,
                "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
