"""cv-segmentation: semantic segmentation from YOLO polygon labels, an FCN-style head on the
QAT-ready ResNet-18 trunk, mean IoU and pixel accuracy (torchmetrics).

Semantic, not instance: polygons are rasterised (PIL ImageDraw, in file order: later polygons
paint over earlier ones) into one class mask per image; class 0 is the background and YOLO class
k becomes mask value k + 1. The ONNX file outputs stride-8 logits; upsampling to the input size
(bilinear) and argmax run after the engine, in `postprocess.upsample_argmax`, for PyTorch, ONNX and
the registered pyfunc alike.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sparsify_mlflow.data.yolo import YoloSplits
from sparsify_mlflow.usecases.base import DataBundle, Metrics, Predictor
from sparsify_mlflow.usecases.vision_dense import postprocess
from sparsify_mlflow.usecases.vision_dense.common import FIGURE_IMAGES, DenseUseCase, YoloImages
from sparsify_mlflow.usecases.vision_dense.metrics import SegmentationScores
from sparsify_mlflow.usecases.vision_dense.nets import SEGMENTATION_OUTPUTS, STRIDE

BACKGROUND = "background"


def rasterise(objects: list, size: int) -> torch.Tensor:
    """[size, size] long mask: 0 background, class k -> k + 1, polygons painted in file order."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for cls, _, polygon in objects:
        draw.polygon([(x * size, y * size) for x, y in polygon], fill=cls + 1)
    return torch.from_numpy(np.asarray(mask, dtype=np.int64).copy())


def upsample_argmax(logits: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Stride-8 logits [B, C, h, w] -> class masks [B, size, size] (`postprocess.upsample_argmax`, bilinear
    like the training loss)."""
    return torch.from_numpy(postprocess.upsample_argmax(np.asarray(logits, dtype=np.float32), size))


class SegmentationImages(YoloImages):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, objects, _ = self.item(i)
        return image, rasterise(objects, self.size)


class Segmentation(DenseUseCase):
    kind = "segmentation"
    main_metric = "miou"
    eval_metrics = {"miou": "miou", "pixel_accuracy": "pixel_accuracy"}
    dataset_class = SegmentationImages
    output_convs = SEGMENTATION_OUTPUTS

    def label_names(self, splits: YoloSplits) -> list[str]:
        return [BACKGROUND, *splits.names]

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, masks = batch[0].to(device), batch[1].to(device)
        logits = F.interpolate(model(images), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, masks)

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], torch.Tensor]]:
        loader = torch.utils.data.DataLoader(data.val, batch_size=batch_size, shuffle=False)
        for images, masks in loader:
            yield [images.numpy()], masks

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        scores = SegmentationScores(len(data.label_names))
        for inputs, masks in self.eval_batches(data, batch_size):
            scores.update(upsample_argmax(predict(inputs)[0], masks.shape[-1]), masks)
        values, table = scores.compute(data.label_names)
        return Metrics(self.main_metric, values, {"per_class_iou": table})

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        return ["input"], ["logits"]

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        return {
            "task": "semantic-segmentation",
            "labels": data.label_names,
            "inputs": {"input": "float32 [batch, 3, S, S], RGB, resized and normalised as below"},
            "outputs": {"logits": f"float32 [batch, num_labels, S/{STRIDE}, S/{STRIDE}]: class logits per cell; "
                                  "label 0 is the background"},
            "postprocessing": {"function": "sparsify_mlflow.usecases.vision_dense.postprocess.upsample_argmax",
                               "upsample": "bilinear to S x S (align_corners=False), then argmax over labels"},
            "preprocessing": data.preprocessing,
        }

    def output_schema(self) -> Any:
        from mlflow.types import ColSpec, Schema
        from mlflow.types.schema import Array

        return Schema([ColSpec("string", "mask"), ColSpec(Array("string"), "labels"),
                       ColSpec(Array("double"), "fractions")])

    def prediction_figures(self, predictors: dict[str, Predictor], data: DataBundle) -> dict[str, Any]:
        """Validation images with the true mask and each model's predicted mask."""
        from sparsify_mlflow.usecases.vision_dense.figures import segmentation_figure

        val: YoloImages = data.val
        idx = sorted(range(len(val)), key=lambda i: (not val.samples[i].objects, i))[:FIGURE_IMAGES]
        pairs = [val[i] for i in idx]
        images = torch.stack([p[0] for p in pairs]).numpy()
        columns = {"ground truth": torch.stack([p[1] for p in pairs])}
        columns |= {role: upsample_argmax(p([images])[0], val.size) for role, p in predictors.items()}
        return {"figures/predictions.png": segmentation_figure(images, columns, data.label_names)}

