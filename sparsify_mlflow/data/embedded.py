"""Embedded default data that ships inside installed packages (no hub, no network)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_mlflow.errors import DataError


def embedded_rows(spec: str | None, min_rows: int, max_rows: int, default: int) -> int:
    """The N of `--data embedded:N`, checked against the generator's limits; `default` for no --data or
    plain `embedded`."""
    if spec in (None, "embedded"):
        return default
    value = spec.split(":", 1)[1]
    if not value.strip().isdigit() or not min_rows <= int(value) <= max_rows:
        raise DataError(f"--data {spec!r}: expected embedded:<rows> with {min_rows} to {max_rows} rows")
    return int(value)


def is_embedded(spec: str | Path | None) -> bool:
    """`--data` names the embedded set: not given, `embedded` or `embedded:N` (a path never does)."""
    return spec is None or isinstance(spec, str) and (spec == "embedded" or spec.startswith("embedded:"))


def cache_root() -> Path:
    """Where generated default datasets live (outside the working tree)."""
    base = os.environ.get("SPARSIFY_MLFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparsify-mlflow"
    )
    return Path(base)


DIGITS_ROWS, MIN_DIGITS_ROWS = 1797, 100  # sklearn's digits; the fewest a 10-class split trains on


def digits_image_folder(rows: int = DIGITS_ROWS) -> Path:
    """sklearn's bundled 8x8 digits (1797 real scans, or the first `rows`: the classes take turns, so
    any prefix is near-balanced) written once as an ImageFolder of PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = cache_root() / "datasets" / ("digits-imagefolder" + ("" if rows == DIGITS_ROWS else f"-{rows}"))
    done = root / ".complete"
    if done.exists():
        return root
    digits = load_digits()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    for i, (image, target) in enumerate(zip(digits.images[:rows], digits.target[:rows])):
        folder = tmp / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return _publish(tmp, root)


def cached_splits(name: str, make: Callable[[], list[Any]], write: Callable[[list[Any]], str], suffix: str,
                  validation_rows: int | None = None) -> Path:
    """Cache folder `name` with train<suffix> + validation<suffix>: the first `validation_rows` (default
    a fifth) of `make()` and the rest, generated once."""
    root = cache_root() / "datasets" / name
    if (root / ".complete").exists():
        return root
    items = make()
    n_val = validation_rows if validation_rows is not None else max(2, round(len(items) * 0.2))
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for stem, part in (("train", items[n_val:]), ("validation", items[:n_val])):
        (tmp / f"{stem}{suffix}").write_text(write(part), encoding="utf-8")
    return _publish(tmp, root)


def json_lines(rows: list[Any]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _publish(tmp: Path, root: Path) -> Path:
    """Mark `tmp` complete and rename it to `root`: atomic, so concurrent first runs never see half a
    dataset (a run that loses the race drops its copy)."""
    import shutil

    (tmp / ".complete").touch()
    try:
        tmp.rename(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
