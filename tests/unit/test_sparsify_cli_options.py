"""Sparsify parity: the rest of its options, its output folder, engine choice and the OOM step-down.

Unit-level checks first (options at the door, recipe args, train kwargs, teachers, engines,
unsupported ops, the OOM step-down failing), then one end-to-end run that checks many things at
once: DeepSparse disabled by configuration, an allocation failure injected above batch size 4,
and most of the new options, down to the experiment folder and its MLflow copy.
"""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from helpers.cli import parse, run_cli
from helpers.data import make_image_folder
from helpers.mlflow_checks import family, runs_of
from sparsify_mlflow.cli import main
from sparsify_mlflow.config import TrainKwargs
from sparsify_mlflow.engines import deepsparse_status, parse_unsupported_ops, unsupported_op_types
from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.experiment import _check_engine
from sparsify_mlflow.levels import PruningScope, RecipeArgs, plan_recipe, recipe_yaml
from sparsify_mlflow.speed_session import plan_session
from sparsify_mlflow.training import SIMULATED_MEMORY_ENV, OutOfMemory, apply_train_kwargs, is_out_of_memory
from sparsify_mlflow.validation import build_config

SCOPE = PruningScope(prune=("a.weight",), keep_dense={})


# ---- options at the door -------------------------------------------------------------------------

@pytest.mark.parametrize("given,level", [(50, 0.5), ("30", 0.3), (100, 1.0), (1, 1.0), (0.7, 0.7), (0, 0.0)])
def test_optim_level_integers_are_percent(given: object, level: float, tmp_path: Path) -> None:
    assert build_config("cv-classification", optim_level=given, working_dir=tmp_path).optim_level == level


@pytest.mark.parametrize("options,message", [
    ({"optim_level": 150}, "--optim-level 150 is outside [0, 1] (or an integer percent 1..100)"),
    ({"optim_level": 50.5}, "--optim-level 50.5 is outside [0, 1]"),
    ({"recipe_args": '{"num_qat_epochs": 1,'}, "--recipe-args is not valid JSON or YAML"),
    ({"recipe_args": '{"qat_epochs": 1}'}, "--recipe-args: unknown key 'qat_epochs'; valid keys: num_qat_epochs, "),
    ({"recipe_args": "init_lr: 2"}, "--recipe-args: init_lr must be in (0, 1], got 2"),
    ({"recipe_args": '{"num_qat_epochs": 11}'}, "--recipe-args: num_pruning_active_epochs (0) + num_qat_epochs (11) "
                                                "exceed the 10 epochs of the run"),
    ({"train_kwargs": "[1, 2]"}, "--train-kwargs must be a mapping"),
    ({"train_kwargs": '{"grad_clip": "high"}'}, "--train-kwargs: grad_clip: Input should be a valid number"),
    ({"train_kwargs": '{"dropout": 0.1}'}, "--train-kwargs: unknown key 'dropout'; valid keys: weight_decay, "),
    ({"eval_metric": "mAP"}, "--eval-metric 'mAP' is not available for cv-classification; choose one of: "
                             "accuracy, f1, recall, precision"),
    ({"deploy_engine": "tensorrt"}, "--deploy-engine must be one of deepsparse, onnxruntime"),
    ({"teacher": "self"}, "--teacher self is not supported by cv-classification (NLP use cases only)"),
])
def test_bad_values_name_the_option(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config("cv-classification", working_dir=tmp_path, **options)
    assert str(caught.value).startswith(message), caught.value


def test_conflicting_teacher_spellings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--no-distill contradicts --teacher self"):
        build_config("sentiment", distill=False, teacher="self", working_dir=tmp_path)


@pytest.mark.parametrize("args,message", [
    (["--optim-level", "150"], "--optim-level 150 is outside [0, 1]"),
    (["--recipe-args", '{"num_qat_epochs": 1,'], "--recipe-args is not valid JSON or YAML"),
])
def test_bad_values_through_the_cli_stop_before_any_run(capsys, store: str, tmp_path: Path, args: list[str],
                                                        message: str) -> None:
    code, err = run_cli(capsys, "training-aware", "--tracking-uri", store, "--working-dir", str(tmp_path), *args)
    assert code == 2 and err.startswith(f"error: {message}"), err
    assert runs_of(store) == []


def test_sweep_levels_take_percent_too() -> None:
    from sparsify_mlflow.sweep import build_sweep_options

    assert build_sweep_options("30,50,0.7").levels == (0.3, 0.5, 0.7)
    with pytest.raises(ConfigError, match="--optim-levels 150 is outside"):
        build_sweep_options("30,150")


def test_eval_metric_selects_the_logged_metric(tmp_path: Path) -> None:
    assert build_config("cv-classification", eval_metric="f1", working_dir=tmp_path).eval_metric == "f1_macro"
    assert build_config("sentiment", eval_metric="recall", working_dir=tmp_path).eval_metric == "recall_macro"
    default = build_config("cv-classification", working_dir=tmp_path).with_defaults(
        model="m", epochs=1, batch_size=1, lr=0.1, eval_metric="accuracy")
    assert default.eval_metric == "accuracy"


@pytest.mark.parametrize("options,teacher", [
    ({}, "self"), ({"teacher": "off"}, "off"), ({"distill": False}, "off"), ({"distill": True}, "self"),
    ({"teacher": "/models/bert-sst2"}, "/models/bert-sst2"), ({"distill": True, "teacher": "minilm"}, "minilm"),
])
def test_teacher_and_its_older_distill_spelling(options: dict, teacher: str, tmp_path: Path) -> None:
    cfg = build_config("sentiment", working_dir=tmp_path, **options).with_defaults(
        model="m", epochs=1, batch_size=1, lr=1e-4, distill=True)
    assert cfg.teacher == teacher and cfg.distill is (teacher != "off")
    assert cfg.as_params()["config.teacher"] == teacher


def test_mlproject_passes_the_new_parameters(tmp_path: Path) -> None:
    values = {"teacher": "off", "eval_metric": "f1", "recipe_args": '{"num_qat_epochs": 1}',
              "train_kwargs": '{"grad_clip": 1.0}', "deploy_engine": "onnxruntime", "optim_level": "50"}
    for entry_point in ("main", "sweep"):
        params = parse(entry_point, {k: v for k, v in values.items() if entry_point == "main" or k != "optim_level"},
                       tmp_path).params
        assert {k: params[k] for k in ("teacher", "eval_metric", "recipe_args", "train_kwargs", "deploy_engine")} == {
            k: v for k, v in values.items() if k != "optim_level"}
    assert parse("main", {}, tmp_path).params["deploy_engine"] == "deepsparse"


# ---- recipe args, train kwargs ------------------------------------------------------------------

def test_recipe_args_override_the_derived_schedule() -> None:
    args = RecipeArgs(num_qat_epochs=1, num_pruning_active_epochs=4, pruning_init_sparsity=0.2,
                      pruning_update_frequency=0.5, init_lr=0.02, final_lr=0.001, lr_func="cosine")
    plan = plan_recipe(0.5, 10, SCOPE, 0.1, args=args)
    s = plan.schedule
    assert (s.qat_start, s.prune_end, s.init_sparsity, s.update_frequency) == (9.0, 4.0, 0.2, 0.5)
    assert (plan.lr, plan.final_lr, plan.lr_func) == (0.02, 0.001, "cosine")
    text = recipe_yaml(plan)
    assert "lr_func: cosine" in text and "init_sparsity: 0.2" in text and "# --recipe-args:" in text
    assert plan.summary()["recipe.args.num_qat_epochs"] == 1
    untouched = plan_recipe(0.5, 10, SCOPE, 0.1)
    assert (untouched.schedule.qat_start, untouched.lr_func, untouched.recipe_args.given()) == (8.0, "linear", {})


def test_recipe_command_previews_recipe_args(capsys) -> None:
    assert main(["recipe", "--optim-level", "70", "--epochs", "4", "--num-classes", "2",
                 "--recipe-args", '{"num_qat_epochs": 1, "lr_func": "cosine"}']) == 0
    out = capsys.readouterr().out
    quantization = out.split("!QuantizationModifier", 1)[1]
    assert "lr_func: cosine" in out and "start_epoch: 3.0" in quantization.split("\n")[1]


def test_train_kwargs_reach_the_optimizer() -> None:
    weights, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    groups = [{"params": [weights], "weight_decay": 1e-4}, {"params": [bias], "weight_decay": 0.0}]
    sgd = apply_train_kwargs(torch.optim.SGD(groups, lr=0.1, momentum=0.9),
                             TrainKwargs(weight_decay=5e-4, momentum=0.5))
    assert [(g["weight_decay"], g["momentum"]) for g in sgd.param_groups] == [(5e-4, 0.5), (0.0, 0.5)]
    adam = apply_train_kwargs(torch.optim.AdamW([weights], lr=0.1), TrainKwargs(momentum=0.8))
    assert adam.param_groups[0]["betas"] == (0.8, 0.999)


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(MemoryError()) and is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        assert is_out_of_memory(exc)
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("x"))


def test_oom_step_down_fails_clearly_after_three_retries(monkeypatch, tmp_path: Path) -> None:
    """An allocation failure at every batch size above 1: 16 -> 8 -> 4 -> 2, then a clear error."""
    from sparsify_mlflow import usecases
    from sparsify_mlflow.training import Stage, train_stepping_down

    monkeypatch.setenv(SIMULATED_MEMORY_ENV, "1")
    cfg = build_config("cv-classification", data=make_image_folder(tmp_path / "d", per_class=8), image_size=16,
                       working_dir=tmp_path).with_defaults(model="resnet18", epochs=1, batch_size=16, lr=0.1)
    case = usecases.resolve(cfg.use_case)
    data = case.load_data(cfg)
    model = case.build_model(cfg, data)
    retries = []
    with pytest.raises(OutOfMemory, match=r"at batch size 2 after 3 step-down\(s\) \(16 -> 8 -> 4 -> 2\)"):
        recipe = recipe_yaml(plan_recipe(0.0, 1, case.pruning_scope(model), 0.1))
        train_stepping_down(model, case, data, case.pruning_scope(model),
                            Stage(recipe, 16, 0.1, 0, "dense", tmp_path / "logs"), torch.device("cpu"),
                            on_retry=retries.append)
    assert [(r.failed_batch_size, r.next_batch_size) for r in retries] == [(16, 8), (8, 4), (4, 2)]
    assert "can't allocate memory" in retries[0].error


# ---- engines --------------------------------------------------------------------------------------

def test_deploy_engine_chooses_what_benchmarks(tmp_path: Path) -> None:
    """The dense reference is also timed on ONNX Runtime; with ONNX Runtime as the deploy engine DeepSparse
    is not even probed (the files need not exist), and ONNX Runtime checks the metric."""
    files = {"dense": tmp_path / "absent-dense.onnx", "sparse": tmp_path / "absent-sparse.onnx"}
    entrants, notes = plan_session(files, {"dense": ("onnxruntime",), "sparse": ("onnxruntime",)}, (1, 4),
                                   reference="dense")
    assert [e.settings for e in entrants] == [(("onnxruntime", 1), ("onnxruntime", 4))] * 2 and notes == []
    cfg = build_config("cv-classification", deploy_engine="onnxruntime", benchmark_batch_size=4, working_dir=tmp_path)
    assert _check_engine(files["sparse"], cfg) == ("onnxruntime", 4)


DIAGNOSE_LOG = """\
[nm_ort >DIAGNOSE< operator() nm_execution_provider.cc:287] == NMExecutionProvider::GetCapability ==
Printing GraphViewer main_graph:
Node 0: Conv /c/Conv
Node 1: Relu /Relu
Node 2: Sin /Sin
Node 3: Gemm /l/Gemm

[nm_ort >DIAGNOSE< supported_subgraphs subgraphs.cc:826] Printing subgraph:
Node 0: Conv /c/Conv
Node 1: Relu /Relu

[nm_ort >DIAGNOSE< supported_subgraphs subgraphs.cc:826] Printing subgraph:
Node 3: Gemm /l/Gemm
"""


def test_unsupported_ops_are_read_from_the_compile_log() -> None:
    assert parse_unsupported_ops(DIAGNOSE_LOG) == {"Sin": 1}
    assert parse_unsupported_ops("no diagnose output") == {}


@pytest.mark.skipif(not deepsparse_status()[0], reason="DeepSparse cannot run here")
def test_unsupported_ops_of_a_real_graph(tmp_path: Path) -> None:
    """A graph with ops DeepSparse leaves to its fallback: its fraction is below 1 and they are named."""
    import deepsparse

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cumsum(torch.sin(torch.relu(self.conv(x))).mean((2, 3)), 1))

    path = tmp_path / "odd.onnx"
    torch.onnx.export(Odd(), torch.randn(1, 3, 8, 8), str(path), input_names=["input"], opset_version=13)
    assert deepsparse.compile_model(str(path), batch_size=1, num_cores=1).fraction_of_supported_ops < 1.0
    ops = unsupported_op_types(path, num_cores=1)
    assert {"Sin", "CumSum"} <= set(ops) and "Conv" not in ops


# ---- end to end -----------------------------------------------------------------------------------

@pytest.mark.e2e
def test_parity_run_fallback_oom_options_folder_and_its_mlflow_copy(monkeypatch, store: str, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSIFY_DISABLE_DEEPSPARSE", "1")     # DeepSparse "unavailable", by configuration
    monkeypatch.setenv(SIMULATED_MEMORY_ENV, "4")               # batches above 4 fail to allocate
    data = make_image_folder(tmp_path / "images", per_class=24)  # 36 rows: QAT (the last half) gets a step of 16
    summary_path = tmp_path / "summary.json"
    assert main(["training-aware", "--data", str(data), "--model", "resnet18", "--no-pretrained", "--epochs", "1",
                 "--batch-size", "16", "--image-size", "32", "--benchmark-batch-size", "4",
                 "--benchmark-iterations", "3",
                 "--benchmark-rounds", "3",
                 "--no-int8-reference", "--optim-level", "50", "--eval-metric", "f1", "--teacher", "off",
                 "--recipe-args", "num_qat_epochs: 0.5\npruning_init_sparsity: 0.1",
                 "--train-kwargs", '{"weight_decay": 0.0005, "grad_clip": 5}', "--deploy-engine", "deepsparse",
                 "--tracking-uri", store, "--working-dir", str(tmp_path / "work"),
                 "--summary-json", str(summary_path), "--registered-model-name", "parity"]) == 0
    summary = json.loads(summary_path.read_text())
    parent, children = family(store, summary["parent_run_id"])
    tags, params = parent.data.tags, parent.data.params

    # options landed: percent level, eval metric as the main one everywhere, recipe args, train kwargs
    assert params["config.optim_level"] == "0.5" and params["recipe.target_sparsity"] == "0.7"
    assert summary["main_metric"] == "f1_macro" and "sparse.f1_macro" in parent.data.metrics
    assert params["recipe.schedule.qat_start"] == "0.5" and params["recipe.schedule.init_sparsity"] == "0.1"
    assert json.loads(params["config.train_kwargs"]) == {"weight_decay": 0.0005, "grad_clip": 5.0}
    assert params["config.teacher"] == "off" and params["config.deploy_engine"] == "deepsparse"
    version = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version_by_alias("parity", "candidate")
    assert version.tags["main_metric"] == "f1_macro" and version.tags["engine"] == "onnxruntime"

    # the device used, and the fallback said out loud (tag + summary note), never silent
    assert tags["sparsify.device"] == "cpu"
    assert "SPARSIFY_DISABLE_DEEPSPARSE" in tags["sparsify.engine_fallback"]
    assert any("DeepSparse unavailable" in note for note in summary["notes"])
    assert not any(k.startswith("deepsparse.") for k in summary["sparse"])

    # OOM step-down: 16 -> 8 -> 4 in both stages, each retry logged
    for child in children.values():
        assert child.data.params["train.batch_size"] == "4" and child.data.params["train.oom_retries"] == "2"
        assert child.data.tags["sparsify.oom_retry.1"].startswith("batch size 16 -> 8: RuntimeError")
        assert child.data.tags["sparsify.oom_retry.2"].startswith("batch size 8 -> 4")

    # Sparsify's folder layout, its deployment README and metrics.yaml
    folder = Path(summary["artifacts"]["experiment_dir"])
    assert folder.parent == tmp_path / "work" and folder.name.startswith("training-aware_cv-classification_")
    assert {p.name for p in (folder / "deployment").iterdir()} == {"model.onnx", "model.qdq.onnx", "recipe.yaml",
                                                                   "config.json", "README.md"}
    readme = (folder / "deployment" / "README.md").read_text()
    for needle in ("compile_model(\"model.onnx\"", "ort.InferenceSession(\"model.onnx\"", "| OpenVINO | `model.qdq.onnx` |",
                   "compile_model(\"model.qdq.onnx\", \"CPU\", {\"INFERENCE_PRECISION_HINT\": \"f32\"})",
                   "the INT8 file runs with its float ops at f32", "| input | `input` | "
                   "float32 | [batch, 3, 32, 32] |", "| sparse | onnxruntime | 4 |", "f1_macro:",
                   "DeepSparse unavailable", summary["parent_run_id"]):
        assert needle in readme, needle
    metrics = yaml.safe_load((folder / "training_artifacts" / "metrics.yaml").read_text())
    assert metrics["main_metric"] == "f1_macro"
    assert metrics["sparse"]["f1_macro"] == pytest.approx(summary["sparse"]["f1_macro"], abs=1e-6)
    assert [row["epoch"] for row in metrics["history"]["sparse"]] == [1]
    assert {"model.pt", "model.onnx"} <= {p.name for p in (folder / "training_artifacts" / "sparse").iterdir()}
    assert any((folder / "logs").iterdir())

    # the MLflow copy is the same folder, file for file
    copy = Path(MlflowClient(tracking_uri=store).download_artifacts(parent.info.run_id, "experiment",
                                                                    str(tmp_path / "download")))
    files = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    assert files == {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    assert all(filecmp.cmp(folder / f, copy / f, shallow=False) for f in files)
