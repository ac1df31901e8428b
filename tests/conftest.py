"""Shared fixtures: tiny real datasets, a private MLflow store per test, no network."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, label: int, rng: np.random.Generator, size: int = 24) -> None:
    """A learnable picture: class k draws a bright square in the k-th quadrant on noise."""
    from PIL import Image

    pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    row, col = divmod(label % 4, 2)
    pixels[row * half:(row + 1) * half, col * half:(col + 1) * half] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_image_folder(root: Path, classes: int = 2, per_class: int = 12, split: bool = True,
                      seed: int = 0) -> Path:
    """A tiny ImageFolder: root/train/<class>/*.png + root/val/<class>/*.png (or one flat level)."""
    rng = np.random.default_rng(seed)
    names = [f"class_{chr(ord('a') + k)}" for k in range(classes)]
    for k, name in enumerate(names):
        for i in range(per_class):
            if split:
                sub = "val" if i % 4 == 0 else "train"
                write_image(root / sub / name / f"{i:03d}.png", k, rng)
            else:
                write_image(root / name / f"{i:03d}.png", k, rng)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A private sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
