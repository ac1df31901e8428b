"""What cv-detection and cv-segmentation share: YOLO data in, image tensors out, the optimizer,
the pruning scope and the deployment description. Each use case adds its targets, loss and metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.data.fingerprint import fingerprint_files
from sparsify_mlflow.data.yolo import YoloSample, YoloSplits, load_rgb, scan_yolo
from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.levels import PruningScope
from sparsify_mlflow.qdq import QDQ_FILE
from sparsify_mlflow.registry import pinned_requirements
from sparsify_mlflow.usecases import image_inputs, serving_engine
from sparsify_mlflow.usecases.base import DataBundle, UseCase
from sparsify_mlflow.usecases.vision import VisionOptions
from sparsify_mlflow.usecases.vision_dense import postprocess
from sparsify_mlflow.usecases.vision_dense.nets import STRIDE, build_dense_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 128   # square input; the small end of what CPU training handles in minutes
FIGURE_IMAGES = 4          # validation images drawn per figure
DENSE_PYFUNC_FILE = Path(__file__).parents[1] / "dense_pyfunc.py"


def to_tensor(image, size: int, flip: bool = False) -> torch.Tensor:
    """RGB PIL image -> normalised [3, size, size] float tensor (a plain square resize, no letterbox:
    YOLO coordinates are normalised, so they stay valid)."""
    from PIL import Image

    image = image.resize((size, size), Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def flipped(sample: YoloSample) -> list[tuple[int, tuple[float, float, float, float], Any]]:
    """(class, box, polygon) of a sample's objects, mirrored left-right."""
    out = []
    for o in sample.objects:
        x1, y1, x2, y2 = o.box
        poly = tuple((1.0 - x, y) for x, y in o.polygon) if o.polygon else None
        out.append((o.cls, (1.0 - x2, y1, 1.0 - x1, y2), poly))
    return out


def objects_of(sample: YoloSample, flip: bool) -> list[tuple[int, tuple[float, float, float, float], Any]]:
    return flipped(sample) if flip else [(o.cls, o.box, o.polygon) for o in sample.objects]


class YoloImages(torch.utils.data.Dataset):
    """Samples of one split; `item(i, flip)` gives (image tensor, objects); subclasses add targets."""

    def __init__(self, samples: list[YoloSample], size: int, num_classes: int, train: bool) -> None:
        self.samples, self.size, self.num_classes, self.train = samples, size, num_classes, train

    def __len__(self) -> int:
        return len(self.samples)

    def item(self, i: int) -> tuple[torch.Tensor, list, bool]:
        flip = bool(self.train and torch.rand(()) < 0.5)  # torch RNG: seeded by the training loop
        sample = self.samples[i]
        return to_tensor(load_rgb(sample.image), self.size, flip), objects_of(sample, flip), flip


class DenseUseCase(UseCase):
    """Shared parts; subclasses set `kind`, `dataset_class` and the task specifics."""

    options = VisionOptions
    kind = "detection"
    default_model = "resnet18"
    default_epochs = 30
    default_batch_size = 16
    default_lr = 0.002
    dataset_class: type[YoloImages] = YoloImages
    output_convs: tuple[str, ...] = ()

    def label_names(self, splits: YoloSplits) -> list[str]:
        return list(splits.names)

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        if cfg.data is None:
            raise ConfigError(f"{self.name} needs --data: a YOLO dataset folder (images/ + labels/) or its "
                              "data.yaml; `python -m sparsify_mlflow.data.synthetic_yolo OUT` writes a small one")
        root = Path(cfg.data).expanduser()
        splits = scan_yolo(root, self.kind, cfg.seed)
        size = cfg.use_case_options.image_size or DEFAULT_IMAGE_SIZE
        if size % (2 * STRIDE):
            raise ConfigError(f"--image-size must be a multiple of {2 * STRIDE} for {self.name}, got {size}")
        names = self.label_names(splits)
        warnings = []
        if splits.unreadable_images:
            warnings.append(f"skipped {splits.unreadable_images} unreadable image(s), e.g. "
                            f"{next(s for s in splits.skipped if 'unreadable' in s)}")
        if splits.orphan_labels:
            warnings.append(f"ignored {splits.orphan_labels} label file(s) without an image, e.g. "
                            f"{next(s for s in splits.skipped if 'without an image' in s)}")
        objects = {split: sum(len(s.objects) for s in samples) for split, samples in
                   (("train", splits.train), ("val", splits.val))}
        return DataBundle(
            train=self.dataset_class(splits.train, size, len(splits.names), train=True),
            val=self.dataset_class(splits.val, size, len(splits.names), train=False),
            label_names=names,
            fingerprint=_fingerprint(splits.files),
            source=str(root),
            info={"data.layout": splits.layout, "data.num_classes": len(splits.names),
                  "data.train_samples": len(splits.train), "data.val_samples": len(splits.val),
                  "data.train_objects": objects["train"], "data.val_objects": objects["val"],
                  "data.skipped_images": splits.unreadable_images, "data.orphan_labels": splits.orphan_labels},
            preprocessing={"image_size": size, "resize": "square, bilinear (no letterbox)",
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "layout": "NCHW",
                           "color": "RGB", "scale": "pixels / 255, then (x - mean) / std", "stride": STRIDE},
            warnings=warnings,
            skipped=splits.skipped,
        )

    def create_model(self, cfg: ExperimentConfig, num_labels: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return build_dense_model(self.kind, cfg.model, num_labels, pretrained)

    def build_model(self, cfg: ExperimentConfig, data: DataBundle) -> nn.Module:
        model, facts = self.create_model(cfg, len(data.label_names), bool(cfg.pretrained))
        data.info.update({f"model.{k}": v for k, v in facts.items()})
        return model

    def make_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """Adam: trains these from-scratch heads in few CPU epochs where SGD needs many more."""
        decay = [p for p in model.parameters() if p.dim() > 1]
        no_decay = [p for p in model.parameters() if p.dim() <= 1]
        return torch.optim.Adam([{"params": decay, "weight_decay": 1e-5}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr)

    def sample_inputs(self, data: DataBundle, n: int) -> list[np.ndarray]:
        rows = [data.val[i % len(data.val)][0] for i in range(n)]
        return [torch.stack(rows).numpy()]

    def output_schema(self) -> Any:
        """The pyfunc's answer (an mlflow.types Schema): boxes or masks, see dense_pyfunc.py."""
        raise NotImplementedError

    def serving_params(self) -> Any:
        """The pyfunc's predict params (an mlflow.types ParamSchema), or None."""
        return None

    def serving_model(self, data: DataBundle, folder: Path) -> dict[str, Any]:
        """What to register: a pyfunc that takes images (base64 text, bytes, paths, arrays), preprocesses them as
        validation did, runs model.onnx and decodes boxes or masks with validation's code (dense_pyfunc.py)."""
        import base64

        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        example = base64.b64encode(Path(data.val.samples[0].image).read_bytes()).decode()
        return {
            "python_model": DENSE_PYFUNC_FILE,
            "code_paths": [Path(m.__file__) for m in (serving_engine, image_inputs, postprocess)],
            "artifacts": {"model": str(folder / "model.onnx"), "config": str(folder / "config.json"),
                          **({"qdq_model": str(folder / QDQ_FILE)} if (folder / QDQ_FILE).is_file() else {})},
            "input_example": pd.DataFrame({"image": [example]}),
            "signature": ModelSignature(Schema([ColSpec("string", "image")]), self.output_schema(),
                                        params=self.serving_params()),
            "model_config": {"engine": "onnxruntime"},
            "pip_requirements": pinned_requirements("numpy", "pandas", "pillow", "onnxruntime"),
        }

    def pruning_scope(self, model: nn.Module) -> PruningScope:
        """Prune every conv but the stem and the final prediction convs; those also stay FP32.

        Stem: 9k weights that see raw pixels (large accuracy cost, no speed gain). Final prediction
        convs: they produce the heatmap / box / class logits directly, are tiny (one 1x1 conv
        each), and their outputs need the full dynamic range (box log-sizes, confident logits)
        that INT8 would clip; pruning or quantizing them costs accuracy and buys no speed.
        """
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        keep = {"trunk.conv1.weight": "stem conv: few weights, sees raw pixels, large accuracy cost when pruned"}
        for name in self.output_convs:
            keep[f"{name}.weight"] = ("final prediction conv: tiny, emits the raw maps decoded after the engine; "
                                      "kept dense and FP32 (not quantized) for their dynamic range")
        prune = tuple(f"{n}.weight" for n in convs if f"{n}.weight" not in keep)
        return PruningScope(prune=prune, keep_dense=keep, quant_ignore=self.output_convs)


def _fingerprint(files: list[Path]) -> str:
    """Content fingerprint of the images and label files (paths relative to their common folder)."""
    import os

    resolved = [f.resolve() for f in files]
    return fingerprint_files(resolved, Path(os.path.commonpath([str(f.parent) for f in resolved])))
