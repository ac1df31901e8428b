"""The use-case contract, driven by the registry: every registered use case builds its data and model,
trains one step, exports, evaluates the exported file and writes its deployment folder through the
same code the experiment uses. A use case added without a tiny setting (settings.py) fails here."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from use_cases.settings import SETTINGS

from sparsify_mlflow.engines import load_engine, predict_batches
from sparsify_mlflow.export import export_onnx
from sparsify_mlflow.options import declared
from sparsify_mlflow.training import torch_predictor
from sparsify_mlflow.usecases import REGISTRY, resolve
from sparsify_mlflow.validation import build_config


def test_every_registered_use_case_has_a_tiny_setting() -> None:
    missing = sorted(set(REGISTRY) - set(SETTINGS))
    assert not missing, f"add a tiny setting to tests/use_cases/settings.py for: {', '.join(missing)}"
    assert not set(SETTINGS) - set(REGISTRY), "a setting for a use case that is not registered"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_use_case_runs_through_the_shared_pipeline(name: str, tmp_path: Path, request) -> None:
    setting = SETTINGS[name]
    case = resolve(name)
    options = dict(setting.options)
    if setting.tiny_bert:
        options["model"] = str(request.getfixturevalue("tiny_bert"))
    cfg = build_config(case, data=str(setting.data(tmp_path)), working_dir=tmp_path / "work", **options)
    assert set(vars(cfg.use_case_options)) == {o.name for o in declared(case.options)}
    cfg = cfg.with_defaults(model=case.default_model, epochs=1, batch_size=4, lr=case.default_lr,
                            pretrained=case.default_pretrained, distill=case.default_distill,
                            eval_metric=case.main_metric)
    data = case.load_data(cfg)
    model = case.build_model(cfg, data)
    scope = case.pruning_scope(model)
    assert scope.prune and not set(scope.prune) & set(scope.keep_dense), "a pruning scope to prune"

    optimizer = case.make_optimizer(model, cfg.lr)
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4, shuffle=False)))
    model.train()
    loss = case.training_step(model, batch, torch.device("cpu"))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss), "one training step gives a finite loss"
    model.eval()

    before = case.evaluate(torch_predictor(model, torch.device("cpu")), data, 4)
    assert before.main_name in case.eval_metric_choices().values()
    inputs, outputs = case.io_names(data)
    sample = case.sample_inputs(data, 2)
    exported = export_onnx(model, tuple(torch.from_numpy(x) for x in sample), tmp_path / "onnx",
                           input_names=inputs, output_names=outputs)
    engine = load_engine(exported.path, "onnxruntime", batch_size=4)
    after = case.evaluate(partial(predict_batches, engine), data, 4)
    assert abs(after.main - before.main) <= 0.05 + 1e-6, "the exported file scores as the model does"
    assert [o.shape[0] for o in engine.run([np.repeat(a[:1], 4, axis=0) for a in sample])] == [4] * len(outputs)

    folder = tmp_path / "deployment"
    folder.mkdir()
    config = case.deployment_config(data)
    json.dumps(config)  # it is written as config.json
    case.deployment_files(data, folder)
    import matplotlib.pyplot as plt

    for figure in case.prediction_figures({"dense": torch_predictor(model, torch.device("cpu"))}, data).values():
        plt.close(figure)
    if case.distills:
        loss, out, ins = case.distillation_step(model, batch, torch.device("cpu"))
        assert torch.isfinite(loss)
