"""CenterNet-style targets, loss and decoding for `CenterNetLite`'s raw maps.

Decoding lives in `postprocess.decode_centernet` (numpy): one path for the PyTorch model, the
exported ONNX files and the registered pyfunc, so their mAPs compare the networks, not two decoders.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from sparsify_mlflow.usecases.vision_dense.postprocess import decode_centernet


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
    """`postprocess.decode_centernet` as torchmetrics takes it: per image {boxes, scores, labels} tensors."""
    return [{k: torch.from_numpy(v) for k, v in found.items()}
            for found in decode_centernet(heat_logits, box_map, image_size)]
