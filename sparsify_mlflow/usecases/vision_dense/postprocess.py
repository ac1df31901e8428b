"""What runs after the engine for cv-detection and cv-segmentation, in numpy only.

One path for every caller: validation of the PyTorch model and of the ONNX files, the prediction
figures, and the registered pyfunc (dense_pyfunc.py), which ships this file as an MLflow code path
and so loads without torch or sparsify_mlflow. That is why NMS and bilinear upsampling are written
here by hand rather than taken from torchvision; tests check both against torchvision/torch.
This file must import nothing but numpy.
"""
from __future__ import annotations

import numpy as np

MAX_DETECTIONS = 100
SCORE_THRESHOLD = 0.01   # low on purpose: mAP integrates over the whole precision/recall curve
NMS_IOU = 0.5
MAX_LOG_SIZE = 6.0       # exp(6) cells: larger than any box on the grid, guards exp overflow
SERVING_MIN_SCORE = 0.3  # the boxes the registered model answers with by default: what a person wants drawn


def decode_centernet(heat_logits: np.ndarray, box_map: np.ndarray, image_size: int,
                     score_threshold: float = SCORE_THRESHOLD) -> list[dict[str, np.ndarray]]:
    """CenterNet's raw maps of a batch -> per image {boxes [N,4] xyxy in input pixels, scores, labels}.

    Peaks of the sigmoid heatmap (3x3 local maxima), the top MAX_DETECTIONS scores above
    `score_threshold`, a box per peak from the box map (centre offset, log size in cells), then
    class-wise NMS and at most MAX_DETECTIONS boxes, best first.
    """
    heat = 1.0 / (1.0 + np.exp(-np.asarray(heat_logits, dtype=np.float32)))
    box = np.asarray(box_map, dtype=np.float32)
    n, c, g, _ = heat.shape
    padded = np.pad(heat, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3)).max(axis=(-2, -1))
    peaks = np.where(local_max == heat, heat, 0.0).reshape(n, -1)
    top = np.argsort(-peaks, axis=1, kind="stable")[:, :min(MAX_DETECTIONS, c * g * g)]
    cell = image_size / g
    out = []
    for b in range(n):
        idx = top[b][peaks[b, top[b]] > score_threshold]
        score = peaks[b, idx]
        cls, pos = idx // (g * g), idx % (g * g)
        iy, ix = (pos // g).astype(np.float32), (pos % g).astype(np.float32)
        offx, offy, lw, lh = (box[b, k].reshape(-1)[pos] for k in range(4))
        cx, cy = (ix + offx) * cell, (iy + offy) * cell
        w = np.exp(np.minimum(lw, MAX_LOG_SIZE)) * cell
        h = np.exp(np.minimum(lh, MAX_LOG_SIZE)) * cell
        xyxy = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), 0, image_size)
        kept = batched_nms(xyxy, score, cls, NMS_IOU)[:MAX_DETECTIONS]
        out.append({"boxes": xyxy[kept].astype(np.float32), "scores": score[kept].astype(np.float32),
                    "labels": cls[kept].astype(np.int64)})
    return out


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS within each class, by descending score
    (torchvision.ops.batched_nms's contract: a box goes when its IoU with a kept one is > threshold)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    shifted = boxes + (classes.astype(np.float32) * (boxes.max() + 1))[:, None]  # classes never overlap
    areas = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        lo = np.maximum(shifted[best, :2], shifted[rest, :2])
        hi = np.minimum(shifted[best, 2:], shifted[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: 0/0, not an overlap
            iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def upsample_argmax(logits: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Class logits [B, C, h, w] -> class masks [B, H, W] (int64): bilinear upsampling as
    torch.nn.functional.interpolate(align_corners=False) does it (the training loss's), then argmax."""
    height, width = (size, size) if isinstance(size, int) else size
    x = _bilinear_axis(np.asarray(logits, dtype=np.float32), height, axis=2)
    return _bilinear_axis(x, width, axis=3).argmax(axis=1)


def _bilinear_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis with half-pixel centres, clamped at the edges."""
    n = x.shape[axis]
    src = np.maximum((np.arange(out, dtype=np.float32) + 0.5) * (n / out) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    weight = (src - i0).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    return np.take(x, i0, axis=axis) * (1 - weight) + np.take(x, i1, axis=axis) * weight
