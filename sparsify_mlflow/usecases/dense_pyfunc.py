"""MLflow pyfunc for a registered detector or segmenter: images in, boxes or masks out ("models from code").

MLflow copies this file into the registered model next to its artifacts (model.onnx, config.json
with the task, labels and preprocessing) and three code paths: serving_engine.py (the engine),
image_inputs.py (base64 text, bytes, paths, arrays) and postprocess.py (the decoder validation
used), so the model loads without torch or sparsify_mlflow: numpy, pandas, pillow and onnxruntime.

    model = mlflow.pyfunc.load_model("models:/<name>@champion")
    model.predict({"image": ["street.jpg"]})                       # detection: one row per box
    model.predict({"image": ["street.jpg"]}, params={"min_score": 0.5})

Detection answers one row per box: `image` (its index in the request), `label`, `score`,
`label_id` and `x1 y1 x2 y2` in the pixels of the image as sent. Segmentation answers one row per
image: `mask` (a base64 PNG of label ids at the image's size; label 0 is the background),
`labels` (the labels present, largest first) and `fractions` (their shares of the pixels).
Preprocessing is training's: a square bilinear resize, pixels / 255, ImageNet mean and std.
This file must not import sparsify_mlflow.
"""
from __future__ import annotations

import base64
import io
import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class DenseImageModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        with open(context.artifacts["config"], encoding="utf-8") as fh:
            config = json.load(fh)
        self.task, self.labels = config["task"], list(config["labels"])
        pre = config["preprocessing"]
        self.size = int(pre["image_size"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32)
        self.std = np.asarray(pre["std"], dtype=np.float32)
        from serving_engine import ServingEngine, engine_name  # code paths of the logged model

        self.engine = ServingEngine(engine_name(context), context.artifacts, list(config["inputs"]))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        from image_inputs import image_items, load_image

        images = [load_image(item) for item in image_items(model_input)]
        outputs = self.engine.outputs([np.stack([self.preprocess(image) for image in images])])
        if self.task == "object-detection":
            from postprocess import SERVING_MIN_SCORE

            min_score = float((params or {}).get("min_score", SERVING_MIN_SCORE))
            return self.boxes(outputs, [image.size for image in images], min_score)
        return self.masks(outputs[0], [image.size for image in images])

    def preprocess(self, image: Any) -> np.ndarray:
        """common.to_tensor's pixels: square bilinear resize (PIL), / 255, (x - mean) / std, CHW."""
        from PIL import Image

        pixels = np.asarray(image.resize((self.size, self.size), Image.BILINEAR), dtype=np.float32) / 255.0
        return np.ascontiguousarray(((pixels - self.mean) / self.std).transpose(2, 0, 1), dtype=np.float32)

    def boxes(self, outputs: list[np.ndarray], sizes: list[tuple[int, int]], min_score: float) -> pd.DataFrame:
        from postprocess import decode_centernet

        rows = []
        for i, (found, (width, height)) in enumerate(zip(decode_centernet(outputs[0], outputs[1], self.size, min_score),
                                                         sizes)):
            scale = np.array([width, height, width, height], dtype=np.float32) / self.size
            for box, score, label in zip(found["boxes"] * scale, found["scores"], found["labels"]):
                rows.append({"image": i, "label": self.labels[int(label)], "score": float(score),
                             "label_id": int(label), **dict(zip(("x1", "y1", "x2", "y2"), map(float, box)))})
        return pd.DataFrame(rows, columns=["image", "label", "score", "label_id", "x1", "y1", "x2", "y2"])

    def masks(self, logits: np.ndarray, sizes: list[tuple[int, int]]) -> pd.DataFrame:
        from PIL import Image
        from postprocess import upsample_argmax

        rows = []
        for one, (width, height) in zip(logits, sizes):
            mask = upsample_argmax(one[None], (height, width))[0].astype(np.uint8)
            ids, counts = np.unique(mask, return_counts=True)
            order = np.argsort(-counts, kind="stable")
            png = io.BytesIO()
            Image.fromarray(mask, mode="L").save(png, format="PNG")
            rows.append({"mask": base64.b64encode(png.getvalue()).decode(),
                         "labels": [self.labels[int(k)] for k in ids[order]],
                         "fractions": [round(float(c) / mask.size, 4) for c in counts[order]]})
        return pd.DataFrame(rows, columns=["mask", "labels", "fractions"])


mlflow.models.set_model(DenseImageModel())
