"""Assertions on what an experiment left in an MLflow store (shared by the end-to-end tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient


def runs_of(store: str) -> list[Run]:
    client = MlflowClient(tracking_uri=store)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


def family(store: str, parent_id: str) -> tuple[Run, dict[str, Run]]:
    """The parent run and its children keyed by role (dense / sparse)."""
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(parent_id)
    children = {r.data.tags["sparsify.role"]: r
                for r in client.search_runs([parent.info.experiment_id],
                                            filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")}
    return parent, children


def registered_versions(store: str) -> list:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return [v for m in client.search_registered_models() for v in client.search_model_versions(f"name='{m.name}'")]


def assert_failed_cleanly(store: str, reason_fragment: str) -> None:
    """Every run ended FAILED with the reason tagged, and nothing was registered."""
    runs = runs_of(store)
    assert runs, "expected the failed run to be recorded"
    for run in runs:
        assert run.info.status == "FAILED", (run.info.run_name, run.info.status)
    assert any(reason_fragment in r.data.tags.get("sparsify.failure_reason", "") for r in runs)
    assert registered_versions(store) == []


def run_project(repo: Path, params: dict[str, str], store: str, cwd: Path, experiment: str,
                timeout: float = 1200) -> subprocess.CompletedProcess:
    """`mlflow run <repo> --env-manager local` with the test's environment on PATH and its store."""
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(repo), "--env-manager", "local",
               "--experiment-name", experiment]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    env = os.environ | {"MLFLOW_TRACKING_URI": store,
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def assert_comparison_follows_its_definitions(store: str, parent_id: str) -> None:
    """The comparison's figures recomputed from what the store holds, not from the code that logged them.

    - `main_drop` is 100 * (dense - sparse) of the ONNX metric the gates read; `main_drop_pytorch` the same
      for the PyTorch metric;
    - every `speedup.<engine>.bs<N>` (and `speedup_vs_onnxruntime.*`) is the median over the benchmark
      session's rounds of dense latency / sparse latency in that round, read from each child run's
      per-round history, and its .min/.max the extremes;
    - every `speedup_vs_best_dense.bs<N>` is the same between the engines the `sparsify.fastest_dense.bs<N>` /
      `sparsify.fastest_sparse.bs<N>` tags name, and those are each model's lowest median per-round latency there;
    - the registered version's tags are what the parent run logged (read back from the registry).
    """
    import statistics

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    parent, children = family(store, parent_id)
    metrics = parent.data.metrics
    main = parent.data.params.get("config.eval_metric") or _main_metric_name(metrics)
    dense, sparse = children["dense"], children.get("sparse", children["dense"])
    assert metrics["main_drop"] == round(100 * (metrics[f"dense.onnx.{main}"] - metrics[f"sparse.onnx.{main}"]), 4)
    assert metrics["main_drop_pytorch"] == round(100 * (metrics[f"dense.{main}"] - metrics[f"sparse.{main}"]), 4)

    def rounds(run_id: str, key: str) -> list[float]:
        history = sorted(client.get_metric_history(run_id, f"{key}.round_latency_ms"), key=lambda m: m.step)
        return [m.value for m in history]

    speedups = {k: v for k, v in metrics.items() if k.startswith(("speedup.", "speedup_vs_onnxruntime."))
                and not k.endswith((".min", ".max"))}
    assert any(k.startswith("speedup.") for k in speedups), sorted(metrics)
    for name, value in speedups.items():
        key = name.split(".", 1)[1]
        reference_key = key if name.startswith("speedup.") else f"onnxruntime.{key.split('.', 1)[1]}"
        ratios = [d / s for d, s in zip(rounds(dense.info.run_id, reference_key), rounds(sparse.info.run_id, key))]
        assert len(ratios) == int(parent.data.params["config.benchmark_rounds"]), (name, ratios)
        assert abs(value - statistics.median(ratios)) <= 1e-6 * value, (name, value, ratios)
        assert abs(metrics[f"{name}.min"] - min(ratios)) <= 1e-6 * value
        assert abs(metrics[f"{name}.max"] - max(ratios)) <= 1e-6 * value
    best = {k: v for k, v in metrics.items() if k.startswith("speedup_vs_best_dense.") and not k.endswith((".min", ".max"))}
    assert best, sorted(metrics)
    for name, value in best.items():
        bs = name.rsplit(".", 1)[1]
        keys = {role: f"{parent.data.tags[f'sparsify.fastest_{role}.{bs}']}.{bs}" for role in ("dense", "sparse")}
        for role, key in keys.items():  # the fastest: the lowest median of the per-round medians
            run_id = (dense if role == "dense" else sparse).info.run_id
            engines = {k.split(".")[1] for k in metrics
                       if k.startswith(f"{role}.") and k.endswith(f".{bs}.latency_ms_median")}
            typical = {e: statistics.median(rounds(run_id, f"{e}.{bs}")) for e in engines}
            assert typical[key.split(".")[0]] == min(typical.values()), (role, key, typical)
        ratios = [d / s for d, s in zip(rounds(dense.info.run_id, keys["dense"]),
                                        rounds(sparse.info.run_id, keys["sparse"]))]
        assert abs(value - statistics.median(ratios)) <= 1e-6 * value, (name, value, ratios)
    registered = parent.data.tags.get("sparsify.registered_model")
    if registered:
        tags = client.get_model_version(registered, parent.data.tags["sparsify.registered_version"]).tags
        engine = tags["speedup_engine"]
        assert tags["main_drop"] == f"{metrics['main_drop']:.2f}"
        assert tags["speedup"] == f"{metrics[f'speedup.{engine}.bs1']:.2f}"
        assert tags["speedup_vs_best_dense"] == f"{metrics['speedup_vs_best_dense.bs1']:.2f}"  # promote's gate
        assert metrics["speedup_vs_best_dense_bs1"] == metrics["speedup_vs_best_dense.bs1"]
        assert tags[tags["main_metric"]] == f"{metrics['sparse.onnx.' + tags['main_metric']]:.4f}"
        assert tags["benchmark_reliable"] == parent.data.tags["sparsify.benchmark_reliable"]
    assert_models_carry_the_headline(store, parent, dense, sparse, main)


def assert_models_carry_the_headline(store: str, parent: Run, dense: Run, sparse: Run, main: str) -> None:
    """The headline metrics on the run and on the MLflow LoggedModels (`search_logged_models`), each equal
    to the run's own figure: a dense model named `<model>-dense` and the level's `<model>-L<level>-s<pct>-
    <int8|fp32>` (a `.` written `_`), which the registered version points at."""
    import mlflow

    metrics = parent.data.metrics
    engine = next(k.split(".")[1] for k in metrics if k.startswith("speedup.") and k.endswith(".bs1"))
    expected = {"metric": metrics[f"sparse.onnx.{main}"], "metric_drop_pt": metrics["main_drop"],
                "sparsity": metrics["sparse.sparsity.exported"], "size_mb": metrics["sparse.size.onnx_mb"],
                "speedup_bs1": metrics[f"speedup.{engine}.bs1"]}
    for name, value in expected.items():
        assert metrics[name] == value, (name, metrics[name], value)
    mlflow.set_tracking_uri(store)
    models = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id],
                                                             output_format="list")}
    stem = Path(parent.data.params["config.model"]).stem
    level = parent.data.params["config.optim_level"]
    percent = round(100 * metrics["sparse.sparsity.exported"])
    precision = "int8" if metrics["int8"] else "fp32"
    sparse_model = models[f"{stem}-L{float(level):g}-s{percent}-{precision}".replace(".", "_")]
    linked = {m.key: m.value for m in sparse_model.metrics if m.run_id == sparse.info.run_id}
    for name, value in expected.items():
        assert linked[name] == value, (name, linked[name], value)
    assert sparse_model.params["optim_level"] == f"{float(level):g}"
    dense_model = models[f"{stem}-dense"]
    dense_linked = {m.key: m.value for m in dense_model.metrics if m.run_id == dense.info.run_id}
    assert dense_linked["metric"] == metrics[f"dense.onnx.{main}"] and dense_linked["speedup_bs1"] == 1.0
    assert dense_linked[f"{engine}.bs1.latency_ms"] == metrics[f"dense.{engine}.bs1.latency_ms_median"]
    registered = parent.data.tags.get("sparsify.registered_model")
    if registered:
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        version = client.get_model_version(registered, parent.data.tags["sparsify.registered_version"])
        assert version.source == f"models:/{sparse_model.model_id}", (version.source, sparse_model.model_id)


def _main_metric_name(metrics: dict[str, float]) -> str:
    names = [k.removeprefix("sparse.onnx.") for k in metrics if k.startswith("sparse.onnx.")]
    return "accuracy" if "accuracy" in names else sorted(names)[0]


def assert_exported_sparsity(exported: float, target: float) -> None:
    """The exported file keeps the pruned zeros.

    Down to target - 0.02: unpruned layers (the stem, the classifier) dilute the file's overall figure.
    Up to target + 0.06: INT8 rounds the smallest surviving weights (|w| < scale / 2) to zero as well;
    a barely trained model has many of them (CI saw 0.7206 at target 0.7, a resumed 2-epoch run
    0.7441). The next level's sparsity (0.8 after 0.7) is still out of bounds.
    """
    assert target - 0.02 <= exported <= target + 0.06, (exported, target)


def assert_int8_only_reference(store: str, parent_id: str) -> bool:
    """The INT8-only reference as the store holds it; True when it was usable (and so compared).

    Usable (`sparsify.int8_only` = ok): its child run FINISHED, its file INT8 and within 5 points of the
    dense file, `main_drop_vs_int8_only` = 100 * (reference - sparse) and every `speedup_vs_int8_only.bs<N>`
    the median over the rounds of the reference's fastest engine against the sparse model's fastest (the
    `sparsify.fastest_*` tags), also in the headline and on the `<model>-int8-only` LoggedModel.
    Failed: its run FAILED with the reason tagged, and nothing compares with it.
    """
    import statistics

    import mlflow

    client = MlflowClient(tracking_uri=store)
    parent, children = family(store, parent_id)
    metrics, verdict = parent.data.metrics, parent.data.tags["sparsify.int8_only"]
    reference = children["int8_only"]
    main = parent.data.params.get("config.eval_metric") or _main_metric_name(metrics)
    if verdict != "ok":
        assert verdict.startswith("failed: ") and reference.info.status == "FAILED", (verdict, reference.info.status)
        assert verdict.removeprefix("failed: ")[:200] in reference.data.tags["sparsify.failure_reason"]
        assert not [k for k in metrics if "vs_int8_only" in k], sorted(metrics)
        return False
    assert reference.info.status == "FINISHED"
    drop = 100 * (metrics[f"dense.onnx.{main}"] - metrics[f"int8_only.onnx.{main}"])
    assert drop <= 5.0 and metrics["int8_only.main_drop"] == round(drop, 4)
    assert metrics["main_drop_vs_int8_only"] == round(
        100 * (metrics[f"int8_only.onnx.{main}"] - metrics[f"sparse.onnx.{main}"]), 4)
    assert metrics["int8_only.sparsity.exported"] < 0.2, "post-training: no pruning"

    def rounds(run_id: str, key: str) -> list[float]:
        history = sorted(client.get_metric_history(run_id, f"{key}.round_latency_ms"), key=lambda m: m.step)
        return [m.value for m in history]

    gains = {k: v for k, v in metrics.items() if k.startswith("speedup_vs_int8_only.") and not k.endswith((".min", ".max"))}
    assert gains, sorted(metrics)
    for name, value in gains.items():
        bs = name.rsplit(".", 1)[1]
        ref_key = f"{parent.data.tags[f'sparsify.fastest_int8_only.{bs}']}.{bs}"
        sparse_key = f"{parent.data.tags[f'sparsify.fastest_sparse.{bs}']}.{bs}"
        ratios = [r / s for r, s in zip(rounds(reference.info.run_id, ref_key),
                                        rounds(children["sparse"].info.run_id, sparse_key))]
        assert abs(value - statistics.median(ratios)) <= 1e-6 * value, (name, value, ratios)
        assert metrics[f"speedup_vs_int8_only_{bs}"] == value  # the headline
    registered = parent.data.tags.get("sparsify.registered_model")
    if registered:  # what promote --min-speedup-vs-int8 reads
        tags = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(
            registered, parent.data.tags["sparsify.registered_version"]).tags
        assert tags["speedup_vs_int8_only"] == f"{metrics['speedup_vs_int8_only.bs1']:.2f}"
    mlflow.set_tracking_uri(store)
    models = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id],
                                                             output_format="list")}
    logged = models[f"{Path(parent.data.params['config.model']).stem}-int8-only"]
    linked = {m.key: m.value for m in logged.metrics if m.run_id == reference.info.run_id}
    assert linked["metric"] == metrics[f"int8_only.onnx.{main}"] and linked["int8"] == 1.0
    return True
