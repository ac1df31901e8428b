"""Images as users send them to a registered CV model: base64 text, raw bytes, file paths or arrays.

Logged beside the image pyfuncs (classification, detection, segmentation) as an MLflow code path,
so a registered model loads it without sparsify_mlflow installed; this file must not import
sparsify_mlflow.
"""
from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import pandas as pd


def image_items(model_input: Any) -> list[Any]:
    """The images of a DataFrame (column `image`, or the first), a dict, a list or a single image."""
    if isinstance(model_input, dict):
        model_input = model_input.get("image", next(iter(model_input.values())))
    if isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        model_input = model_input[column]
    if _is_one_image(model_input):
        return [model_input]
    out: list[Any] = []  # MLflow turns {"image": [a, b]} into one row holding the list: flatten such cells
    for value in model_input:
        out.extend([value] if _is_one_image(value) else list(value))
    return out


def _is_one_image(value: Any) -> bool:
    return isinstance(value, (str, bytes)) or (isinstance(value, np.ndarray) and value.dtype != object
                                               and value.ndim in (2, 3))


def load_image(item: Any) -> Any:
    """A PIL RGB image from base64 text, raw bytes, a file path or an HxWx3 (or HxW) uint8 array."""
    from PIL import Image

    if isinstance(item, np.ndarray):
        return Image.fromarray(item.astype(np.uint8)).convert("RGB")
    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            with open(item, "rb") as fh:  # not base64: a file path
                item = fh.read()
    return Image.open(io.BytesIO(bytes(item))).convert("RGB")
