"""The detection / segmentation networks: raw map shapes, the pruning scope, checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsify_mlflow.errors import ModelError
from sparsify_mlflow.usecases import resolve
from sparsify_mlflow.usecases.vision_dense.nets import build_dense_model


def test_raw_maps_at_stride_8_and_the_scope_keeps_stem_and_prediction_convs_dense() -> None:
    model, facts = build_dense_model("detection", "resnet18", 3, pretrained=False)
    assert facts["arch"] == "resnet18-centernet-lite" and facts["qat_ready_variant"]
    heat, boxes = model.eval()(torch.zeros(2, 3, 64, 64))
    assert heat.shape == (2, 3, 8, 8) and boxes.shape == (2, 4, 8, 8)
    scope = resolve("yolo").pruning_scope(model)
    assert set(scope.keep_dense) == {"trunk.conv1.weight", "heatmap_head.2.weight", "box_head.2.weight"}
    assert scope.quant_ignore == ("heatmap_head.2", "box_head.2")
    assert "heatmap_head.0.weight" in scope.prune and "trunk.layer3.1.conv2.weight" in scope.prune
    seg, _ = build_dense_model("segmentation", "resnet18", 4, pretrained=False)
    assert seg.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 8, 8)
    assert resolve("segmentation").pruning_scope(seg).quant_ignore == ("classifier.2",)


def test_checkpoint_round_trip_and_mismatch(tmp_path: Path) -> None:
    model, _ = build_dense_model("segmentation", "resnet18", 3, pretrained=False)
    torch.save(model.state_dict(), tmp_path / "seg.pt")
    loaded, facts = build_dense_model("segmentation", str(tmp_path / "seg.pt"), 3, pretrained=False)
    assert facts["checkpoint"] == str(tmp_path / "seg.pt")
    assert torch.equal(loaded.classifier[2].weight, model.classifier[2].weight)
    with pytest.raises(ModelError, match="does not match the resnet18-fcn-lite network with 5 outputs"):
        build_dense_model("segmentation", str(tmp_path / "seg.pt"), 5, pretrained=False)
    with pytest.raises(ModelError, match="unknown model 'yolov8n' for detection"):
        build_dense_model("detection", "yolov8n", 3, pretrained=False)


@pytest.mark.parametrize("use_case, columns", [("cv-detection", 3), ("cv-segmentation", 4)])
def test_prediction_figures_draw_ground_truth_dense_and_sparse(tmp_path: Path, use_case: str, columns: int) -> None:
    from sparsify_mlflow.config import ExperimentConfig
    from sparsify_mlflow.data.synthetic_yolo import make_yolo_dataset
    from sparsify_mlflow.training import torch_predictor
    from sparsify_mlflow.usecases.vision import VisionOptions

    root = make_yolo_dataset(tmp_path / "ds", images=12, size=32)
    case = resolve(use_case)
    data = case.load_data(ExperimentConfig(use_case=use_case, data=str(root), model="resnet18",
                                           use_case_options=VisionOptions(image_size=32)))
    model, _ = case.create_model(ExperimentConfig(use_case=use_case, model="resnet18"), len(data.label_names), False)
    predict = torch_predictor(model, torch.device("cpu"))
    figures = case.prediction_figures({"dense": predict, "sparse": predict}, data)
    fig = figures["figures/predictions.png"]
    rows = min(4, len(data.val))
    assert len(fig.axes) == rows * columns  # ground truth, dense, sparse (+ the image for segmentation)
    assert [ax.get_title() for ax in fig.axes[:columns]][-2:] == ["dense", "sparse"]
    metrics = case.evaluate(predict, data, batch_size=2)
    assert 0.0 <= metrics.main <= 1.0 and metrics.tables
