"""The metric code of cv-detection / cv-segmentation against hand-computed cases, and the decoder
against the encoder (a perfect raw map must decode to the true boxes)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsify_mlflow.usecases.vision_dense import centernet, postprocess
from sparsify_mlflow.usecases.vision_dense.metrics import SegmentationScores, detection_metrics
from sparsify_mlflow.usecases.vision_dense.segmentation import rasterise, upsample_argmax

NAMES = ["a", "b"]


def _t(boxes, labels, scores=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
           "labels": torch.tensor(labels, dtype=torch.long)}
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


def test_perfect_detections_score_one() -> None:
    target = [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    values, table = detection_metrics([_t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1], [0.9, 0.8])], target, NAMES)
    assert values["map50"] == pytest.approx(1.0) and values["map50_95"] == pytest.approx(1.0)
    assert [row["ap50"] for row in table] == [1.0, 1.0]


def test_hand_computed_ap_with_a_false_positive_ranked_first() -> None:
    """Class a: 2 true boxes; detections by score: FP, TP, TP. Precision at recall 0.5 and 1.0 is
    2/3 (interpolated), so COCO's 101-point AP = 2/3. Class b: no detection -> AP 0. Mean = 1/3."""
    target = [_t([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], [0, 0, 1])]
    pred = [_t([[80, 80, 90, 90], [0, 0, 10, 10], [50, 50, 60, 60]], [0, 0, 0], [0.9, 0.8, 0.7])]
    values, table = detection_metrics(pred, target, NAMES)
    assert table[0]["ap50"] == pytest.approx(2 / 3, abs=1e-3)
    assert table[1]["ap50"] == 0.0 and table[1]["val_boxes"] == 1
    assert values["map50"] == pytest.approx(1 / 3, abs=1e-3)


def test_iou_threshold_range_of_map50_95() -> None:
    """A box of IoU 0.81 with its target counts at thresholds 0.5..0.8 (7 of 10) -> mAP@0.5:0.95 = 0.7."""
    target = [_t([[0, 0, 10, 10]], [0])]
    pred = [_t([[0, 0, 10, 8.1]], [0], [0.9])]  # IoU = 81 / 100
    values, _ = detection_metrics(pred, target, ["a"])
    assert values["map50"] == pytest.approx(1.0)
    assert values["map50_95"] == pytest.approx(0.7, abs=1e-3)


def test_class_without_ground_truth_has_no_ap() -> None:
    values, table = detection_metrics([_t([[0, 0, 10, 10]], [0], [0.9])], [_t([[0, 0, 10, 10]], [0])], NAMES)
    assert table[1]["ap50"] is None and table[1]["val_boxes"] == 0
    assert values["map50"] == pytest.approx(1.0)  # left out of the mean, as COCO does


def test_segmentation_iou_and_pixel_accuracy_by_hand() -> None:
    """2x2 masks. Target [[0,1],[1,1]], prediction [[0,0],[1,1]]:
    class 0: |{(0,0)}| / |{(0,0),(0,1)}| = 1/2; class 1: 2/3; class 2 absent from both: no IoU.
    mIoU = (1/2 + 2/3) / 2 = 7/12, pixel accuracy 3/4."""
    scores = SegmentationScores(3)
    scores.update(torch.tensor([[[0, 0], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]]))
    values, table = scores.compute(["background", "a", "b"])
    assert values["miou"] == pytest.approx(7 / 12)
    assert values["pixel_accuracy"] == pytest.approx(0.75)
    assert values["miou_objects"] == pytest.approx(2 / 3)
    assert [row["iou"] for row in table] == [0.5, 0.6667, None]
    assert [row["val_pixels"] for row in table] == [1, 3, 0]


def test_segmentation_scores_accumulate_over_batches() -> None:
    scores = SegmentationScores(2)
    scores.update(torch.tensor([[1, 1]]), torch.tensor([[1, 1]]))
    scores.update(torch.tensor([[0, 0]]), torch.tensor([[1, 0]]))
    values, _ = scores.compute(["background", "a"])
    # class 1: TP 2, FP 0, FN 1 -> 2/3; class 0: TP 1, FP 1 -> 1/2
    assert values["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert values["pixel_accuracy"] == pytest.approx(3 / 4)


def test_rasterise_paints_polygons_in_file_order_over_background() -> None:
    square = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5))
    later = ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75))
    mask = rasterise([(0, None, square), (1, None, later)], 8)
    assert mask[0, 0] == 1 and mask[7, 7] == 0 and mask[3, 3] == 2 and mask[5, 5] == 2
    assert set(mask.unique().tolist()) == {0, 1, 2}


def test_upsample_argmax_keeps_constant_logits() -> None:
    logits = np.zeros((1, 3, 2, 2), dtype=np.float32)
    logits[0, 2] = 5.0
    assert upsample_argmax(logits, 16).unique().tolist() == [2]


def test_decoder_inverts_the_encoder() -> None:
    """Logits built from the encoded targets decode back to the true boxes and classes."""
    grid, size = 8, 64
    objects = [(0, (0.1, 0.1, 0.4, 0.3)), (1, (0.55, 0.5, 0.95, 0.9))]
    heat, boxes, _ = centernet.encode(objects, 2, grid)
    logits = torch.where(heat == 1, torch.tensor(5.0), torch.tensor(-5.0))
    found = centernet.decode(logits[None].numpy(), boxes[None].numpy(), size)[0]
    assert found["labels"].tolist() == [0, 1]
    expected = torch.tensor([b for _, b in objects]) * size
    assert torch.allclose(found["boxes"], expected, atol=1e-3)
    assert float(found["scores"][0]) == pytest.approx(1 / (1 + math.exp(-5)))


def test_loss_is_lower_for_the_right_answer() -> None:
    heat, boxes, mask = centernet.encode([(0, (0.2, 0.2, 0.6, 0.6))], 1, 8)
    right = centernet.loss(torch.where(heat == 1, 6.0, -6.0)[None], boxes[None], heat[None], boxes[None], mask[None])
    wrong = centernet.loss(torch.full((1, 1, 8, 8), 0.0), torch.zeros(1, 4, 8, 8), heat[None], boxes[None], mask[None])
    assert float(right) < 0.1 < float(wrong)


def test_nms_matches_torchvision() -> None:
    """The hand-written NMS the registered pyfunc ships (no torch there) against torchvision's, on crowded
    boxes of three classes, with duplicates and empty boxes."""
    from torchvision.ops import batched_nms as reference

    rng = np.random.default_rng(0)
    for _ in range(20):
        corners = rng.uniform(0, 40, (60, 2)).astype(np.float32)
        sizes = rng.uniform(0, 12, (60, 2)).astype(np.float32)
        sizes[:5] = 0.0  # empty boxes: IoU 0/0 must not suppress
        boxes = np.concatenate([corners, corners + sizes], axis=1)
        boxes[10:15] = boxes[20:25]  # exact duplicates
        scores = rng.uniform(0, 1, 60).astype(np.float32)
        classes = rng.integers(0, 3, 60)
        expected = reference(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5)
        assert postprocess.batched_nms(boxes, scores, classes, 0.5).tolist() == expected.tolist()


@pytest.mark.parametrize("shape, size", [((2, 4, 5, 5), 13), ((1, 3, 4, 4), 32), ((1, 5, 3, 6), (7, 11))])
def test_upsampling_matches_torch_bilinear(shape, size) -> None:
    logits = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    hw = (size, size) if isinstance(size, int) else size
    expected = torch.nn.functional.interpolate(torch.from_numpy(logits), size=hw, mode="bilinear",
                                               align_corners=False).argmax(1)
    assert np.array_equal(postprocess.upsample_argmax(logits, size), expected.numpy())


def test_decoder_matches_torch_ops_on_random_maps() -> None:
    """decode_centernet against the same steps in torch (max_pool2d peaks, topk, torchvision NMS)."""
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(2)
    heat_logits = rng.normal(-2, 2, (2, 3, 8, 8)).astype(np.float32)
    box_map = rng.normal(0, 1, (2, 4, 8, 8)).astype(np.float32)
    heat = torch.sigmoid(torch.from_numpy(heat_logits))
    peaks = heat * (torch.nn.functional.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.view(2, -1).topk(postprocess.MAX_DETECTIONS)
    found = postprocess.decode_centernet(heat_logits, box_map, 64)
    for b in range(2):
        keep = scores[b] > postprocess.SCORE_THRESHOLD
        idx, score = index[b][keep], scores[b][keep]
        cls, pos = idx // 64, idx % 64
        offx, offy, lw, lh = (torch.from_numpy(box_map[b, k]).reshape(-1)[pos] for k in range(4))
        cx, cy = ((pos % 8).float() + offx) * 8, ((pos // 8).float() + offy) * 8
        w, h = torch.exp(lw) * 8, torch.exp(lh) * 8
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1).clamp(0, 64)
        kept = batched_nms(xyxy, score, cls, postprocess.NMS_IOU)
        assert found[b]["labels"].tolist() == cls[kept].tolist() and len(kept) > 5
        np.testing.assert_allclose(found[b]["boxes"], xyxy[kept].numpy(), atol=1e-4)
        np.testing.assert_allclose(found[b]["scores"], score[kept].numpy(), atol=1e-6)
