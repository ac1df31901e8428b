"""MLflow pyfunc for a registered image classifier: images in, labels out (MLflow "models from code").

MLflow copies this file into the registered model next to its artifacts (model.onnx, config.json
with the labels and the preprocessing), serving_engine.py and image_inputs.py, so the model loads without
sparsify_mlflow installed: it needs numpy, pandas, pillow and onnxruntime (or deepsparse, openvino).

    model = mlflow.pyfunc.load_model("models:/<name>@champion")
    model.predict(pd.DataFrame({"image": [base64.b64encode(open("cat.png", "rb").read()).decode()]}))
    model.predict({"image": ["cat.png"]})          # file paths, raw bytes or HxWx3 uint8 arrays too
    mlflow.pyfunc.load_model(uri, model_config={"engine": "deepsparse"})   # or "openvino" (the QDQ twin)

Over HTTP (`mlflow models serve -m models:/<name>@champion --env-manager local`):

    curl -X POST localhost:5000/invocations -H 'Content-Type: application/json' \
      -d "{\"dataframe_split\": {\"columns\": [\"image\"], \"data\": [[\"$(base64 -w0 cat.png)\"]]}}"

On OpenVINO: `MLFLOW_PYFUNC_INFERENCE_CONFIG='{"engine": "openvino"}' mlflow models serve ...`.

The preprocessing is the validation transform of training (resize the shorter side, center crop,
scale to [0, 1], normalize), written with PIL and numpy to give the same pixels as torchvision.
The result is a DataFrame with `label`, `score` (softmax probability) and `label_id`. This file
must not import sparsify_mlflow.
"""
from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        with open(context.artifacts["config"], encoding="utf-8") as fh:
            config = json.load(fh)
        self.labels = list(config["labels"])
        pre = config["preprocessing"]
        self.size, self.resize = int(pre["image_size"]), int(pre["resize"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        from serving_engine import ServingEngine, engine_name  # a code path of the logged model

        self.engine = ServingEngine(engine_name(context), context.artifacts, list(config["inputs"]))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        from image_inputs import image_items, load_image
        from serving_engine import classified

        batch = np.stack([self.preprocess(load_image(item)) for item in image_items(model_input)])
        return classified(self.engine.run([batch]), self.labels)

    def preprocess(self, image: Any) -> np.ndarray:
        """torchvision's Resize(resize) -> CenterCrop(size) -> ToTensor -> Normalize, on a PIL RGB image."""
        from PIL import Image

        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        new_w, new_h = (self.resize, new_long) if w <= h else (new_long, self.resize)
        image = image.resize((new_w, new_h), Image.BILINEAR)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return np.ascontiguousarray((pixels - self.mean) / self.std, dtype=np.float32)


mlflow.models.set_model(ImageClassifier())
