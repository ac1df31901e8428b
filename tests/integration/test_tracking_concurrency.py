"""Two experiments registering versions of one model name at the same time, on PostgreSQL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers.tracking_procs import start_experiment

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tracking-servers")]


def test_parallel_experiments_get_distinct_versions_and_one_consistent_alias(tracking_server, image_folder: Path,
                                                                            tmp_path: Path) -> None:
    name = "concurrent-tiny"
    procs = {}
    for who in ("a", "b"):
        (tmp_path / who).mkdir()
        procs[who] = start_experiment(tracking_server.uri, image_folder, tmp_path / who, "--experiment-name",
                                      "concurrency", "--registered-model-name", name, "--seed", "0")
    try:
        outputs = {who: proc.communicate(timeout=1800)[0] for who, proc in procs.items()}
    finally:
        for proc in procs.values():  # no experiment outlives the test
            if proc.poll() is None:
                proc.kill()
    for who, proc in procs.items():
        assert proc.returncode == 0, outputs[who][-3000:]
    summaries = {who: json.loads((tmp_path / who / "summary.json").read_text()) for who in procs}

    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    versions = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
    assert sorted(map(str, versions)) == ["1", "2"]
    assert sorted(s["registered_model"]["version"] for s in summaries.values()) == ["1", "2"]
    by_parent = {v.tags["parent_run_id"]: str(v.version) for v in versions.values()}
    assert by_parent == {s["parent_run_id"]: s["registered_model"]["version"] for s in summaries.values()}
    for version in versions.values():  # each version is whole: tags from its own experiment, READY
        assert version.status == "READY" and {"optim_level", "sparsity", "main_drop"} <= set(version.tags)

    aliases = client.get_registered_model(name).aliases
    assert set(aliases) == {"candidate"} and str(aliases["candidate"]) in {"1", "2"}
    holder = client.get_model_version_by_alias(name, "candidate")
    assert str(holder.version) == str(aliases["candidate"])
    assert holder.aliases == ["candidate"]
    assert [v for v in versions.values() if "candidate" in client.get_model_version(name, v.version).aliases
            ] == [versions[holder.version]]
    for summary in summaries.values():
        assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"


def test_jobs_opening_one_untagged_experiment_together_all_start(tracking_server, tmp_path: Path) -> None:
    """Jobs that find the same experiment without its kind tag and saved view all write them: on
    PostgreSQL the slower insert of the same tag failed (unique key) and took its experiment down."""
    import mlflow

    from sparsify_mlflow import tracking, ui_view

    mlflow.set_tracking_uri(tracking_server.uri)
    client = MlflowClient(tracking_uri=tracking_server.uri)
    for attempt in range(5):  # each attempt is a fresh race; one lost race is enough to fail
        name = f"untagged-{tmp_path.name}-{attempt}"
        experiment_id = client.create_experiment(name)
        assert open_together(name, tmp_path, jobs=6) == [experiment_id] * 6
        tags = client.get_experiment(experiment_id).tags
        assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development" and ui_view.VIEW_TAG in tags


def open_together(name: str, working_dir: Path, jobs: int) -> list[str]:
    """What a job does first (experiment, then its saved view) from `jobs` threads released at once:
    each one's experiment id, or its error."""
    import threading

    from sparsify_mlflow import tracking, ui_view

    start, results = threading.Barrier(jobs), []

    def open_it() -> None:
        start.wait()
        try:
            experiment_id = tracking.ensure_experiment(name, working_dir)
            ui_view.ensure_headline_view(experiment_id, 16)
            results.append(experiment_id)
        except Exception as exc:  # noqa: BLE001 - the caller's assertion shows it
            results.append(repr(exc))

    threads = [threading.Thread(target=open_it) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_jobs_started_together_share_a_new_sqlite_store(tmp_path: Path) -> None:
    """Three processes open one new sqlite store at once: all of them get a usable store (MLflow's
    table migration, run concurrently, failed 8 of 9 such openings before the setup lock)."""
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "import sys; from sparsify_mlflow import tracking; tracking.connect(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, store], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-500:] for e in errors]
