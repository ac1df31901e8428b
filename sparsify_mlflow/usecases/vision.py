"""torchvision models for the CV use cases: QAT-ready variants, pretrained weights, checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify_mlflow.errors import ModelError
from sparsify_mlflow.options import option, positive_int


@dataclass(frozen=True)
class VisionOptions:
    """The CV use cases' own options."""

    image_size: int | None = option(None, "CV input size in pixels (default: 224; 40 for the embedded digits; "
                                    "detection/segmentation: 64).", check=positive_int)

# torchvision.models.quantization: the variants that survive QAT (no shared ReLU, no in-place
# residual add). Plain torchvision resnets fail under QAT (STACK.md), so these names map here.
QAT_READY = (
    "resnet18", "resnet50", "resnext101_32x8d", "resnext101_64x4d", "mobilenet_v2",
    "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0", "googlenet", "inception_v3",
)
CHECKPOINT_SUFFIXES = (".pt", ".pth")
ALIASES = {"resnet-18": "resnet18", "resnet-50": "resnet50", "mobilenetv2": "mobilenet_v2"}


def known_model_names() -> list[str]:
    import torchvision

    return sorted(set(QAT_READY) | set(torchvision.models.list_models(module=torchvision.models)))


def build_vision_model(name: str, num_classes: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    """A torchvision model (QAT-ready variant when one exists) with its head sized to the labels.

    `name` is a torchvision name or a local .pt/.pth checkpoint; returns the model and facts to log.
    """
    path = Path(name).expanduser()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or path.exists():
        return _from_checkpoint(path, num_classes)
    arch = ALIASES.get(name.lower(), name.lower())
    if arch not in known_model_names():
        raise ModelError(
            f"unknown model {name!r}: not a torchvision model name nor a .pt/.pth file; "
            f"QAT-ready choices: {', '.join(QAT_READY)}"
        )
    model = _construct(arch, weights=_download_weights(arch) if pretrained else None)
    replace_classifier(model, num_classes)
    return model, {"arch": arch, "pretrained": pretrained, "qat_ready_variant": arch in QAT_READY}


def _construct(arch: str, weights: Any = None, num_classes: int | None = None) -> nn.Module:
    import torchvision

    kwargs: dict[str, Any] = {"weights": weights}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=weights is None)
    if arch in QAT_READY:
        return getattr(torchvision.models.quantization, arch)(quantize=False, **kwargs)
    return torchvision.models.get_model(arch, **kwargs)


def _download_weights(arch: str) -> Any:
    """The torchvision DEFAULT weights, downloaded (or taken from the torch hub cache)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        weights.get_state_dict(progress=True)  # fetch now, so a failure is reported here
    except Exception as exc:  # urllib/http/socket errors vary by platform
        raise ModelError(
            f"could not download pretrained weights for {arch} ({type(exc).__name__}: {exc}); "
            "without internet pass --no-pretrained, or --model a local .pt/.pth checkpoint"
        ) from None
    return weights


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Resize the last Linear layer to `num_classes` outputs; return its module name."""
    name, last = _last_linear(model)
    if last.out_features != num_classes:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))
    return name


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no Linear classifier to resize")
    return linears[-1]


def _from_checkpoint(path: Path, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """Load a state dict safely (weights_only: no pickled code runs) and find its architecture."""
    if not path.is_file():
        raise ModelError(f"model checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path} is not a loadable state dict ({type(exc).__name__}); pickled modules are not "
            "loaded for safety: save `{'arch': 'resnet50', 'state_dict': model.state_dict()}` instead"
        ) from None
    if not isinstance(payload, dict):
        raise ModelError(f"{path} holds a {type(payload).__name__}, expected a state dict")
    state = payload.get("state_dict") or payload.get("model") or payload
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} has no tensor state dict (keys: {', '.join(list(payload)[:5])})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    arch = payload.get("arch") or payload.get("arch_key") or _infer_arch(state, path)
    ckpt_classes = _classifier_outputs(state)
    model = _construct(arch, num_classes=ckpt_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not match architecture {arch}: {str(exc).splitlines()[0]}") from None
    replace_classifier(model, num_classes)
    return model, {"arch": arch, "checkpoint": str(path), "pretrained": True, "qat_ready_variant": arch in QAT_READY}


def _classifier_outputs(state: dict[str, torch.Tensor]) -> int:
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else 1000


def _infer_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    """The QAT-ready architecture whose parameter names and shapes match the checkpoint."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for arch in QAT_READY:
        candidate = _construct(arch, num_classes=_classifier_outputs(state)).state_dict()
        if {k: tuple(v.shape) for k, v in candidate.items()} == shapes:
            return arch
    raise ModelError(
        f"cannot tell the architecture of {path}; save it as "
        "{'arch': '<torchvision name>', 'state_dict': ...}"
    )
