"""Detection mAP (COCO definitions, pycocotools via torchmetrics) and segmentation IoU / pixel accuracy.

Inputs are already post-processed predictions, so PyTorch and ONNX runs go through the same code.
"""
from __future__ import annotations

from typing import Any

import torch


def detection_metrics(preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                      names: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """mAP@0.5, mAP@0.5:0.95 (COCO: 101-point interpolation, 100 detections), mAR@100, per-class AP.

    A class with no ground-truth box in validation has no AP (pycocotools reports -1): its row
    says so and it is left out of the means, as COCO does.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", class_metrics=True, backend="pycocotools")
    metric.update(preds, targets)
    result = metric.compute()
    values = {"map50": _nonneg(result["map_50"]), "map50_95": _nonneg(result["map"]),
              "map75": _nonneg(result["map_75"]), "mar100": _nonneg(result["mar_100"])}
    classes = [int(c) for c in torch.atleast_1d(result["classes"])]
    per_class = {c: float(v) for c, v in zip(classes, torch.atleast_1d(result["map_per_class"]))}
    gt_counts = torch.bincount(torch.cat([t["labels"] for t in targets]).long(), minlength=len(names)) \
        if targets else torch.zeros(len(names), dtype=torch.long)
    ap50 = _per_class_ap50(preds, targets, classes)
    table = []
    for k, name in enumerate(names):
        has_gt = int(gt_counts[k]) > 0
        table.append({"class": name, "ap50": round(ap50.get(k, 0.0), 4) if has_gt else None,
                      "ap50_95": round(max(per_class.get(k, 0.0), 0.0), 4) if has_gt else None,
                      "val_boxes": int(gt_counts[k])})
    return values, table


def _per_class_ap50(preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                    classes: list[int]) -> dict[int, float]:
    """AP at IoU 0.5 per class (torchmetrics reports per-class AP over 0.5:0.95 only)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True, backend="pycocotools")
    metric.update(preds, targets)
    result = metric.compute()
    ids = [int(c) for c in torch.atleast_1d(result["classes"])]
    return {c: max(float(v), 0.0) for c, v in zip(ids, torch.atleast_1d(result["map_per_class"]))}


def _nonneg(value: torch.Tensor) -> float:
    """pycocotools says -1 when nothing can be scored (no ground truth at all): report 0."""
    return max(float(value), 0.0)


class SegmentationScores:
    """Streaming mean IoU and pixel accuracy over predicted vs true class masks.

    IoU per class from torchmetrics' MulticlassJaccardIndex (average=None). The mean (mIoU) is over
    classes that appear in the ground truth or the predictions: a class absent from both has no
    IoU (0/0) and would otherwise count as 0.
    """

    def __init__(self, num_classes: int) -> None:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.num_classes = num_classes
        self.jaccard = MulticlassJaccardIndex(num_classes=num_classes, average="none", validate_args=False)
        self.accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.seen = torch.zeros(num_classes, dtype=torch.bool)
        self.pixels = torch.zeros(num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.long().flatten(), target.long().flatten()
        self.jaccard.update(pred, target)
        self.accuracy.update(pred, target)
        counts = torch.bincount(target, minlength=self.num_classes)
        self.pixels += counts
        self.seen |= (counts > 0) | (torch.bincount(pred, minlength=self.num_classes) > 0)

    def compute(self, names: list[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        iou = self.jaccard.compute()
        miou = float(iou[self.seen].mean()) if self.seen.any() else 0.0
        values = {"miou": miou, "pixel_accuracy": float(self.accuracy.compute())}
        if self.num_classes > 1 and self.seen[1:].any():
            values["miou_objects"] = float(iou[1:][self.seen[1:]].mean())  # without the background class
        table = [{"class": name, "iou": round(float(iou[k]), 4) if self.seen[k] else None,
                  "val_pixels": int(self.pixels[k])} for k, name in enumerate(names)]
        return values, table
