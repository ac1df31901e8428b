"""End to end on a synthetic YOLO dataset: cv-detection through the CLI, cv-segmentation through
`mlflow run`, asserting what MLflow holds (metrics of both models in PyTorch and ONNX, per-class
tables, prediction figures, the registered sparse ONNX model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import REPO
from helpers.mlflow_checks import assert_comparison_follows_its_definitions, family, registered_versions, run_project
from sparsify_mlflow.cli import main
from sparsify_mlflow.data.synthetic_yolo import make_yolo_dataset

pytestmark = pytest.mark.e2e

# batch size 4: 12 training images make 3 steps per epoch, so the QAT phase (the last 2/3 epoch) trains
TINY = {"optim_level": "0.5", "epochs": "2", "batch_size": "4", "image_size": "32",
        "benchmark_batch_size": "4", "benchmark_iterations": "3", "benchmark_rounds": "3",
        "int8_reference": "false", "pretrained": "false"}


def _cli_args(options: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        if key == "pretrained":
            args.append("--no-pretrained")
        else:
            args += [f"--{key.replace('_', '-')}", value]
    return args


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolo_dataset(tmp_path_factory.mktemp("yolo") / "shapes", images=16, size=32)


def assert_experiment(store: str, summary: dict, main: str, others: tuple[str, ...], table: str) -> None:
    parent, children = family(store, summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and set(children) == {"dense", "sparse"}
    metrics = parent.data.metrics
    for role in ("dense", "sparse"):
        for name in (main, *others):
            assert 0.0 <= metrics[f"{role}.{name}"] <= 1.0, (role, name)
            assert 0.0 <= metrics[f"{role}.onnx.{name}"] <= 1.0, (role, name)
        assert metrics[f"{role}.deepsparse.bs1.fraction_of_supported_ops"] == 1.0, role
    assert "speedup.deepsparse.bs1" in metrics and "main_drop" in metrics
    assert abs(metrics["sparse.sparsity.pruned_layers"] - 0.7) <= 0.01
    assert parent.data.params["recipe.quant_ignore"]  # the final prediction convs stay FP32
    client = MlflowClient(tracking_uri=store)
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/predictions.png" in figures and "figures/sparsity_per_layer.png" in figures
    sparse = children["sparse"].info.run_id
    rows = json.loads(Path(client.download_artifacts(sparse, f"{table}.json")).read_text())  # {columns, data}
    assert rows["columns"][0] == "class" and len(rows["data"]) == len(json.loads(summary_labels(summary)))
    recipe = Path(client.download_artifacts(parent.info.run_id, "recipe.yaml")).read_text()
    assert "final prediction conv" in recipe  # the recipe says which layers stay dense, and why
    versions = registered_versions(store)
    assert len(versions) == 1
    registry = MlflowClient(tracking_uri=store, registry_uri=store)
    assert registry.get_model_version(versions[0].name, versions[0].version).tags["main_metric"] == main


def registered_pyfunc(store: str, shapes: Path):
    """The registered version as a user loads it, and a validation image of the dataset upscaled to 64 x 48
    (a size the model was not trained at: answers must come back in the pixels of the image as sent)."""
    import mlflow.pyfunc
    from PIL import Image

    (version,) = registered_versions(store)
    # the version's files, not models:/ (that needs a global registry URI, which later `mlflow run`s inherit)
    registry = MlflowClient(tracking_uri=store, registry_uri=store)
    model = mlflow.pyfunc.load_model(registry.get_model_version_download_uri(version.name, version.version))
    image_file = sorted((shapes / "images" / "val").iterdir())[0]
    with Image.open(image_file) as image:
        return model, image.convert("RGB").resize((64, 48))


def engine_outputs(summary: dict, image) -> list:
    """The deployed ONNX file on ONNX Runtime, fed by validation's own preprocessing (common.to_tensor)."""
    import onnxruntime as ort

    from sparsify_mlflow.usecases.vision_dense.common import to_tensor

    session = ort.InferenceSession(str(Path(summary["artifacts"]["deployment_dir"]) / "model.onnx"))
    return session.run(None, {"input": to_tensor(image, int(TINY["image_size"]))[None].numpy()})


def assert_serves_raw_boxes(store: str, summary: dict, shapes: Path) -> None:
    """Boxes from an image file, as validation decodes them, scaled to the image as sent; labels by name."""
    import io

    import numpy as np

    from sparsify_mlflow.usecases.vision_dense.postprocess import SERVING_MIN_SCORE, decode_centernet

    model, image = registered_pyfunc(store, shapes)
    png = io.BytesIO()
    image.save(png, format="PNG")
    answer = model.predict({"image": [png.getvalue()]}, params={"min_score": 0.01})
    assert list(answer.columns) == ["image", "label", "score", "label_id", "x1", "y1", "x2", "y2"] and len(answer)
    (expected,) = decode_centernet(*engine_outputs(summary, image), int(TINY["image_size"]), 0.01)
    np.testing.assert_allclose(answer[["x1", "y1", "x2", "y2"]].to_numpy(),
                               expected["boxes"] * np.array([2, 1.5, 2, 1.5]), atol=1e-3)
    assert answer["label"].tolist() == [["square", "disc", "triangle"][k] for k in expected["labels"]]
    by_default = model.predict({"image": [np.asarray(image)]})  # an array this time; boxes above min_score only
    assert (answer["score"] > SERVING_MIN_SCORE).sum() == len(by_default)


def assert_serves_raw_masks(store: str, summary: dict, shapes: Path) -> None:
    """A mask PNG at the image's size, the labels present by name with their pixel shares."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from sparsify_mlflow.usecases.vision_dense.postprocess import upsample_argmax

    model, image = registered_pyfunc(store, shapes)
    (row,) = model.predict({"image": [np.asarray(image)]}).to_dict("records")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["mask"]))))
    assert mask.shape == (48, 64)
    assert np.array_equal(mask, upsample_argmax(engine_outputs(summary, image)[0], (48, 64))[0])
    names = ["background", "square", "disc", "triangle"]
    ids, counts = np.unique(mask, return_counts=True)
    assert sorted(row["labels"]) == sorted(names[k] for k in ids) and abs(sum(row["fractions"]) - 1) < 1e-3


def summary_labels(summary: dict) -> str:
    """The label names the run wrote into deployment/config.json, as JSON."""
    config = json.loads((Path(summary["artifacts"]["deployment_dir"]) / "config.json").read_text())
    return json.dumps(config["labels"])


def test_detection_through_the_cli(shapes: Path, store: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    code = main(["training-aware", "--use-case", "object_detection", "--data", str(shapes), "--tracking-uri", store,
                 "--working-dir", str(tmp_path), "--summary-json", str(summary_path), *_cli_args(TINY)])
    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["use_case"] == "cv-detection" and summary["main_metric"] == "map50"
    assert_experiment(store, summary, "map50", ("map50_95",), "per_class_ap")
    # mAP differs between dense and sparse here, so a flipped main_drop or speedup cannot pass unseen
    assert_comparison_follows_its_definitions(store, summary["parent_run_id"])
    config = json.loads((Path(summary["artifacts"]["deployment_dir"]) / "config.json").read_text())
    assert config["labels"] == ["square", "disc", "triangle"] and "heatmap" in config["outputs"]
    assert_serves_raw_boxes(store, summary, shapes)


def test_segmentation_through_mlflow_run(shapes: Path, store: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    params = {"use_case": "image_segmentation", "data": str(shapes / "data.yaml"), "working_dir": str(tmp_path),
              "summary_json": str(summary_path), "registered_model_name": "shapes-seg", **TINY}
    # 40 min, not the helper's 20: on a 2-core machine shared by several suites this run took over 20
    proc = run_project(REPO, params, store, tmp_path, "segmentation-e2e", timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["use_case"] == "cv-segmentation" and summary["registered_model"]["name"] == "shapes-seg"
    assert_experiment(store, summary, "miou", ("pixel_accuracy",), "per_class_iou")
    parent, _ = family(store, summary["parent_run_id"])
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main"
    assert_serves_raw_masks(store, summary, shapes)
