"""ImageFolder scanning: layouts, the deterministic split, and every bad-data case."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.data import make_image_folder, write_image
from sparsify_mlflow.data.imagefolder import scan_image_folder
from sparsify_mlflow.errors import DataError


def test_train_val_layout(image_folder: Path) -> None:
    splits = scan_image_folder(image_folder, seed=0)
    assert splits.classes == ["class_a", "class_b"]
    assert (len(splits.train), len(splits.val)) == (18, 6)
    assert splits.layout == "train/val folders"
    assert not splits.skipped


def test_single_folder_is_split_by_seed_and_stratified(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "flat", classes=3, per_class=10, split=False)
    first = scan_image_folder(root, seed=1)
    again = scan_image_folder(root, seed=1)
    other = scan_image_folder(root, seed=2)
    assert first.val == again.val
    assert first.val != other.val
    assert sorted(label for _, label in first.val) == [0, 0, 1, 1, 2, 2]
    assert len(first.train) == 24


def test_missing_folder() -> None:
    with pytest.raises(DataError, match="data folder /no/such/place does not exist"):
        scan_image_folder(Path("/no/such/place"), seed=0)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no class sub-folders"):
        scan_image_folder(tmp_path, seed=0)


def test_a_single_class_is_not_classification(tmp_path: Path) -> None:
    write_image(tmp_path / "only" / "x.png", 0, np.random.default_rng(0))
    with pytest.raises(DataError, match="only one class \\(only\\)"):
        scan_image_folder(tmp_path, seed=0)


def test_class_folder_without_images(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", split=False)
    (root / "class_c").mkdir()
    (root / "class_c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="class folder .*class_c has no images"):
        scan_image_folder(root, seed=0)


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", split=False)
    (root / "class_a" / "garbage.png").write_bytes(b"this is not a png")
    good = (root / "class_b" / "000.png").read_bytes()
    (root / "class_b" / "truncated.png").write_bytes(good[: len(good) // 2])
    splits = scan_image_folder(root, seed=0)
    assert len(splits.skipped) == 2
    assert any("garbage.png" in s for s in splits.skipped)
    assert any("truncated.png" in s for s in splits.skipped)
    assert len(splits.train) + len(splits.val) == 24


def test_a_class_with_only_unreadable_images_fails(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", split=False)
    (root / "class_z").mkdir()
    (root / "class_z" / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match="class_z have no readable image"):
        scan_image_folder(root, seed=0)


def test_val_class_missing_from_train(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d")
    write_image(root / "val" / "class_new" / "x.png", 1, np.random.default_rng(0))
    with pytest.raises(DataError, match="has classes not in .*train: class_new"):
        scan_image_folder(root, seed=0)


def test_named_dataset_without_internet_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    from sparsify_mlflow.data.downloads import named_image_dataset

    monkeypatch.setenv("SPARSIFY_MLFLOW_CACHE", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY"):  # a closed port: offline even where internet is
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(DataError, match="could not download dataset 'imagenette'.*pass a local ImageFolder"):
        named_image_dataset("imagenette")
    assert named_image_dataset("not-a-known-name") is None
    assert not list((tmp_path / "datasets").glob("imagenette*/*")), "no half-downloaded leftovers"


def test_embedded_digits_take_a_row_count_like_the_text_sets(monkeypatch, tmp_path: Path) -> None:
    from sparsify_mlflow.usecases import resolve
    from sparsify_mlflow.validation import build_config

    monkeypatch.setenv("SPARSIFY_MLFLOW_CACHE", str(tmp_path))
    case = resolve("cv-classification")
    data = case.load_data(build_config(case, data="embedded:200", working_dir=tmp_path))
    assert len(data.train) + len(data.val) == 200 and data.source == "embedded sklearn digits (200 images)"
    assert len(data.label_names) == 10 and data.preprocessing["image_size"] == 40  # the digits' own default
    counts = np.bincount([label for _, label in data.train.samples], minlength=10)
    assert counts.min() >= 12, counts  # the classes take turns in sklearn's order: any prefix is balanced
    with pytest.raises(DataError, match="expected embedded:<rows> with 100 to 1797 rows"):
        case.load_data(build_config(case, data="embedded:5000", working_dir=tmp_path))
