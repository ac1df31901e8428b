"""CenterNet-style targets, loss and decoding for `CenterNetLite`'s raw maps.

`decode` is the one post-processing path: it serves the PyTorch model and the exported ONNX file
alike (numpy in), so their mAPs compare the networks, not two decoders.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

MAX_DETECTIONS = 100
SCORE_THRESHOLD = 0.01   # low on purpose: mAP integrates over the whole precision/recall curve
NMS_IOU = 0.5
MAX_LOG_SIZE = 6.0       # exp(6) cells: larger than any box on the grid, guards exp overflow


def encode(objects: list[tuple[int, tuple[float, float, float, float]]], num_classes: int, grid: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets on a `grid` x `grid` map from (class, normalised x1 y1 x2 y2) boxes.

    Returns the heatmap [C, g, g] (a Gaussian per object, peak 1 at its centre cell), the box map
    [4, g, g] (centre offset in the cell, log width and height in cells) and the centre mask [g, g].
    """
    heat = torch.zeros(num_classes, grid, grid)
    boxes = torch.zeros(4, grid, grid)
    mask = torch.zeros(grid, grid)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    for cls, (x1, y1, x2, y2) in objects:
        w, h = (x2 - x1) * grid, (y2 - y1) * grid
        cx, cy = (x1 + x2) / 2 * grid, (y1 + y2) / 2 * grid
        ix, iy = min(int(cx), grid - 1), min(int(cy), grid - 1)
        sigma = max(0.5, math.sqrt(max(w, 1e-3) * max(h, 1e-3)) / 6)
        gauss = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        heat[cls] = torch.maximum(heat[cls], gauss)
        boxes[:, iy, ix] = torch.tensor([cx - ix, cy - iy, math.log(max(w, 1e-3)), math.log(max(h, 1e-3))])
        mask[iy, ix] = 1.0
    return heat, boxes, mask


def loss(heat_logits: torch.Tensor, box_pred: torch.Tensor, heat: torch.Tensor, boxes: torch.Tensor,
         mask: torch.Tensor) -> torch.Tensor:
    """Penalty-reduced focal loss on the heatmap + L1 on the box map at object centres (CenterNet)."""
    p = torch.sigmoid(heat_logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - pos)).sum()
    n_pos = pos.sum().clamp(min=1.0)
    m = mask.unsqueeze(1)
    box_loss = (F.l1_loss(box_pred.float() * m, boxes * m, reduction="sum")) / mask.sum().clamp(min=1.0)
    return (pos_loss + neg_loss) / n_pos + box_loss


def decode(heat_logits: np.ndarray, box_map: np.ndarray, image_size: int) -> list[dict[str, torch.Tensor]]:
    """Raw maps of a batch -> per image {boxes [N,4] xyxy in input pixels, scores, labels}.

    Peaks of the sigmoid heatmap (3x3 local maxima), top-k, box from the box map, then class-wise
    NMS (`torchvision.ops.batched_nms`) and at most MAX_DETECTIONS boxes.
    """
    from torchvision.ops import batched_nms

    heat = torch.sigmoid(torch.from_numpy(np.asarray(heat_logits, dtype=np.float32)))
    box = torch.from_numpy(np.asarray(box_map, dtype=np.float32))
    n, c, g, _ = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.view(n, -1).topk(min(MAX_DETECTIONS, c * g * g))
    cell = image_size / g
    out = []
    for b in range(n):
        keep = scores[b] > SCORE_THRESHOLD
        idx, score = index[b][keep], scores[b][keep]
        cls, pos = idx // (g * g), idx % (g * g)
        iy, ix = (pos // g).float(), (pos % g).float()
        offx, offy, lw, lh = (box[b, k].reshape(-1)[pos] for k in range(4))
        cx, cy = (ix + offx) * cell, (iy + offy) * cell
        w, h = torch.exp(lw.clamp(max=MAX_LOG_SIZE)) * cell, torch.exp(lh.clamp(max=MAX_LOG_SIZE)) * cell
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1).clamp(0, image_size)
        kept = batched_nms(xyxy, score, cls, NMS_IOU)[:MAX_DETECTIONS]
        out.append({"boxes": xyxy[kept], "scores": score[kept], "labels": cls[kept].long()})
    return out
