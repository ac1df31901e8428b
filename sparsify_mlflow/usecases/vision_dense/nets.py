"""Dense-prediction networks for cv-detection and cv-segmentation: one QAT-ready trunk, two heads.

The trunk is torchvision's QAT-ready ResNet-18 (`torchvision.models.quantization`, BSD) up to
`layer3` (stride 16), plus a small neck that upsamples it x2 (nearest) and adds a 1x1 lateral of
`layer2`, giving one stride-8 feature map. Plain Conv/BN/ReLU/Add/Resize only, so DeepSparse runs
the whole graph; `layer4` is left out because at the small inputs trained on CPU it would shrink to
1x1 maps (a DeepSparse-on-AVX2 crash at batch >= 16, STACK.md) and adds 8M weights for little gain.

The networks return raw maps only (no sigmoid, no decoding, no NMS): that is what goes into the
ONNX file, and `detection_decode` / `segmentation_metrics` post-process PyTorch and ONNX outputs
with the same code.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsify_mlflow.errors import ModelError

STRIDE = 8
NECK_CHANNELS = 128
# Names of the final prediction convs: kept dense and left in FP32 (see the use cases' pruning_scope).
DETECTION_OUTPUTS = ("heatmap_head.2", "box_head.2")
SEGMENTATION_OUTPUTS = ("classifier.2",)
BACKBONES = ("resnet18",)


class Trunk(nn.Module):
    """ResNet-18 stem + layer1..3 and a stride-8 neck (layer3 upsampled + lateral of layer2)."""

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        import torchvision

        weights = None
        if pretrained:
            from sparsify_mlflow.usecases.vision import _download_weights

            weights = _download_weights("resnet18")
        net = torchvision.models.quantization.resnet18(weights=weights, quantize=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.lateral = _conv_bn_relu(128, NECK_CHANNELS, 1)
        self.top = _conv_bn_relu(256, NECK_CHANNELS, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.smooth = _conv_bn_relu(NECK_CHANNELS, NECK_CHANNELS, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return self.smooth(self.lateral(c3) + self.up(self.top(c4)))


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _head(cin: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    """3x3 conv + ReLU, then the final 1x1 prediction conv (index 2)."""
    head = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1), nn.ReLU(), nn.Conv2d(cin, cout, 1))
    nn.init.constant_(head[2].bias, bias)
    return head


class CenterNetLite(nn.Module):
    """Anchor-free detector (CenterNet-style): per stride-8 cell, a class heatmap (logits) and a
    box map (centre offset x, y in cells; width, height in cells, log-encoded)."""

    def __init__(self, num_classes: int, pretrained: bool) -> None:
        super().__init__()
        self.trunk = Trunk(pretrained)
        self.heatmap_head = _head(NECK_CHANNELS, num_classes, bias=-2.19)  # prior 0.1: stable focal loss start
        self.box_head = _head(NECK_CHANNELS, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.heatmap_head(features), self.box_head(features)


class FCNLite(nn.Module):
    """Semantic segmentation: per stride-8 cell, logits over background + classes.

    Upsampling the logits to the image size happens after the engine (bilinear, project code),
    so the ONNX file stays a plain conv net and the output is 64x smaller to copy.
    """

    def __init__(self, num_classes: int, pretrained: bool) -> None:
        super().__init__()
        self.trunk = Trunk(pretrained)
        self.classifier = _head(NECK_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


def build_dense_model(kind: str, name: str, num_outputs: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The detector (`kind="detection"`) or segmenter with `num_outputs` classes; facts to log."""
    from pathlib import Path

    path = Path(name).expanduser()
    arch = name.lower().replace("-", "")
    if path.suffix.lower() in (".pt", ".pth"):
        return _from_checkpoint(kind, path, num_outputs)
    if arch not in BACKBONES:
        raise ModelError(f"unknown model {name!r} for {kind}: choose one of {', '.join(BACKBONES)} "
                         "(backbone of the built-in head) or a .pt/.pth checkpoint saved by this tool")
    cls = CenterNetLite if kind == "detection" else FCNLite
    head = "centernet-lite" if kind == "detection" else "fcn-lite"
    return cls(num_outputs, pretrained), {"arch": f"{arch}-{head}", "pretrained": pretrained,
                                          "qat_ready_variant": True, "stride": STRIDE}


def _from_checkpoint(kind: str, path, num_outputs: int) -> tuple[nn.Module, dict[str, Any]]:
    """A state dict of the same network (e.g. the dense baseline's checkpoint/model.pt)."""
    if not path.is_file():
        raise ModelError(f"model checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise ModelError(f"{path} is not a loadable state dict ({type(exc).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    model, facts = build_dense_model(kind, "resnet18", num_outputs, pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError) as exc:
        raise ModelError(f"{path} does not match the {facts['arch']} network with {num_outputs} outputs: "
                         f"{str(exc).splitlines()[0]}") from None
    return model, facts | {"checkpoint": str(path), "pretrained": True}
