"""ImageFolder datasets (the layout Sparsify and torchvision use), checked before training.

Layouts accepted: ROOT/train/<class>/* + ROOT/val/<class>/* (also `validation`, `test` for the
second split), or ROOT/<class>/* split deterministically by seed (stratified, 20% validation).

Policy for unreadable or truncated images: they are skipped, counted and listed (a warning and
the MLflow param `data.skipped_images`), as torchvision users expect from long scraped datasets.
A class left with no readable image, or a split with fewer than two classes, fails the run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from sparsify_mlflow.data.splits import stratified_split
from sparsify_mlflow.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_SPLIT_NAMES = ("val", "validation", "test")

Sample = tuple[Path, int]


@dataclass
class ImageSplits:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[str]          # "path: reason" of images that could not be read
    layout: str                 # "train/val folders" or "single folder split by seed"
    files: list[Path]           # every image considered, for the fingerprint


def scan_image_folder(root: Path, seed: int) -> ImageSplits:
    """Find, check and split the images under `root`; raise DataError for unusable data."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder (expected an ImageFolder root)")
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_SPLIT_NAMES if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        classes = _class_names(train_dir)
        val_classes = _class_names(val_dir)
        extra = sorted(set(val_classes) - set(classes))
        if extra:
            raise DataError(f"{val_dir} has classes not in {train_dir}: {', '.join(extra)}")
        index = {c: i for i, c in enumerate(classes)}
        train_files = _class_files(train_dir, classes, index)
        val_files = _class_files(val_dir, val_classes, index)
        train, skipped = _readable(train_files)
        val, skipped_val = _readable(val_files)
        _require_each_class(train, classes, train_dir)
        layout = f"train/{val_dir.name} folders"
        files = [p for p, _ in train_files + val_files]
        skipped += skipped_val
    else:
        if train_dir.is_dir():
            raise DataError(f"{root} has train/ but no val/ (or validation/, test/) folder")
        classes = _class_names(root)
        index = {c: i for i, c in enumerate(classes)}
        all_files = _class_files(root, classes, index)
        readable, skipped = _readable(all_files)
        _require_each_class(readable, classes, root)
        train, val = stratified_split(readable, lambda sample: sample[1], seed)
        layout = "single folder split by seed"
        files = [p for p, _ in all_files]
    if not val:
        raise DataError(f"{root}: the validation split is empty")
    return ImageSplits(classes, train, val, skipped, layout, files)


def _class_names(folder: Path) -> list[str]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"data folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    if len(classes) < 2:
        raise DataError(f"data folder {folder} has only one class ({classes[0]}); classification needs at least two")
    return classes


def _class_files(folder: Path, classes: list[str], index: dict[str, int]) -> list[Sample]:
    samples: list[Sample] = []
    for name in classes:
        images = sorted(
            p for p in (folder / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DataError(
                f"class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(p, index[name]) for p in images]
    return samples


def _readable(samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """Fully decode every image once: truncated files only fail on decode, not on open."""
    good: list[Sample] = []
    skipped: list[str] = []
    for path, label in tqdm(samples, desc="Checking images", unit="img", leave=False, disable=None):
        try:
            with Image.open(path) as image:
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            skipped.append(f"{path}: {exc}")
            continue
        good.append((path, label))
    return good, skipped


def _require_each_class(samples: list[Sample], classes: list[str], folder: Path) -> None:
    present = {label for _, label in samples}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise DataError(f"class folder(s) {', '.join(str(folder / c) for c in empty)} have no readable image")


class ImageFileDataset:
    """(image tensor, label) pairs from checked files; the transform does resizing/normalising."""

    def __init__(self, samples: list[Sample], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label
