"""Embedded default data that ships inside installed packages (no hub, no network)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def cache_root() -> Path:
    """Where generated default datasets live (outside the working tree)."""
    base = os.environ.get("SPARSIFY_MLFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparsify-mlflow"
    )
    return Path(base)


def digits_image_folder() -> Path:
    """sklearn's bundled 8x8 digits (1797 real scans) written once as an ImageFolder of PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = cache_root() / "datasets" / "digits-imagefolder"
    done = root / ".complete"
    if done.exists():
        return root
    digits = load_digits()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        folder = tmp / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    (tmp / ".complete").touch()
    try:
        tmp.rename(root)  # atomic: concurrent first runs never see half a dataset
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_once(root: Path, files: dict[str, str]) -> Path:
    """Write generated text files into `root` once; concurrent first runs never see half a dataset."""
    import shutil

    if (root / ".complete").exists():
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp / name).write_text(text, encoding="utf-8")
    (tmp / ".complete").touch()
    try:
        tmp.rename(root)  # atomic
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
