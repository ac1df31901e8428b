"""Promotion gates and benchmark-by-URI on tiny real ONNX models registered in a private sqlite store.

The versions carry the tags `sparsify.run` puts on what it registers (main_metric, main_drop,
speedup, ...), so the gates read exactly what they read after a real experiment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sparsify_mlflow.cli import main


def tiny_onnx():
    """logits = input @ W + b: a float input with a symbolic batch dimension, like the exported models."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def sparsify_tags(drop: float, speedup: float, vs_best_dense: float | None = None) -> dict[str, str]:
    """What experiment.registry_tags tags a version with (the part the gates read); the e2e tests check
    that registration writes these from the run's figures."""
    best = speedup if vs_best_dense is None else vs_best_dense
    return {"main_metric": "accuracy", "accuracy": "0.9000", "main_drop": f"{drop:.2f}", "speedup": f"{speedup:.2f}",
            "speedup_vs_best_dense": f"{best:.2f}", "optim_level": "0.5"}


@dataclass
class Registry:
    """A registered model of its own (named after the test) in the module's store."""

    store: str
    client: MlflowClient
    name: str

    def register(self, tags: dict[str, str], with_example: bool = True, extra_files: list[Path] | None = None) -> str:
        mlflow.set_tracking_uri(self.store)
        with mlflow.start_run():
            example = {"input": np.ones((2, 8), np.float32)} if with_example else None
            info = mlflow.onnx.log_model(tiny_onnx(), name="model", registered_model_name=self.name,
                                         input_example=example, save_as_external_data=False,
                                         onnx_execution_providers=["CPUExecutionProvider"],
                                         extra_files=[str(f) for f in extra_files] if extra_files else None)
        version = str(info.registered_model_version)
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        return version

    def promote(self, *args: str) -> int:
        return main(["promote", "--tracking-uri", self.store, "--registered-model-name", self.name, *args])

    def benchmark(self, *args: str) -> int:
        return main(["benchmark", "--tracking-uri", self.store, *args])

    def alias_of(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except Exception:  # noqa: BLE001 - no such alias
            return None

    def tags(self, version: str) -> dict[str, str]:
        return self.client.get_model_version(self.name, version).tags


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One sqlite store for the module (creating one costs seconds); each test has its own model name."""
    folder = tmp_path_factory.mktemp("registry")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


@pytest.fixture
def reg(shared_store: tuple[str, Path], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Registry:
    store, folder = shared_store
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reviewer-ann")
    monkeypatch.chdir(folder)  # artifacts of the default experiment go to ./mlruns
    return Registry(store, MlflowClient(tracking_uri=store, registry_uri=store), request.node.name[5:45])


def test_promote_passes_the_gates_and_records_who_why_when(reg: Registry, capsys) -> None:
    v1 = reg.register(sparsify_tags(drop=0.4, speedup=3.1))
    reg.client.set_registered_model_alias(reg.name, "candidate", v1)
    assert reg.promote("--alias", "candidate", "--to", "champion", "--max-metric-drop", "1",
                       "--min-speedup", "2", "--reason", "beats the SLA") == 0
    assert f"Promoted {reg.name} version 1 to @champion (no previous holder)" in capsys.readouterr().out
    assert reg.alias_of("champion") == v1 and reg.alias_of("previous-champion") is None
    tags = reg.tags(v1)
    assert tags["promoted_to"] == "champion" and tags["promoted_by"] == "reviewer-ann"
    assert tags["promotion_reason"] == "beats the SLA" and tags["promoted_over_version"] == "none"
    assert tags["promotion_checks"] == "main_drop 0.4 <= 1; speedup_vs_best_dense 3.1 >= 2"
    assert tags["promoted_at"].endswith("+00:00")


def test_each_gate_refuses_with_one_line_and_changes_nothing(reg: Registry, capsys) -> None:
    good = reg.register(sparsify_tags(drop=0.2, speedup=2.5))
    bad = reg.register(sparsify_tags(drop=3.5, speedup=1.4))
    assert reg.promote("--version", good, "--to", "champion") == 0
    capsys.readouterr()
    before = reg.tags(bad)

    assert reg.promote("--version", bad, "--to", "champion", "--max-metric-drop", "1") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: refused: {reg.name} version 2 drops 3.50 points of accuracy, more than --max-metric-drop 1")

    assert reg.promote("--version", bad, "--to", "champion", "--min-speedup", "2") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: refused: {reg.name} version 2 has a speedup_vs_best_dense of 1.40x, below --min-speedup 2")

    assert reg.alias_of("champion") == good and reg.alias_of("previous-champion") is None
    assert reg.tags(bad) == before, "a refused promotion changes nothing"

    # both gates given, both pass (bounds inclusive): accepted
    assert reg.promote("--version", bad, "--to", "champion", "--max-metric-drop", "3.5", "--min-speedup", "1.4") == 0
    assert reg.alias_of("champion") == bad


def test_min_speedup_reads_the_best_dense_engine_unless_told_same_engine(reg: Registry, capsys) -> None:
    """3x over dense on DeepSparse, but only 1.2x over the fastest dense engine (OpenVINO, say)."""
    version = reg.register(sparsify_tags(drop=0.2, speedup=3.0, vs_best_dense=1.2))
    assert reg.promote("--version", version, "--to", "champion", "--min-speedup", "2") == 2
    assert "speedup_vs_best_dense of 1.20x, below --min-speedup 2" in capsys.readouterr().err
    assert reg.alias_of("champion") is None
    assert reg.promote("--version", version, "--to", "champion", "--min-speedup", "2",
                       "--speedup-against", "same-engine") == 0
    assert reg.tags(version)["promotion_checks"] == "speedup 3 >= 2"
    older = reg.register({k: v for k, v in sparsify_tags(drop=0.2, speedup=3.0).items()
                          if k != "speedup_vs_best_dense"})  # registered before the best-dense figure existed
    assert reg.promote("--version", older, "--to", "champion", "--min-speedup", "2") == 0
    assert reg.tags(older)["promotion_checks"].startswith("no speedup_vs_best_dense tag")


def test_min_speedup_vs_int8_gates_on_what_pruning_added_over_int8_alone(reg: Registry, capsys) -> None:
    """3x over dense, but 0.8x the INT8-only reference: refused; a version without the figure too."""
    slower = reg.register(sparsify_tags(drop=0.2, speedup=3.0) | {"speedup_vs_int8_only": "0.80"})
    capsys.readouterr()
    assert reg.promote("--version", slower, "--to", "champion", "--min-speedup-vs-int8", "1") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: refused: {reg.name} version {slower} has a speedup_vs_int8_only of 0.80x, below --min-speedup-vs-int8 1")
    without = reg.register(sparsify_tags(drop=0.2, speedup=3.0))
    assert reg.promote("--version", without, "--to", "champion", "--min-speedup-vs-int8", "1") == 2
    assert "ran without the INT8-only reference, or the reference failed" in capsys.readouterr().err
    unreliable = reg.register(sparsify_tags(drop=0.2, speedup=3.0) | {"speedup_vs_int8_only": "1.70",
                                                                       "benchmark_reliable": "false"})
    assert reg.promote("--version", unreliable, "--to", "champion", "--min-speedup-vs-int8", "1.5") == 2
    assert "unreliable benchmark" in capsys.readouterr().err
    assert reg.alias_of("champion") is None
    faster = reg.register(sparsify_tags(drop=0.2, speedup=3.0) | {"speedup_vs_int8_only": "1.70"})
    assert reg.promote("--version", faster, "--to", "champion", "--min-speedup-vs-int8", "1.5") == 0
    assert reg.tags(faster)["promotion_checks"] == "speedup_vs_int8_only 1.7 >= 1.5"


def test_a_version_without_the_tags_is_refused_when_a_gate_needs_them(reg: Registry, capsys) -> None:
    plain = reg.register({})
    assert reg.promote("--version", plain, "--to", "champion", "--max-metric-drop", "1") == 2
    assert "has no 'main_drop' tag" in capsys.readouterr().err
    assert reg.promote("--version", plain, "--to", "champion") == 0, "no gate, nothing to check"
    assert reg.tags(plain)["promotion_checks"] == "no gates given"


def test_previous_champion_is_kept_and_restorable(reg: Registry, capsys) -> None:
    v1 = reg.register(sparsify_tags(0.1, 2.0))
    v2 = reg.register(sparsify_tags(0.3, 3.0))
    assert reg.promote("--version", v1, "--to", "champion") == 0
    assert reg.promote("--version", v2, "--to", "champion", "--reason", "faster") == 0
    assert "(version 1 is now @previous-champion)" in capsys.readouterr().out
    assert (reg.alias_of("champion"), reg.alias_of("previous-champion")) == (v2, v1)
    old = reg.tags(v1)
    assert old["replaced_by_version"] == v2 and old["demoted_from"] == "champion"
    assert reg.tags(v2)["promoted_over_version"] == v1

    # roll back: the previous champion is promoted again, and the two swap
    assert reg.promote("--alias", "previous-champion", "--to", "champion", "--reason", "rollback") == 0
    assert (reg.alias_of("champion"), reg.alias_of("previous-champion")) == (v1, v2)

    # promoting the holder again changes nothing
    assert reg.promote("--version", v1, "--to", "champion") == 0
    assert "already is @champion; nothing changed" in capsys.readouterr().out
    assert (reg.alias_of("champion"), reg.alias_of("previous-champion")) == (v1, v2)


def test_promote_input_mistakes_are_one_line_errors(reg: Registry, capsys) -> None:
    v1 = reg.register(sparsify_tags(0.1, 2.0))
    capsys.readouterr()
    for args, message in (
        (("--to", "champion"), "give exactly one of --version and --alias"),
        (("--version", v1, "--alias", "candidate", "--to", "champion"), "give exactly one of --version and --alias"),
        (("--version", "9", "--to", "champion"), "has no version 9"),
        (("--alias", "nobody", "--to", "champion"), "has no alias @nobody"),
        (("--version", v1, "--to", "previous-champion"), "--to must name an alias"),
    ):
        assert reg.promote(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_benchmark_by_uri_uses_the_input_example_and_links_the_run(reg: Registry, capsys) -> None:
    v1 = reg.register(sparsify_tags(0.1, 2.0))
    reg.client.set_registered_model_alias(reg.name, "champion", v1)
    assert reg.benchmark("--model-uri", f"models:/{reg.name}@champion", "--batch-size", "1,2",
                         "--engine", "both", "--iterations", "3") == 0
    assert "inputs: input_example" in capsys.readouterr().out
    run = reg.client.get_run(reg.tags(v1)["benchmark_run_id"])
    assert run.info.status == "FINISHED"
    assert reg.client.get_experiment(run.info.experiment_id).name == "sparsify-benchmarks"
    assert run.data.tags["sparsify.registered_model"] == reg.name
    assert run.data.tags["sparsify.registered_version"] == v1
    assert run.data.tags["sparsify.model_uri"] == f"models:/{reg.name}@champion"
    assert run.data.params["input_source"] == "input_example"
    for key in ("deepsparse.bs1.latency_ms_median", "deepsparse.bs2.items_per_second",
                "onnxruntime.bs1.latency_ms_p90", "onnxruntime.bs2.items_per_second", "size.onnx_mb"):
        assert key in run.data.metrics, key
    assert "ms" in reg.tags(v1)["benchmark_summary"]
    logged = mlflow.get_logged_model(reg.client.get_model_version(reg.name, v1).source.removeprefix("models:/"))
    assert "deepsparse.bs1.latency_ms_median" in {m.key for m in logged.metrics}, "shown on the model's page"
    history = reg.client.get_metric_history(run.info.run_id, "deepsparse.bs1.latency_ms_median")
    assert len(history) == 1, "logged once"


def test_benchmark_by_version_generates_inputs_without_an_example(reg: Registry) -> None:
    v1 = reg.register({}, with_example=False)
    assert reg.benchmark("--model-uri", f"models:/{reg.name}/{v1}", "--batch-size", "3", "--engine", "onnxruntime",
                         "--iterations", "3", "--experiment-name", "bench-here") == 0
    run = reg.client.get_run(reg.tags(v1)["benchmark_run_id"])
    assert run.data.params["input_source"] == "generated"
    assert "onnxruntime.bs3.latency_ms_median" in run.data.metrics
    assert not any(k.startswith("deepsparse.") for k in run.data.metrics)
    assert reg.client.get_experiment(run.info.experiment_id).name == "bench-here"


def test_benchmark_on_openvino_runs_the_versions_qdq_twin_or_falls_back_in_one_line(
        reg: Registry, tmp_path: Path, capsys) -> None:
    """The twin is what `sparsify.run` registers beside model.onnx (extra_files/model.qdq.onnx): a copy of the
    model OpenVINO times, then a file OpenVINO refuses, which ONNX Runtime times instead, with one note."""
    import onnx

    from helpers.onnx_files import openvino_refuses

    (tmp_path / "ok").mkdir()
    onnx.save(tiny_onnx(), str(tmp_path / "ok" / "model.qdq.onnx"))
    v1 = reg.register({}, extra_files=[tmp_path / "ok" / "model.qdq.onnx"])
    assert reg.benchmark("--model-uri", f"models:/{reg.name}/{v1}", "--batch-size", "1,2", "--engine", "openvino",
                         "--iterations", "3") == 0
    run = reg.client.get_run(reg.tags(v1)["benchmark_run_id"])
    assert {"openvino.bs1.latency_ms_median", "openvino.bs2.items_per_second"} <= set(run.data.metrics)
    assert not any(k.startswith("onnxruntime.") for k in run.data.metrics) and "note:" not in capsys.readouterr().out

    v2 = reg.register({}, extra_files=[openvino_refuses(tmp_path / "odd" / "model.qdq.onnx")])
    assert reg.benchmark("--model-uri", f"models:/{reg.name}/{v2}", "--batch-size", "1", "--engine", "openvino",
                         "--iterations", "3") == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: OpenVINO cannot compile extra_files/model.qdq.onnx ("), notes
    run = reg.client.get_run(reg.tags(v2)["benchmark_run_id"])
    assert "onnxruntime.bs1.latency_ms_median" in run.data.metrics
    assert not any(k.startswith("openvino.") for k in run.data.metrics)
    assert run.data.tags["sparsify.engine_fallback"] == notes[0].removeprefix("note: ")


def test_reading_commands_refuse_a_store_that_does_not_exist(tmp_path: Path, capsys, monkeypatch) -> None:
    """benchmark and promote only read a store: run from another folder, they say where they looked
    and create nothing there (no empty mlflow.db, no mlartifacts/)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for args in (["benchmark", "--model-uri", "models:/m@champion"],
                 ["promote", "--registered-model-name", "m", "--alias", "candidate"]):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err == f"error: no MLflow store at {tmp_path / 'mlflow.db'}: run this from the folder of your " \
                      "experiments, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)", err
    assert list(tmp_path.iterdir()) == []


def test_benchmark_input_mistakes_are_one_line_errors(reg: Registry, capsys) -> None:
    reg.register({})
    capsys.readouterr()
    for args, message in ((("--model-uri", "runs:/abc/model"), "--model-uri must look like"),
                          (("--model-uri", f"models:/{reg.name}@nope"), "is not in the registry"),
                          (("--model-uri", f"models:/{reg.name}/1", "--batch-size", "0"), "--batch-size must be")):
        assert reg.benchmark(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, err
