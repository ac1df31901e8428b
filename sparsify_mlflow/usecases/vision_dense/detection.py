"""cv-detection: YOLO-format boxes (or polygons, read as their boxes), a CenterNet-style head on a
QAT-ready ResNet-18 trunk, COCO mAP@0.5 and mAP@0.5:0.95 via torchmetrics + pycocotools.

The ONNX file holds the network up to its raw maps (`heatmap` logits, `boxes`); decoding and
class-wise NMS run after the engine in `postprocess.decode_centernet`, for PyTorch, ONNX and the
registered pyfunc alike.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.usecases.base import DataBundle, Metrics, Predictor
from sparsify_mlflow.usecases.vision_dense import centernet, postprocess
from sparsify_mlflow.usecases.vision_dense.common import FIGURE_IMAGES, DenseUseCase, YoloImages
from sparsify_mlflow.usecases.vision_dense.metrics import detection_metrics
from sparsify_mlflow.usecases.vision_dense.nets import DETECTION_OUTPUTS, STRIDE


class DetectionImages(YoloImages):
    """(image, heatmap, box map, centre mask): fixed-size tensors, so the default collate works."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        image, objects, _ = self.item(i)
        heat, boxes, mask = centernet.encode([(c, b) for c, b, _ in objects], self.num_classes, self.size // STRIDE)
        return image, heat, boxes, mask

    def target(self, i: int) -> dict[str, torch.Tensor]:
        """Ground truth of validation image `i` in input pixels (xyxy), as torchmetrics takes it."""
        objects = self.samples[i].objects
        boxes = torch.tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4) * self.size
        return {"boxes": boxes, "labels": torch.tensor([o.cls for o in objects], dtype=torch.long)}


class Detection(DenseUseCase):
    kind = "detection"
    main_metric = "map50"
    eval_metrics = {"map50": "map50", "map": "map50_95", "map50_95": "map50_95"}
    dataset_class = DetectionImages
    output_convs = DETECTION_OUTPUTS

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, heat, boxes, mask = (t.to(device) for t in batch)
        heat_logits, box_pred = model(images)
        return centernet.loss(heat_logits, box_pred, heat, boxes, mask)

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], list[dict]]]:
        val: DetectionImages = data.val
        for start in range(0, len(val), batch_size):
            idx = range(start, min(start + batch_size, len(val)))
            yield [torch.stack([val[i][0] for i in idx]).numpy()], [val.target(i) for i in idx]

    def predict_boxes(self, predict: Predictor, images: np.ndarray, size: int) -> list[dict[str, torch.Tensor]]:
        heat_logits, box_map = predict([images])[:2]
        return centernet.decode(heat_logits, box_map, size)

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        preds, targets = [], []
        for inputs, batch_targets in self.eval_batches(data, batch_size):
            preds += self.predict_boxes(predict, inputs[0], data.val.size)
            targets += batch_targets
        values, table = detection_metrics(preds, targets, data.label_names)
        return Metrics(self.main_metric, values, {"per_class_ap": table})

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        return ["input"], ["heatmap", "boxes"]

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        return {
            "task": "object-detection",
            "labels": data.label_names,
            "inputs": {"input": "float32 [batch, 3, S, S], RGB, resized and normalised as below"},
            "outputs": {
                "heatmap": f"float32 [batch, num_labels, S/{STRIDE}, S/{STRIDE}]: class logits per cell (sigmoid -> "
                           "score); object centres are 3x3 local maxima",
                "boxes": f"float32 [batch, 4, S/{STRIDE}, S/{STRIDE}]: per cell centre offset x, y (cells) and "
                         "log width, log height (cells)",
            },
            "postprocessing": {"decoder": "sparsify_mlflow.usecases.vision_dense.postprocess.decode_centernet",
                               "stride": STRIDE, "score_threshold": postprocess.SCORE_THRESHOLD,
                               "nms_iou": postprocess.NMS_IOU, "max_detections": postprocess.MAX_DETECTIONS},
            "preprocessing": data.preprocessing,
        }

    def output_schema(self) -> Any:
        from mlflow.types import ColSpec, Schema

        return Schema([ColSpec("long", "image"), ColSpec("string", "label"), ColSpec("double", "score"),
                       ColSpec("long", "label_id"), *(ColSpec("double", k) for k in ("x1", "y1", "x2", "y2"))])

    def serving_params(self) -> Any:
        from mlflow.types import ParamSchema, ParamSpec

        return ParamSchema([ParamSpec("min_score", "double", postprocess.SERVING_MIN_SCORE)])

    def prediction_figures(self, predictors: dict[str, Predictor], data: DataBundle) -> dict[str, Any]:
        """Validation images with ground truth and each model's boxes (score >= 0.3) drawn."""
        from sparsify_mlflow.usecases.vision_dense.figures import detection_figure

        val: DetectionImages = data.val
        idx = _with_objects(val)[:FIGURE_IMAGES]
        images = torch.stack([val[i][0] for i in idx]).numpy()
        columns = {"ground truth": [val.target(i) for i in idx]}
        columns |= {role: self.predict_boxes(p, images, val.size) for role, p in predictors.items()}
        return {"figures/predictions.png": detection_figure(images, columns, data.label_names)}


def _with_objects(val: YoloImages) -> list[int]:
    """Validation images with objects first (a figure of empty backgrounds shows nothing)."""
    return sorted(range(len(val)), key=lambda i: (not val.samples[i].objects, i))

