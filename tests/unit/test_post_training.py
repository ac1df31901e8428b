"""The INT8-only reference: post-training quantization that calibrates and trains nothing, and its verdict."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from sparsify_mlflow import usecases
from sparsify_mlflow.export import export_onnx
from sparsify_mlflow.levels import PruningScope, post_training_recipe
from sparsify_mlflow.post_training import MAX_DROP_PT, quantize_post_training, reference_failure
from sparsify_mlflow.results import Int8Only, ModelReport
from sparsify_mlflow.summary import int8_only_line
from sparsify_mlflow.usecases.base import DataBundle, Metrics
from sparsify_mlflow.usecases.vision import build_vision_model


def test_the_recipe_only_quantizes_from_the_start() -> None:
    scope = PruningScope(prune=("layer1.0.conv1.weight",), keep_dense={}, quant_ignore=("fc",))
    recipe = post_training_recipe(scope)
    body = yaml.safe_load(recipe.replace("!QuantizationModifier", ""))
    assert list(body) == ["version", "quantization_modifiers"]
    (modifier,) = body["quantization_modifiers"]
    assert modifier["start_epoch"] == 0.0 and modifier["ignore"] == ["fc"]
    assert modifier["scheme"]["weights"] == {"num_bits": 8, "symmetric": True}
    assert "Pruning" not in recipe and "freeze_bn_stats_epoch" not in recipe


def test_calibration_moves_the_observers_and_no_weight(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = build_vision_model("resnet18", 3, pretrained=False)
    images = torch.randn(40, 3, 32, 32)
    model.train()
    with torch.no_grad():  # BatchNorm statistics of real-ish activations, as after a fine-tune
        model(images)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = DataBundle(torch.utils.data.TensorDataset(images, torch.randint(0, 3, (40,))), [], ["a", "b", "c"], "x", "")
    case = usecases.resolve("cv-classification")
    quantized = quantize_post_training(model, case, data, case.pruning_scope(model), batch_size=8, seed=0, samples=24)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the dense model is left alone"
    observed = {k: v for k, v in quantized.state_dict().items() if k.endswith("activation_post_process.min_val")}
    assert observed and all(v.numel() and torch.isfinite(v).all() for v in observed.values()), "observers calibrated"
    weights = {k.replace(".module.", ".").removeprefix("module."): v for k, v in quantized.state_dict().items()
               if k.endswith(".weight") and "activation_post_process" not in k}
    assert torch.equal(weights["fc.weight"], before["fc.weight"]), "calibration trains no weight"

    exported = export_onnx(quantized, (images[:2],), tmp_path)
    assert exported.quantized and exported.weight_sparsity < 0.05
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.path))
    int8 = session.run(None, {session.get_inputs()[0].name: images[:16].numpy()})[0]
    with torch.no_grad():
        fp32 = model(images[:16]).numpy()
    # 10% of the largest logit; 20% without VNNI, where ORT's emulated u8 x s8 dot products saturate in int16
    # (CI's AVX2-only machine: 10.002%). Uncalibrated or wrong scales miss by far more.
    from sparsify_mlflow.engines import cpu_info

    share = 0.1 if cpu_info()["vnni"] else 0.2
    assert np.abs(int8 - fp32).max() < share * np.abs(fp32).max(), "the INT8 file computes what the dense model does"


def _report(main: float, quantized: bool = True) -> ModelReport:
    class Exported:
        pass

    exported = Exported()
    exported.quantized = quantized
    metrics = Metrics("accuracy", {"accuracy": main})
    return ModelReport("int8_only", "run", metrics, metrics, "deepsparse", exported, {}, [], {}, 0.0, 0.0)


@pytest.mark.parametrize(("reference", "verdict"), [
    (_report(0.79), None),                               # 2 points lost: a working calibration
    (_report(0.80 - MAX_DROP_PT / 100 - 0.001), "points lost"),
    (_report(0.10), "points lost"),                      # collapsed to chance (NNCF on a small ResNet-18)
    (_report(0.81, quantized=False), "no INT8 operator"),
])
def test_a_reference_that_lost_too_much_or_is_not_int8_fails(reference: ModelReport, verdict: str | None) -> None:
    failure = reference_failure(_report(0.80), reference)
    assert failure is None if verdict is None else verdict in failure


def _result(reference: Int8Only, gains: dict[int, float]) -> SimpleNamespace:
    comparison = {f"speedup_vs_int8_only.bs{bs}": g for bs, g in gains.items()} | {"main_drop_vs_int8_only": 0.4}
    return SimpleNamespace(int8_only=reference, comparison=comparison, dense=_report(0.80),
                           config=SimpleNamespace(benchmark_batch_size=16))


def test_the_summary_line_says_what_pruning_added_or_that_int8_alone_wins() -> None:
    assert int8_only_line(SimpleNamespace(int8_only=None)) is None
    gained = int8_only_line(_result(Int8Only(_report(0.79)), {1: 1.7, 16: 2.1}))
    assert "accuracy 0.7900 (-1.00 pt vs dense)" in gained
    assert "pruning adds 1.70x at bs1 and 2.10x at bs16 over it, at -0.40 pt" in gained
    lost = int8_only_line(_result(Int8Only(_report(0.79)), {1: 0.5, 16: 0.9}))
    assert "INT8 alone is faster here: pruning gives 0.50x at bs1 and 0.90x at bs16 over it" in lost
    mixed = int8_only_line(_result(Int8Only(_report(0.79)), {1: 0.5, 16: 1.2}))
    assert "pruning pays over it at one batch size, not the other: 1.20x at bs16, but 0.50x at bs1, at" in mixed
    failed = int8_only_line(_result(Int8Only(_report(0.1), "accuracy 0.1000 vs ..."), {}))
    assert "failed, so nothing is compared with it: accuracy 0.1000" in failed
