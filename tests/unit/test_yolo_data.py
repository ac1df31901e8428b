"""YOLO-format reading: layouts, and every bad input named by file:line (or a counted skip)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.mlflow_checks import assert_failed_cleanly
from sparsify_mlflow.cli import main
from sparsify_mlflow.data.synthetic_yolo import make_yolo_dataset
from sparsify_mlflow.data.yolo import parse_label_line, scan_yolo
from sparsify_mlflow.errors import DataError


@pytest.fixture
def yolo(tmp_path: Path) -> Path:
    return make_yolo_dataset(tmp_path / "ds", images=12, size=32)


def _label(root: Path, split: str = "train") -> Path:
    return next(p for p in sorted((root / "labels" / split).glob("*.txt")) if p.read_text().strip())


def test_data_yaml_layout_with_names(yolo: Path) -> None:
    splits = scan_yolo(yolo, "segmentation", seed=0)
    assert splits.names == ["square", "disc", "triangle"]
    assert len(splits.train) == 9 and len(splits.val) == 3
    assert splits.layout.startswith("data.yaml")
    assert all(o.polygon and len(o.polygon) >= 3 for s in splits.train for o in s.objects)
    # the yaml file itself works as --data too, and detection reads the polygons as boxes
    det = scan_yolo(yolo / "data.yaml", "detection", seed=0)
    assert [o.box for o in det.train[1].objects] == [o.box for o in splits.train[1].objects]


def test_folder_layouts_without_yaml(yolo: Path, tmp_path: Path) -> None:
    (yolo / "data.yaml").unlink()
    splits = scan_yolo(yolo, "detection", seed=0)
    assert splits.layout.startswith("images/{train,val}") and len(splits.val) == 3
    assert splits.names == [f"class_{k}" for k in range(len(splits.names))]  # from the largest id
    flat = tmp_path / "flat"
    for kind in ("images", "labels"):
        (flat / kind).mkdir(parents=True)
        for split in ("train", "val"):
            for f in (yolo / kind / split).iterdir():
                f.rename(flat / kind / f.name)
    splits = scan_yolo(flat, "detection", seed=0)
    assert splits.layout == "images/ + labels/ split by seed" and (len(splits.train), len(splits.val)) == (10, 2)


def test_box_lines_and_images_without_labels(tmp_path: Path) -> None:
    root = make_yolo_dataset(tmp_path / "boxes", images=12, size=32, boxes=True)
    splits = scan_yolo(root, "detection", seed=0)
    unlabeled = [s for s in splits.train + splits.val
                 if not (root / "labels" / s.image.parent.name / f"{s.image.stem}.txt").exists()]
    assert unlabeled and all(s.objects == () for s in unlabeled)
    with pytest.raises(DataError, match=r"img_\d+\.txt:1: polygon with 2 point\(s\)"):
        scan_yolo(root, "segmentation", seed=0)  # box lines are not polygons


@pytest.mark.parametrize("line, task, message", [
    ("0 0.5 0.5 0.2", "detection", "4 fields; a detection label is"),
    ("0 0.5 0.5 0.2 0.2 0.3", "detection", "6 fields"),
    ("0 0.1 0.1 0.5 0.1 0.5", "segmentation", "6 fields; a segmentation label"),
    ("0 0.1 0.1 0.5 0.5", "segmentation", "polygon with 2 point(s); a polygon needs at least 3"),
    ("0 0.5 1.2 0.2 0.2", "detection", "field 3 (y_center) = 1.2 is outside [0, 1]"),
    ("0 0.1 0.1 0.5 -0.1 0.5 0.5", "segmentation", "field 5 (y2) = -0.1 is outside [0, 1]"),
    ("7 0.5 0.5 0.2 0.2", "detection", "class id 7 is beyond the 3 class names (valid ids 0..2)"),
    ("a 0.5 0.5 0.2 0.2", "detection", "field 1 (class) 'a' is not a number"),
    ("1.5 0.5 0.5 0.2 0.2", "detection", "not a non-negative integer class id"),
    ("0 0.5 0.5 0 0.2", "detection", "width and height must be positive"),
])
def test_bad_label_lines_name_file_line_and_field(line: str, task: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        parse_label_line(line, task, 3, "labels/x.txt:4")
    assert str(info.value).startswith("labels/x.txt:4: ") and message in str(info.value)


def test_bad_line_in_a_file_is_reported_with_its_line_number(yolo: Path) -> None:
    label = _label(yolo)
    label.write_text(label.read_text() + "\n1 0.5 0.5 0.2 0.2 9\n")
    lines = len(label.read_text().splitlines())
    with pytest.raises(DataError, match=rf"{label.name}:{lines}: 6 fields"):
        scan_yolo(yolo, "detection", seed=0)


def test_unreadable_images_and_orphan_labels_are_counted_skips(yolo: Path) -> None:
    bad = next((yolo / "images" / "train").glob("*.png"))
    bad.write_bytes(b"not an image")
    (yolo / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    splits = scan_yolo(yolo, "detection", seed=0)
    assert (splits.unreadable_images, splits.orphan_labels) == (1, 1)
    assert len(splits.train) == 8
    assert any(s.startswith(str(bad)) and "unreadable image" in s for s in splits.skipped)
    assert any("ghost.txt: label file without an image" in s for s in splits.skipped)


def test_structural_problems(tmp_path: Path, yolo: Path) -> None:
    with pytest.raises(DataError, match="is not a YOLO dataset"):
        scan_yolo(tmp_path, "detection", seed=0)
    (yolo / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [a]\n")
    with pytest.raises(DataError, match="val folder .*nowhere does not exist"):
        scan_yolo(yolo, "detection", seed=0)
    (yolo / "data.yaml").write_text("train: images/train\nval: images/val\nnc: 2\nnames: [a, b, c]\n")
    with pytest.raises(DataError, match="nc is 2 but 3 names"):
        scan_yolo(yolo, "detection", seed=0)


def test_cli_bad_label_exits_2_with_a_failed_run_and_nothing_registered(yolo: Path, store: str, tmp_path: Path,
                                                                       capsys) -> None:
    label = _label(yolo, "val")
    label.write_text("0 0.5 0.5 1.5 0.2\n")
    code = main(["training-aware", "--use-case", "yolo", "--data", str(yolo), "--tracking-uri", store,
                 "--working-dir", str(tmp_path), "--no-pretrained", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == f"error: {label}:1: field 4 (width) = 1.5 is outside [0, 1] " \
                                           "(coordinates are normalised by the image width/height)"
    assert_failed_cleanly(store, f"{label}:1")


def test_cli_without_data_says_how_to_make_some(store: str, tmp_path: Path, capsys) -> None:
    code = main(["training-aware", "--use-case", "segmentation", "--tracking-uri", store,
                 "--working-dir", str(tmp_path)])
    assert code == 2 and "cv-segmentation needs --data" in capsys.readouterr().err
