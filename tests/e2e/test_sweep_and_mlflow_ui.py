"""Compare and promote, end to end on a tiny ImageFolder: one sweep of three levels (0: the dense
baseline itself; 0.5: trained from it; 0.7: made to fail), then promotion, benchmark-by-URI through
`mlflow run -e benchmark`, and the MLflow UI rendered by headless Chromium against the sweep's store.
Three levels and two trainings keep the module within a few minutes on a busy 2-core machine.

The sweep runs once for the module; `make test` keeps the module on one xdist worker
(`--dist loadgroup`), so it is not repeated per worker.
"""
from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import REPO
from helpers.data import make_image_folder
from helpers.mlflow_checks import assert_exported_sparsity
from sparsify_mlflow import experiment, ui_view
from sparsify_mlflow.cli import main
from sparsify_mlflow.remote import UI_TRAINING_VIEW, ui_link

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("sweep")]

TINY = ["--model", "resnet18", "--no-pretrained", "--epochs", "2", "--batch-size", "8",
        "--image-size", "32", "--benchmark-batch-size", "4", "--benchmark-iterations", "3", "--benchmark-rounds", "3"]
NAME = "tiny-sweep"
FAILING_LEVEL = 0.7          # made to fail: the sweep must record it and go on
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots (ignored by git)


@dataclass
class Sweep:
    store: str
    folder: Path
    summary: dict
    exit_code: int
    client: MlflowClient


# Session scope, not module: xdist runs this group's tests on one worker but may interleave other
# modules' tests, and a module fixture is torn down (and the sweep run again) at each switch.
@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    folder = tmp_path_factory.mktemp("sweep")
    images = make_image_folder(folder / "images")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    original = experiment._training_aware

    def fails_at_one_level(session, cfg, *args, **kwargs):
        if cfg.optim_level == FAILING_LEVEL:
            raise RuntimeError(f"injected failure at optim level {FAILING_LEVEL}")
        return original(session, cfg, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment, "_training_aware", fails_at_one_level)
        mp.chdir(folder)
        code = main(["sweep", "--data", str(images), "--optim-levels", f"0,0.5,{FAILING_LEVEL}",
                     "--max-metric-drop", "100", "--tracking-uri", store, "--working-dir", str(folder),
                     "--registered-model-name", NAME, "--summary-json", str(folder / "sweep.json"), *TINY])
    summary = json.loads((folder / "sweep.json").read_text())
    return Sweep(store, folder, summary, code, MlflowClient(tracking_uri=store, registry_uri=store))


def descendants(s: Sweep, run_id: str) -> list:
    runs = s.client.search_runs([s.summary["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    return runs + [r for child in runs for r in descendants(s, child.info.run_id)]


def test_one_parent_one_dense_training_and_a_child_per_level(sweep: Sweep) -> None:
    assert sweep.exit_code == 0, "one failed level does not fail the sweep"
    parent = sweep.client.get_run(sweep.summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sparsify.role"] == "sweep"
    assert parent.data.params["sweep.optim_levels"] == "0,0.5,0.7"
    experiment = sweep.client.get_experiment(sweep.summary["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # training runs, not evaluations
    everything = sweep.client.search_runs([sweep.summary["experiment_id"]])
    dense = [r for r in everything if r.data.tags.get("sparsify.role") == "dense"]
    assert len(dense) == 1, "the dense baseline is trained once for all levels"
    assert dense[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "sparsify.reused_from_run" not in dense[0].data.tags and dense[0].data.metrics["train_seconds"] > 0

    children = {r.data.tags.get("sparsify.optim_level"): r for r in descendants(sweep, parent.info.run_id)
                if r.data.tags.get("sparsify.role") == "level"}
    assert {k: r.info.status for k, r in children.items()} == {"0": "FINISHED", "0.5": "FINISHED", "0.7": "FAILED"}
    assert "injected failure" in children["0.7"].data.tags["sparsify.failure_reason"]
    for level, target in (("0", 0.0), ("0.5", 0.7)):
        run = children[level]
        assert run.info.run_name == f"level-{level}"
        assert float(run.data.params["config.optim_level"]) == float(level)
        assert float(run.data.params["recipe.target_sparsity"]) == target
        # the same names as a standalone training-aware parent run, so the compare view lines them up
        for name in ("main_drop", "dense.main", "sparse.main", "sparse.deepsparse.bs1.latency_ms_median",
                     "sparse.sparsity.exported", "sparse.size.onnx_mb"):
            assert name in run.data.metrics, (level, name)
        assert run.data.metrics["dense.main"] == dense[0].data.metrics["main"]
        grandchildren = descendants(sweep, run.info.run_id)
        assert [g.data.tags["sparsify.role"] for g in grandchildren] == ([] if level == "0" else ["sparse"])
    assert_exported_sparsity(children["0.5"].data.metrics["sparse.sparsity.exported"], 0.7)
    assert children["0"].data.metrics["sparse.main"] == children["0"].data.metrics["dense.main"]
    failed = [lv for lv in sweep.summary["levels"] if lv["status"] == "FAILED"]
    assert [lv["optim_level"] for lv in failed] == [FAILING_LEVEL]


def test_table_figure_recommendation_and_registry(sweep: Sweep, tmp_path: Path) -> None:
    parent_id = sweep.summary["parent_run_id"]
    artifacts = {a.path for a in sweep.client.list_artifacts(parent_id)}
    assert {"sweep_table.json", "sweep_table.csv", "figures"} <= artifacts
    assert "figures/pareto.png" in {a.path for a in sweep.client.list_artifacts(parent_id, "figures")}
    png = Path(sweep.client.download_artifacts(parent_id, "figures/pareto.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    rows = list(csv.DictReader(open(sweep.client.download_artifacts(parent_id, "sweep_table.csv", str(tmp_path)))))
    reference = sweep.summary["int8_only"]
    usable = reference["failure"] is None  # the INT8-only reference: a row of its own when it is usable
    assert [r["level"] for r in rows] == ["dense", *(["int8-only"] if usable else []), "0", "0.5", "0.7"], reference
    by_level = {r["level"]: r for r in rows}
    assert by_level["0.7"]["status"] == "FAILED" and "injected failure" in by_level["0.7"]["failure_reason"]
    for level in ("dense", "0", "0.5"):
        row = by_level[level]
        assert row["status"] == "FINISHED" and row["main_metric"] == "accuracy"
        for column in ("main", "main_drop", "latency_ms_bs1", "items_per_second_bs4", "speedup_bs1", "size_mb"):
            assert float(row[column]) >= (0 if column != "main_drop" else -100), (level, column)
    assert float(by_level["0.5"]["sparsity"]) > 0.6 and float(by_level["dense"]["speedup_bs1"]) == 1.0
    table = json.loads(Path(sweep.client.download_artifacts(parent_id, "sweep_table.json", str(tmp_path))).read_text())
    assert table["columns"][:2] == ["level", "status"] and len(table["data"]) == len(rows)  # MLflow's table format

    # --max-metric-drop 100 admits every finished level: the fastest at batch size 1 is recommended if it
    # is faster than the dense model on the same engine and than INT8 alone; at 32 px it usually is not
    finished = [r for r in rows if r["level"] not in ("dense", "int8-only", "0.7")]
    fastest = min(finished, key=lambda r: float(r["latency_ms_bs1"]))
    rec = sweep.summary["recommendation"]
    recommended = [r["level"] for r in rows if r["recommended"] == "True"]
    parent = sweep.client.get_run(parent_id)
    level_0_5 = next(r for r in rows if r["level"] == "0.5")
    beats_int8 = not usable or float(level_0_5["speedup_vs_int8_only_bs1"]) > 1
    if usable and not beats_int8:  # no level faster than INT8 alone: the reference is the recommendation
        assert recommended == ["int8-only"] and rec["int8_only"] and rec["optim_level"] is None, rec
        assert "is faster than INT8 alone" in rec["reason"] and "INT8-only model is recommended" in rec["reason"]
        assert parent.data.tags["sparsify.recommended_level"] == "int8-only"
        version = sweep.client.get_model_version_by_alias(NAME, "recommended")
        assert version.tags["int8_only"] == "true" and str(version.version) == rec["registered_version"]
        assert version.tags["main_drop"] == f"{float(next(r for r in rows if r['level'] == 'int8-only')['main_drop']):.2f}"
    elif float(fastest["speedup_bs1"]) > 1 and beats_int8:
        assert recommended == [fastest["level"]]
        assert rec["optim_level"] == float(fastest["level"]) and rec["registered_version"] == fastest["registered_version"]
        assert parent.data.tags["sparsify.recommended_level"] == fastest["level"]
    else:
        assert recommended == [] and rec["optim_level"] is None
        assert rec["reason"].startswith("no level is faster than the dense model on deepsparse"), rec["reason"]
        assert "sparsify.recommended_level" not in parent.data.tags

    versions = {str(v.version): v for v in sweep.client.search_model_versions(f"name='{NAME}'")}
    int8_version = ["int8-only"] if recommended == ["int8-only"] else []
    assert len(versions) == 2 + len(int8_version), "one version per finished level (and INT8 alone if recommended)"
    assert sorted(v.tags["optim_level"] for v in versions.values()) == [""] * len(int8_version) + ["0", "0.5"]
    assert all(v.tags["sweep_run_id"] == parent_id for v in versions.values())
    # search_model_versions leaves aliases out: read each version
    aliases = {alias for v in versions for alias in sweep.client.get_model_version(NAME, v).aliases}
    assert aliases == ({"recommended", "candidate"} if recommended else set())
    for alias in aliases:
        assert str(sweep.client.get_model_version_by_alias(NAME, alias).version) == rec["registered_version"]


def sparse_version(sweep: Sweep) -> str:
    return next(lv["registered_version"] for lv in sweep.summary["levels"] if lv["optim_level"] == 0.5)


def test_promote_then_benchmark_by_uri_through_mlflow_run(sweep: Sweep, capsys) -> None:
    rec = sparse_version(sweep)
    assert main(["promote", "--tracking-uri", sweep.store, "--registered-model-name", NAME, "--version", rec,
                 "--to", "champion", "--min-speedup", "1000000", "--accept-unreliable-speedup"]) == 2
    assert "below --min-speedup 1000000" in capsys.readouterr().err
    assert main(["promote", "--tracking-uri", sweep.store, "--registered-model-name", NAME, "--version", rec,
                 "--to", "champion", "--max-metric-drop", "100", "--reason", "sweep winner"]) == 0
    champion = sweep.client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == rec and champion.tags["promotion_reason"] == "sweep winner"

    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "benchmark",
               "--experiment-name", "sweep-benchmarks", "-P", f"model_uri=models:/{NAME}@champion",
               "-P", "batch_size=1,4", "-P", "engine=both", "-P", "iterations=3"]
    env = os.environ | {"MLFLOW_TRACKING_URI": sweep.store,
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=sweep.folder, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = sweep.client.get_model_version(NAME, rec)
    run = sweep.client.get_run(version.tags["benchmark_run_id"])
    assert run.data.tags["mlflow.project.entryPoint"] == "benchmark", "the run `mlflow run` created holds the figures"
    # the version is a raw-image pyfunc: its input example is an image, so the graph's inputs are generated
    assert run.data.tags["sparsify.registered_version"] == rec and run.data.params["input_source"] == "generated"
    for key in ("deepsparse.bs1.latency_ms_median", "onnxruntime.bs4.items_per_second"):
        assert key in run.data.metrics, key
    assert sweep.client.get_experiment(run.info.experiment_id).name == "sweep-benchmarks"


# --- the MLflow UI in a real browser --------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when it is missing (CI machines start without it)."""
    found = shutil.which("chromium")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "chromium"]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run([*sudo, "apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=900)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, f"could not install chromium: {(proc.stdout + proc.stderr)[-2000:]}"
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


@pytest.fixture(scope="session")
def mlflow_server(sweep: Sweep, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on a free loopback port against the sweep's store (no job runner: not needed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                                 sweep.store, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"mlflow server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"mlflow server did not answer: {log.read_text()[-2000:]}"
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def render(chromium: str, url: str, profile: Path, screenshot: Path | None = None, width: int = 1600) -> str:
    """The page as Chromium renders it after the app's scripts ran (virtual time: 15 s of it). The UI's
    tables render only the columns in view: a wider window shows more of them."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--virtual-time-budget=15000", f"--window-size={width},1000"]
    command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*command, url], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_mlflow_ui_shows_the_runs_and_the_registered_model(sweep: Sweep, mlflow_server: str, chromium: str,
                                                           tmp_path: Path) -> None:
    experiment_id = sweep.summary["experiment_id"]
    # sorted by name: the UI then lists nested runs flat instead of folding them under their parent
    runs_url = f"{mlflow_server}/#/experiments/{experiment_id}/runs?orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"
    text = visible_text(render(chromium, runs_url, tmp_path / "profile"))
    parent = sweep.client.get_run(sweep.summary["parent_run_id"]).info.run_name
    for name in (parent, "dense-baseline", "level-0", "level-0.5", "level-0.7", "training-aware"):
        assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", text), f"{name!r} not shown; page text: {text[:1500]}"

    # the link the summary prints opens the training view: the sweep's parent (a logged table, no model) is
    # filed under Runs, not under Evaluations (MLflow 3.17's GenAI view, where a fresh browser starts)
    parent_url = ui_link(mlflow_server, experiment_id, sweep.summary["parent_run_id"])
    parent_text = visible_text(render(chromium, parent_url, tmp_path / "profile"))
    assert f"{sweep.client.get_experiment(experiment_id).name} Runs {parent}" in parent_text, parent_text[:1500]
    assert "Evaluations" not in parent_text, parent_text[:1500]

    # the link the summary prints for the experiment opens the saved view with the headline metrics as columns
    headline_text = visible_text(render(chromium, ui_link(mlflow_server, experiment_id), tmp_path / "profile"))
    assert ui_view.VIEW_NAME in headline_text, headline_text[:1500]
    assert " level-0.5 " in headline_text, f"the sweep's level runs are folded away: {headline_text[:1500]}"
    header = headline_text[headline_text.index(" Metrics "):headline_text.index(" Hide run ")]
    for column in ui_view.headline_columns(4):  # the sweep benchmarks at batch 4; its level runs log each
        name = column.removeprefix("metrics.`").removesuffix("`")
        assert f" {name} " in f"{header} ", f"column {name!r} not shown: {header}"

    dataset = sweep.client.get_run(sweep.summary["parent_run_id"]).inputs.dataset_inputs[0].dataset
    assert f"{dataset.name} ({dataset.digest})" in text, f"the runs list shows no dataset: {text[:1500]}"
    models_url = f"{mlflow_server}/#/experiments/{experiment_id}/models?{UI_TRAINING_VIEW}"
    # the linked metrics are columns right of the models' attributes (3000 px: past them, no scrolling), in the
    # order they were first logged: the headline's (registry.MODEL_STEP keeps the evaluation's off the models)
    models_text = visible_text(render(chromium, models_url, tmp_path / "profile", width=3000))
    assert " Dataset metric metric_drop_pt speedup_bs1 speedup_bs4 sparsity " in models_text, \
        f"no headline columns on the Models page: {models_text[:3000]}"
    logged = {m.name for m in sweep.client.search_logged_models(experiment_ids=[experiment_id])}
    assert any(n.endswith("-dense") for n in logged) and any("-L0_5-s" in n for n in logged), logged
    for name in logged:  # the dense baseline and one model per level, by the naming scheme
        assert name in models_text, f"model {name!r} not on the Models page: {models_text[:1500]}"

    def aliases() -> set[str]:
        return {a for v in sweep.client.search_model_versions(f"name='{NAME}'")
                for a in sweep.client.get_model_version(NAME, v.version).aliases}

    if not aliases():  # nothing recommended, nothing promoted yet
        assert main(["promote", "--tracking-uri", sweep.store, "--registered-model-name", NAME,
                     "--version", sparse_version(sweep), "--to", "champion"]) == 0
    model_text = visible_text(render(chromium, f"{mlflow_server}/#/models/{NAME}", tmp_path / "profile"))
    assert NAME in model_text and "Version 2" in model_text, model_text[:1500]
    for alias in aliases():
        assert f"@ {alias}" in model_text or f"@{alias}" in model_text, f"alias {alias} not shown: {model_text[:1500]}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for url, name, width in ((runs_url, "mlflow-ui-sweep-runs.png", 1600),
                             (ui_link(mlflow_server, experiment_id), "mlflow-ui-headline.png", 1600),
                             (f"{mlflow_server}/#/models/{NAME}", "mlflow-ui-model.png", 1600),
                             (models_url, "mlflow-ui-logged-models.png", 3000)):
        render(chromium, url, tmp_path / "profile", screenshot=ARTIFACTS / name, width=width)
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {ARTIFACTS / name}")
