"""Model loading for CV: torchvision names, safe checkpoints, head resizing, offline weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sparsify_mlflow.cli import main
from sparsify_mlflow.errors import ModelError
from sparsify_mlflow.usecases.vision import build_vision_model


def test_named_model_uses_the_qat_ready_variant_and_resizes_the_head() -> None:
    model, facts = build_vision_model("resnet18", num_classes=3, pretrained=False)
    assert type(model).__module__.startswith("torchvision.models.quantization")
    assert model.fc.out_features == 3
    assert facts == {"arch": "resnet18", "pretrained": False, "qat_ready_variant": True}


def test_checkpoint_with_arch_key(tmp_path: Path) -> None:
    source, _ = build_vision_model("resnet18", num_classes=5, pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save({"arch": "resnet18", "state_dict": source.state_dict()}, path)
    model, facts = build_vision_model(str(path), num_classes=5, pretrained=False)
    assert facts["arch"] == "resnet18" and facts["checkpoint"] == str(path)
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_plain_state_dict_architecture_is_inferred_and_head_resized(tmp_path: Path) -> None:
    source, _ = build_vision_model("resnet18", num_classes=7, pretrained=False)
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    model, facts = build_vision_model(str(path), num_classes=2, pretrained=False)
    assert facts["arch"] == "resnet18"
    assert model.fc.out_features == 2
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module: loading it would run code
    with pytest.raises(ModelError, match="pickled modules are not loaded for safety"):
        build_vision_model(str(path), num_classes=2, pretrained=False)


def test_missing_checkpoint() -> None:
    with pytest.raises(ModelError, match="model checkpoint /nope/model.pth does not exist"):
        build_vision_model("/nope/model.pth", num_classes=2, pretrained=False)


def test_unknown_name_lists_qat_ready_choices() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet9000'.*resnet50"):
        build_vision_model("resnet9000", num_classes=2, pretrained=False)


def test_pretrained_weights_without_internet_say_what_to_do(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: a download is needed
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # a closed port: offline
        monkeypatch.setenv(var, "http://127.0.0.1:9")                     # even where internet is
    with pytest.raises(ModelError, match="could not download pretrained weights for resnet18.*--no-pretrained"):
        build_vision_model("resnet18", num_classes=2, pretrained=True)


def test_recipe_command_prints_the_derived_recipe(capsys) -> None:
    assert main(["recipe", "--use-case", "image-classification", "--optim-level", "0.65", "--epochs", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Sparsify-style recipe")
    assert "!QuantizationModifier" in out and "conv1.weight: stem conv" in out and "fc.weight: classifier" in out
    # image classification spreads the 77.5% by_compute: each pruned layer past the break-even sparsity
    assert "# layer allocation by_compute (the use case's default" in out and "final_sparsity: 0.775" not in out
    assert main(["recipe", "--use-case", "image-classification", "--optim-level", "0.65", "--epochs", "6",
                 "--recipe-args", '{"layer_allocation": "uniform"}']) == 0
    assert "final_sparsity: 0.775" in capsys.readouterr().out
