"""cv-classification: ImageFolder data, torchvision models, top-1 (and top-5) accuracy."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.data.downloads import named_image_dataset
from sparsify_mlflow.data.embedded import embedded_rows, is_embedded
from sparsify_mlflow.data.fingerprint import fingerprint_files
from sparsify_mlflow.data.imagefolder import ImageFileDataset, scan_image_folder
from sparsify_mlflow.levels import PruningScope
from sparsify_mlflow.qdq import QDQ_FILE
from sparsify_mlflow.registry import pinned_requirements
from sparsify_mlflow.usecases import image_inputs, serving_engine
from sparsify_mlflow.usecases.base import (
    CLASSIFICATION_EVAL_METRICS,
    DataBundle,
    Metrics,
    Predictor,
    UseCase,
    classification_metrics,
    collect_predictions,
)
from sparsify_mlflow.usecases.vision import VisionOptions, build_vision_model

PYFUNC_FILE = Path(__file__).with_name("image_pyfunc.py")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The embedded digits are 8x8 scans, upscaled. At 32 px ResNet's last stage is 1x1, and DeepSparse
# 1.8 on AVX2 aborts compiling sparse INT8 convs of that shape at batch >= 16; 40 px avoids it.
DIGITS_IMAGE_SIZE = 40


class ImageClassification(UseCase):
    options = VisionOptions
    default_model = "resnet18"
    default_epochs = 10
    default_batch_size = 64
    default_lr = 0.05
    main_metric = "accuracy"
    eval_metrics = CLASSIFICATION_EVAL_METRICS
    # A CNN layer pruned to 70% runs slower on DeepSparse's sparse INT8 kernels than dense INT8; past ~90%
    # faster. by_compute keeps the level's sparsity with the compute-heavy layers past 90% and a few late
    # ones dense. Level 0.5, 1x4 blocks, vs INT8 alone on its fastest engine, bs1 / bs16
    # (benchmarks/layer_allocation.py, docs/optim-levels.md): AMD EPYC AVX2, ResNet-18 at 40 px uniform
    # 0.28x / 0.92x, by_compute 1.72x / 1.68x; ResNet-50 uniform 0.92x / 1.50x, by_compute 1.52x / 2.17x;
    # Intel Xeon AVX-512 VNNI, ResNet-50 uniform 0.86x / 1.82x, by_compute 1.43x / 1.87x.
    default_layer_allocation = "by_compute"

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        from torchvision import transforms as T

        embedded = is_embedded(cfg.data)
        if embedded:
            from sparsify_mlflow.data.embedded import DIGITS_ROWS, MIN_DIGITS_ROWS, digits_image_folder

            rows = embedded_rows(cfg.data, MIN_DIGITS_ROWS, DIGITS_ROWS, DIGITS_ROWS)
            root = digits_image_folder(rows)
        else:
            root = Path(cfg.data).expanduser()
            if not root.exists():
                root = named_image_dataset(cfg.data) or root
        splits = scan_image_folder(root, cfg.seed)
        size = cfg.use_case_options.image_size or (DIGITS_IMAGE_SIZE if embedded else 224)
        resize = int(round(size / 0.875))
        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_tf = T.Compose([T.Resize(resize), T.RandomCrop(size), T.ToTensor(), normalize])
        val_tf = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), normalize])
        warnings = []
        if splits.skipped:
            warnings.append(
                f"skipped {len(splits.skipped)} unreadable image(s), e.g. {splits.skipped[0]}"
            )
        return DataBundle(
            train=ImageFileDataset(splits.train, train_tf),
            val=ImageFileDataset(splits.val, val_tf),
            label_names=splits.classes,
            fingerprint=fingerprint_files(splits.files, root),
            source=f"embedded sklearn digits ({len(splits.files)} images)" if embedded else str(root),
            info={
                "data.layout": splits.layout,
                "data.num_classes": len(splits.classes),
                "data.train_samples": len(splits.train),
                "data.val_samples": len(splits.val),
                "data.skipped_images": len(splits.skipped),
            },
            preprocessing={
                "image_size": size, "resize": resize, "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD), "layout": "NCHW", "color": "RGB",
            },
            warnings=warnings,
            skipped=splits.skipped,
        )

    def create_model(self, cfg: ExperimentConfig, num_labels: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return build_vision_model(cfg.model, num_labels, pretrained)

    def build_model(self, cfg: ExperimentConfig, data: DataBundle) -> nn.Module:
        model, facts = self.create_model(cfg, len(data.label_names), bool(cfg.pretrained))
        data.info.update({f"model.{k}": v for k, v in facts.items()})
        return model

    def make_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        decay = [p for n, p in model.named_parameters() if p.dim() > 1]
        no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
        return torch.optim.SGD(
            [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, momentum=0.9, nesterov=True,
        )

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(model(images.to(device)), labels.to(device))

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        loader = torch.utils.data.DataLoader(data.val, batch_size=batch_size, shuffle=False)
        for images, labels in loader:
            yield [images.numpy()], labels.numpy()

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        from torchmetrics.functional.classification import multiclass_accuracy

        preds, target = collect_predictions(predict, self.eval_batches(data, batch_size))
        n = len(data.label_names)
        values = classification_metrics(preds, target, n)
        if n > 5:
            values["top5_accuracy"] = float(
                multiclass_accuracy(preds, target, num_classes=n, top_k=5, average="micro")
            )
        per_class = multiclass_accuracy(preds, target, num_classes=n, average="none")
        counts = torch.bincount(target, minlength=n)
        table = [
            {"class": name, "accuracy": round(float(acc), 4), "samples": int(count)}
            for name, acc, count in zip(data.label_names, per_class, counts)
        ]
        return Metrics(self.main_metric, values, {"per_class_accuracy": table})

    def sample_inputs(self, data: DataBundle, n: int) -> list[np.ndarray]:
        rows = [data.val[i % len(data.val)][0] for i in range(n)]
        return [torch.stack(rows).numpy()]

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        return ["input"], ["logits"]

    def pruning_scope(self, model: nn.Module) -> PruningScope:
        """Prune every conv and linear weight but the stem conv and the classifier."""
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        first_conv = next(n for n, m in layers if isinstance(m, nn.Conv2d))
        classifier = [n for n, m in layers if isinstance(m, nn.Linear)][-1]
        keep = {
            f"{first_conv}.weight": "stem conv: few weights, sees raw pixels, large accuracy cost when pruned",
            f"{classifier}.weight": "classifier: small, maps features to classes directly",
        }
        prune = tuple(f"{n}.weight" for n, _ in layers if f"{n}.weight" not in keep)
        return PruningScope(prune=prune, keep_dense=keep)

    def serving_model(self, data: DataBundle, folder: Path) -> dict[str, Any]:
        """What to register: a pyfunc that takes images (base64 text, bytes, paths, arrays), applies the
        validation preprocessing and runs model.onnx (see image_pyfunc.py): labels travel in config.json."""
        import base64

        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        example = base64.b64encode(Path(data.val.samples[0][0]).read_bytes()).decode()
        return {
            "python_model": PYFUNC_FILE,
            "code_paths": [Path(m.__file__) for m in (serving_engine, image_inputs)],  # what the model file imports
            "artifacts": {"model": str(folder / "model.onnx"), "config": str(folder / "config.json"),
                          # the QDQ INT8 twin OpenVINO runs, where the export was INT8
                          **({"qdq_model": str(folder / QDQ_FILE)} if (folder / QDQ_FILE).is_file() else {})},
            "input_example": pd.DataFrame({"image": [example]}),
            "signature": ModelSignature(Schema([ColSpec("string", "image")]),
                                        Schema([ColSpec("string", "label"), ColSpec("double", "score"),
                                                ColSpec("long", "label_id")])),
            "model_config": {"engine": "onnxruntime"},  # load_model(..., model_config={"engine": "deepsparse"})
            "pip_requirements": pinned_requirements("numpy", "pandas", "pillow", "onnxruntime"),
        }

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        return {
            "task": "image-classification",
            "labels": data.label_names,
            "inputs": {"input": "float32 [batch, 3, H, W], RGB, resized and normalised as below"},
            "outputs": {"logits": "float32 [batch, num_labels]; argmax is the class index"},
            "preprocessing": data.preprocessing,
        }

