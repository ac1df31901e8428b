"""End to end on a tiny ImageFolder: through the CLI and through `mlflow run`, asserting MLflow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from helpers import REPO
from helpers.mlflow_checks import (
    assert_comparison_follows_its_definitions,
    assert_exported_sparsity,
    assert_int8_only_reference,
    family,
    registered_versions,
    run_project,
)
from sparsify_mlflow.cli import main

pytestmark = pytest.mark.e2e

WITH_REFERENCE = ["--model", "resnet18", "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
                  "--benchmark-batch-size", "4", "--benchmark-iterations", "3", "--benchmark-rounds", "3"]
TINY = [*WITH_REFERENCE, "--no-int8-reference"]  # the INT8-only reference costs ~20 s; one test keeps it


def assert_complete_experiment(store: str, summary: dict, level: float, target: float,
                               roles: frozenset[str] | set[str] = frozenset({"dense", "sparse"})) -> None:
    parent, children = family(store, summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert set(children) == roles
    assert all(c.info.status == "FINISHED" for c in children.values())
    params, metrics = parent.data.params, parent.data.metrics
    assert float(params["config.optim_level"]) == level
    assert float(params["recipe.target_sparsity"]) == target
    for name in ("dense.accuracy", "sparse.accuracy", "sparse.onnx.accuracy", "main_drop",
                 "sparse.deepsparse.bs1.latency_ms_median", "sparse.deepsparse.bs4.items_per_second",
                 "dense.onnxruntime.bs1.latency_ms_median", "speedup.deepsparse.bs1",
                 "sparse.size.onnx_gzip_mb", "sparse.deepsparse.bs1.fraction_of_supported_ops"):
        assert name in metrics, name
    # the QDQ twin, on OpenVINO: its accuracy, and both models' times beside DeepSparse's
    assert {"sparse.onnx_qdq.accuracy", "sparse.openvino.bs1.latency_ms_median", "dense.openvino.bs4.items_per_second",
            "speedup.openvino.bs1", "speedup_vs_best_dense.bs1", "speedup_vs_best_dense.bs4"} <= set(metrics)
    assert metrics["sparse.deepsparse.bs1.fraction_of_supported_ops"] == 1.0
    assert abs(metrics["sparse.onnx_qdq.accuracy"] - metrics["sparse.onnx.accuracy"]) <= 1 / 6 + 1e-9, \
        "the QDQ twin computes what the converted file computes: at most one of the 6 images differs"
    assert children["sparse"].data.tags["sparsify.onnx_qdq_engine"] == "openvino"
    assert "precision" in parent.data.tags["sparsify.openvino"]
    assert_exported_sparsity(metrics["sparse.sparsity.exported"], target)
    assert abs(metrics["sparse.sparsity.pruned_layers"] - target) <= 0.01
    client = MlflowClient(tracking_uri=store)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"recipe.yaml", "figures", "experiment"} <= artifacts
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"figures/sparsity_per_layer.png", "figures/metric_per_epoch.png", "figures/latency.png",
                       "figures/layer_times.png"}  # DeepSparse's per-layer times, dense beside sparse
    layers = {a.path for a in client.list_artifacts(parent.info.run_id, "benchmark")}
    assert "benchmark/layers_bs1.json" in layers
    deployment = client.list_artifacts(parent.info.run_id, "experiment/deployment")
    assert {Path(a.path).name for a in deployment} == {"model.onnx", "model.qdq.onnx", "recipe.yaml", "config.json",
                                                       "README.md"}
    readme = Path(client.download_artifacts(parent.info.run_id, "experiment/deployment/README.md")).read_text()
    assert "| OpenVINO | `model.qdq.onnx` |" in readme and "| DeepSparse | `model.onnx` |" in readme
    assert "- fastest sparse deployment over the fastest dense one, batch 1: " in readme
    sparse = children["sparse"]
    history = client.get_metric_history(sparse.info.run_id, "sparsity.overall")
    assert [m.step for m in history] == [1, 2]
    assert "val.accuracy" in sparse.data.metrics and "train.loss" in sparse.data.metrics
    assert_comparison_follows_its_definitions(store, summary["parent_run_id"])
    fingerprint = params["data.fingerprint"][:16]  # the data each run saw, as MLflow datasets
    for run in (parent, *children.values()):
        contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset.digest
                    for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
        assert contexts == {"training": fingerprint, "validation": fingerprint}, run.info.run_name


def assert_serves_raw_images(store: str, image_folder: Path, tmp_path: Path) -> None:
    """The registered model takes image files as users have them (base64 text, paths, arrays), preprocesses
    them as validation did (the same pixels as torchvision's transform) and answers with the class names,
    in Python and over HTTP from `mlflow models serve`."""
    import base64

    import mlflow.pyfunc
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from helpers.servers import invoke, served_model

    files = sorted(image_folder.rglob("*.png"))[:3]
    classes = {f.parent.name for f in image_folder.rglob("*.png")}  # <split>/<class>/<image>.png
    model = mlflow.pyfunc.load_model("models:/tiny@candidate")
    encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
    answer = model.predict({"image": encoded})
    assert list(answer.columns) == ["label", "score", "label_id"] and set(answer["label"]) <= set(classes)
    assert ((answer["score"] > 0) & (answer["score"] <= 1)).all()
    assert model.predict({"image": [str(f) for f in files]})["label"].tolist() == answer["label"].tolist()
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    assert model.predict({"image": arrays})["label"].tolist() == answer["label"].tolist()
    pre = model.unwrap_python_model()
    torchvision = T.Compose([T.Resize(pre.resize), T.CenterCrop(pre.size), T.ToTensor(),
                             T.Normalize(pre.mean.ravel().tolist(), pre.std.ravel().tolist())])
    with Image.open(files[0]) as image:
        assert np.allclose(pre.preprocess(image.convert("RGB")), torchvision(image.convert("RGB")).numpy(),
                           atol=1e-5)
    with served_model("models:/tiny@candidate", store, tmp_path) as url:
        served = invoke(url, {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}})
    assert [row["label"] for row in served["predictions"]] == answer["label"].tolist()
    # on OpenVINO, the version's QDQ twin, chosen by MLflow's override of the logged model config
    on_openvino = mlflow.pyfunc.load_model("models:/tiny@candidate", model_config={"engine": "openvino"})
    assert on_openvino.unwrap_python_model().engine.name == "openvino"
    before = set(tmp_path.glob("serve-*.log"))
    on_openvino_env = {"MLFLOW_PYFUNC_INFERENCE_CONFIG": '{"engine": "openvino"}'}
    with served_model("models:/tiny@candidate", store, tmp_path, env=on_openvino_env) as url:
        served = invoke(url, {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}})
    (log,) = set(tmp_path.glob("serve-*.log")) - before
    assert "serving on openvino: model.qdq.onnx" in log.read_text()
    assert [row["label"] for row in served["predictions"]] == on_openvino.predict({"image": encoded})["label"].tolist()


def run_cli(*args: str) -> None:
    assert main(list(args)) == 0


def test_cli_end_to_end_then_a_second_level_reuses_the_baseline(image_folder: Path, store: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    run_cli("training-aware", "--use-case", "image_classification", "--data", str(image_folder),
            "--optim-level", "0.5", "--tracking-uri", store, "--working-dir", str(tmp_path),
            "--summary-json", str(summary_path), "--registered-model-name", "tiny", *WITH_REFERENCE)
    summary = json.loads(summary_path.read_text())
    assert_complete_experiment(store, summary, 0.5, 0.7, roles={"dense", "sparse", "int8_only"})
    assert assert_int8_only_reference(store, summary["parent_run_id"]), summary["int8_only"]["failure"]
    assert summary["int8_only"]["metrics"]["sparsity.exported"] < 0.2
    assert summary["registered_model"] == {"name": "tiny", "version": "1", "alias": "candidate",
                                           "model_uri": "models:/tiny@candidate"}
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("tiny", "candidate")
    assert version.tags["optim_level"] == "0.5" and version.tags["use_case"] == "cv-classification"
    assert {"sparsity", "accuracy", "main_drop", "speedup", "recipe_sha256", "data_fingerprint"} <= set(version.tags)
    assert "optim level 0.5" in version.description and "% sparse + INT8" in version.description

    assert_serves_raw_images(store, image_folder, tmp_path)
    registered = Path(mlflow.artifacts.download_artifacts("models:/tiny@candidate", dst_path=str(tmp_path / "reg")))
    assert (registered / "artifacts" / "model.qdq.onnx").is_file(), "the version carries the QDQ twin"

    second_path = tmp_path / "second.json"  # by default each layer dense or past the break-even sparsity
    run_cli("training-aware", "--data", str(image_folder), "--optim-level", "0.3", "--tracking-uri", store,
            "--working-dir", str(tmp_path), "--summary-json", str(second_path), "--registered-model-name", "tiny",
            *TINY)
    second = json.loads(second_path.read_text())
    parent, children = family(store, second["parent_run_id"])
    assert children["dense"].data.tags["sparsify.reused_from_run"] == summary["dense_run_id"]
    first_dense = family(store, summary["parent_run_id"])[1]["dense"]
    assert children["dense"].data.params["baseline_key"] == first_dense.data.params["baseline_key"]
    assert_complete_experiment(store, second, 0.3, 0.6)  # the same overall sparsity
    assert parent.data.params["recipe.layer_allocation"] == "by_compute"
    per_layer = json.loads(Path(client.download_artifacts(children["sparse"].info.run_id, "sparsity_per_layer.json",
                                                          str(tmp_path / "layers"))).read_text())
    column = {name: i for i, name in enumerate(per_layer["columns"])}
    sparsities = [row[column["sparsity"]] for row in per_layer["data"] if row[column["pruned"]]]
    assert any(s < 0.05 for s in sparsities) and all(s < 0.05 or s >= 0.88 for s in sparsities), sparsities
    assert second["registered_model"]["version"] == "2"
    assert str(client.get_model_version_by_alias("tiny", "candidate").version) == "2"


def test_mlflow_run_entry_point(image_folder: Path, store: str, tmp_path: Path) -> None:
    """`mlflow run . --env-manager local`: the run mlflow creates becomes the parent."""
    summary_path = tmp_path / "summary.json"
    params = {"use_case": "cv-classification", "data": str(image_folder), "optim_level": "0.5",
              "model": "resnet18", "pretrained": "false", "epochs": "2", "batch_size": "8",
              "image_size": "32", "benchmark_batch_size": "4", "benchmark_iterations": "3", "benchmark_rounds": "3",
              "int8_reference": "false",
              "registered_model_name": "via-mlflow-run", "working_dir": str(tmp_path),
              "summary_json": str(summary_path)}
    proc = run_project(REPO, params, store, tmp_path, "mlflow-run-e2e")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert_complete_experiment(store, summary, 0.5, 0.7)
    parent, _ = family(store, summary["parent_run_id"])
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main"
    assert [str(v.version) for v in registered_versions(store)] == ["1"]


def test_mlflow_run_with_bad_input_is_marked_failed(store: str, tmp_path: Path) -> None:
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local",
               "-P", f"data={tmp_path / 'absent'}", "-P", f"working_dir={tmp_path}"]
    env = os.environ | {"MLFLOW_TRACKING_URI": store,
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode != 0
    before_error = proc.stderr.split("error: data folder")[0][-2000:]
    assert "error: data folder" in proc.stderr and "Traceback (most recent call last)" not in before_error
    runs = MlflowClient(tracking_uri=store).search_runs(["0"])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "does not exist" in runs[0].data.tags["sparsify.failure_reason"]
    assert registered_versions(store) == []


def test_level_zero_registers_the_dense_baseline_itself(image_folder: Path, store: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    run_cli("training-aware", "--data", str(image_folder), "--optim-level", "0", "--tracking-uri", store,
            "--working-dir", str(tmp_path), "--summary-json", str(summary_path), *TINY)
    summary = json.loads(summary_path.read_text())
    parent, children = family(store, summary["parent_run_id"])
    assert set(children) == {"dense"}, "level 0 trains no second model"
    assert summary["sparse_run_id"] == summary["dense_run_id"]
    assert parent.data.metrics["main_drop"] == 0.0
    assert parent.data.metrics["sparse.sparsity.exported"] < 0.01
    assert "recipe.schedule.qat_start" not in parent.data.params
    assert summary["registered_model"]["alias"] == "candidate"


def test_deploy_engine_openvino_validates_and_times_the_qdq_twin(image_folder: Path, store: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    run_cli("training-aware", "--data", str(image_folder), "--optim-level", "0.5", "--deploy-engine", "openvino",
            "--tracking-uri", store, "--working-dir", str(tmp_path), "--summary-json", str(summary_path),
            "--no-register", *TINY)
    summary = json.loads(summary_path.read_text())
    parent, children = family(store, summary["parent_run_id"])
    metrics = parent.data.metrics
    assert {"speedup.openvino.bs1", "speedup.openvino.bs4", "dense.onnxruntime.bs1.latency_ms_median",
            "sparse.onnx_qdq.accuracy", "speedup_vs_best_dense.bs4"} <= set(metrics)
    assert not any("deepsparse" in k for k in metrics), "OpenVINO and the ONNX Runtime reference only"
    assert children["sparse"].data.tags["sparsify.onnx_qdq_engine"] == "openvino"
    assert parent.data.tags["sparsify.deploy_engine"] == "openvino" and "sparsify.engine_fallback" not in parent.data.tags
    assert_comparison_follows_its_definitions(store, summary["parent_run_id"])


def test_deploy_engine_openvino_where_it_is_missing_is_one_line_and_onnxruntime(
        image_folder: Path, store: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # an import of it fails, as where it is not installed
    summary_path = tmp_path / "summary.json"
    run_cli("training-aware", "--data", str(image_folder), "--optim-level", "0", "--deploy-engine", "openvino",
            "--tracking-uri", store, "--working-dir", str(tmp_path), "--summary-json", str(summary_path),
            "--no-register", *TINY)
    out = " ".join(capsys.readouterr().out.split())  # the summary wraps its lines
    assert out.count("OpenVINO") == 1, out
    assert ("note: OpenVINO unavailable (openvino is not installed (import of openvino halted; None in sys.modules); "
            "pip install openvino); validated and benchmarked with ONNX Runtime instead") in out
    parent, _ = family(store, json.loads(summary_path.read_text())["parent_run_id"])
    assert parent.data.tags["sparsify.engine_fallback"].startswith("onnxruntime (openvino is not installed")
    assert {k.split(".")[1] for k in parent.data.metrics if k.endswith(".latency_ms_median")} == {"onnxruntime"}


def test_user_recipe_replaces_the_derived_one(image_folder: Path, store: str, tmp_path: Path, capsys) -> None:
    """The record describes the file that was trained: its sparsity and INT8, no optim level."""
    assert main(["recipe", "--optim-level", "0.3", "--epochs", "2", "--num-classes", "2",
                 "--recipe-args", '{"layer_allocation": "uniform"}']) == 0  # one final_sparsity to edit
    derived = capsys.readouterr().out
    assert "final_sparsity: 0.6\n" in derived
    recipe = derived.replace("final_sparsity: 0.6", "final_sparsity: 0.4")
    (tmp_path / "mine.yaml").write_text(recipe)
    summary_path = tmp_path / "summary.json"
    run_cli("training-aware", "--data", str(image_folder), "--recipe", str(tmp_path / "mine.yaml"),
            "--tracking-uri", store, "--working-dir", str(tmp_path), "--summary-json", str(summary_path),
            "--registered-model-name", "mine", *TINY)
    summary = json.loads(summary_path.read_text())
    assert abs(summary["sparse"]["sparsity.pruned_layers"] - 0.4) < 0.01
    assert summary["optim_level"] is None and summary["recipe_source"] == "file mine.yaml"
    assert summary["target_sparsity"] == 0.4 and summary["quantized"] is True
    parent, _ = family(store, summary["parent_run_id"])
    assert parent.info.run_name.endswith("-recipe-mine")
    params = parent.data.params
    assert params["recipe.source"] == "file mine.yaml" and "recipe.optim_level" not in params
    assert params["recipe.target_sparsity"] == "0.4" and params["recipe.group0.final_sparsity"] == "0.4"
    assert params["recipe.quantize"] == "True" and params["config.optim_level"] == ""
    logged = MlflowClient(tracking_uri=store).download_artifacts(parent.info.run_id, "recipe.yaml", str(tmp_path))
    assert "final_sparsity: 0.4" in Path(logged).read_text()
    version = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version("mine", "1")
    assert version.tags["target_sparsity"] == "0.4" and version.tags["optim_level"] == ""
    assert version.tags["recipe_source"] == "file mine.yaml" and version.tags["int8"] == "true"
    assert "recipe mine.yaml" in version.description and "optim level" not in version.description
    assert "recipe mine.yaml (target sparsity 40%, INT8)" in capsys.readouterr().out
