"""The benchmark session on real engines: interleaved rounds, ratios by their definition, load detection."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sparsify_mlflow.speed_session import (
    OTHER_CORES_LIMIT,
    Entrant,
    LoadMeter,
    SessionResult,
    plan_session,
    run_session,
)


def matmul_chain(path: Path, depth: int, width: int = 256) -> Path:
    """y = x @ W1 @ W2 ... (depth matmuls): a deeper chain is slower by about depth / other depth."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(depth)
    nodes, inits, previous = [], [], "input"
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / width).astype(np.float32), f"W{i}"))
        output = "output" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"W{i}"], [output]))
        previous = output
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chains")
    return {"slow": matmul_chain(folder / "slow.onnx", 24), "fast": matmul_chain(folder / "fast.onnx", 3)}


ROWS = [np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)]


def test_speedups_are_medians_of_per_round_ratios(chains) -> None:
    entrants = [Entrant("slow", chains["slow"], (("onnxruntime", 1), ("onnxruntime", 16))),
                Entrant("fast", chains["fast"], (("onnxruntime", 1), ("onnxruntime", 16)))]
    result = run_session(entrants, ROWS, iterations=10, rounds=5)
    speedups = result.speedups("slow", "fast")
    assert set(speedups) == {"speedup.onnxruntime.bs1", "speedup.onnxruntime.bs16",  # one engine: the best is it
                             "speedup_vs_best_dense.bs1", "speedup_vs_best_dense.bs16"}
    for name, ratio in speedups.items():
        assert ratio == speedups[name.replace("speedup_vs_best_dense.", "speedup.onnxruntime.")]
        key = name.removeprefix("speedup.").removeprefix("speedup_vs_best_dense.")
        key = key if key.startswith("onnxruntime.") else f"onnxruntime.{key}"
        slow, fast = result.measurements["slow"][key], result.measurements["fast"][key]
        per_round = [s / f for s, f in zip(slow.round_ms, fast.round_ms)]
        assert len(per_round) == 5
        assert ratio.value == statistics.median(per_round)
        assert (ratio.low, ratio.high) == (min(per_round), max(per_round))
        assert slow.result.iterations >= 10 and slow.result.batch_size == int(key.split("bs")[1])
    assert speedups["speedup.onnxruntime.bs16"].value > 2, "24 matmuls against 3 must be measured as faster"


def test_every_candidate_gets_a_same_engine_partner(chains) -> None:
    """A candidate on an engine the reference was not timed on is also timed on ONNX Runtime, which the
    reference always gets, so no ratio compares two engines."""
    entrants, notes = plan_session({"dense": chains["slow"], "sparse": chains["fast"]},
                                   {"dense": ("onnxruntime",), "sparse": ("deepsparse",)}, (1, 4), reference="dense")
    settings = {e.label: set(e.settings) for e in entrants}
    assert settings["dense"] == {("onnxruntime", 1), ("onnxruntime", 4)}
    assert {("onnxruntime", 1), ("onnxruntime", 4)} <= settings["sparse"]
    result = run_session(entrants, ROWS, iterations=2, rounds=2)
    assert set(result.speedups("dense", "sparse")) >= {"speedup.onnxruntime.bs1", "speedup.onnxruntime.bs4"}
    assert not any(name.startswith("speedup.deepsparse") for name in result.speedups("dense", "sparse"))


BURN = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end: pass\n"


@pytest.mark.serial  # "no other load" needs the machine to itself
def test_load_meter_counts_other_processes_on_our_cpus_not_ourselves() -> None:
    meter = LoadMeter()
    with meter.measuring():  # our own busy loop is not contention
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
    assert meter.load().other_cores < OTHER_CORES_LIMIT
    burners = [subprocess.Popen([sys.executable, "-c", BURN, "1.5"]) for _ in meter.cpus]
    try:
        time.sleep(0.2)
        busy = LoadMeter()
        with busy.measuring():
            time.sleep(1.0)
    finally:
        for proc in burners:
            proc.wait()
    assert busy.load().other_cores > 0.5 * len(busy.cpus), busy.load()


def test_reliability_names_the_cause(chains) -> None:
    from sparsify_mlflow.speed_session import Load, Measurement, Ratio

    quiet = SessionResult({}, Load(0.01, 0.0, 2, 5.0), 5)
    assert quiet.reliability({"speedup.deepsparse.bs1": Ratio(2.0, 1.9, 2.1, (2.0,))}).reliable
    busy = SessionResult({}, Load(0.9, 0.0, 2, 5.0), 5)
    verdict = busy.reliability({"speedup.deepsparse.bs1": Ratio(2.0, 1.9, 2.1, (2.0,))})
    assert not verdict.reliable and "other processes used 0.90" in verdict.reason and "--num-cores" in verdict.reason
    spread = quiet.reliability({"speedup.deepsparse.bs1": Ratio(1.0, 0.4, 1.8, (0.4, 1.0, 1.8))})
    assert not spread.reliable and "ranged 0.40x-1.80x" in spread.reason
    stray = (2.0, 2.1, 1.9, 2.0, 4.2, 2.05, 1.95)  # one round twice off, as a tiny model's bs1 on a VM
    assert quiet.reliability({"speedup.deepsparse.bs1": Ratio(2.0, 1.9, 4.2, stray)}).reliable
    wide = (1.0, 1.6, 2.0, 2.4, 3.0, 1.2, 2.8)  # the middle half spans more than half the median
    assert not quiet.reliability({"speedup.deepsparse.bs1": Ratio(2.0, 1.0, 3.0, wide)}).reliable
    from sparsify_mlflow.benchmark import BenchmarkResult

    one = BenchmarkResult("onnxruntime", 1, 2, 1.0, 1.0, 0.0, 1.0, 1000.0, 10, 1, 0.0, None)
    jumpy = SessionResult({"model": {"onnxruntime.bs1": Measurement((1.0, 3.0, 1.0), one)}}, Load(0.0, 0.0, 2, 5.0), 3)
    assert not jumpy.reliability().reliable, "a single model's session judges its latency's spread"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="per-CPU accounting needs sched_getaffinity (Linux)")
def test_load_meter_reads_only_the_cpus_we_may_use() -> None:
    assert set(LoadMeter().cpus) == os.sched_getaffinity(0)


def report(role: str, path: Path, pytorch: float, onnx: float):
    from sparsify_mlflow.export import ExportedModel
    from sparsify_mlflow.results import ModelReport
    from sparsify_mlflow.usecases.base import Metrics

    exported = ExportedModel(path, ("input",), ("output",), 1, 1, 0.0, {})
    return ModelReport(role, "run", Metrics("accuracy", {"accuracy": pytorch}), Metrics("accuracy", {"accuracy": onnx}),
                       "onnxruntime", exported, {}, [], {}, 0.0, 0.0)


def test_the_comparison_follows_its_definitions(chains) -> None:
    """main_drop is 100 x (dense - sparse) of the exported files' metric; each speedup the median of the
    per-round ratios dense / sparse of one session (a flipped sign or an inverted ratio fails here)."""
    from sparsify_mlflow.experiment import compare

    entrants, _ = plan_session({"dense": chains["slow"], "sparse": chains["fast"]},
                               {"dense": ("onnxruntime",), "sparse": ("onnxruntime",)}, (1, 4), reference="dense")
    speed = run_session(entrants, ROWS, iterations=6, rounds=3)
    dense, sparse = report("dense", chains["slow"], 0.91, 0.90), report("sparse", chains["fast"], 0.88, 0.86)
    comparison, reliability = compare(dense, sparse, speed, "sparse")
    assert comparison["main_drop"] == pytest.approx(4.0) and comparison["main_drop_pytorch"] == pytest.approx(3.0)
    for key in ("onnxruntime.bs1", "onnxruntime.bs4"):
        ratios = [d / s for d, s in zip(speed.measurements["dense"][key].round_ms,
                                        speed.measurements["sparse"][key].round_ms)]
        assert comparison[f"speedup.{key}"] == statistics.median(ratios)
        assert (comparison[f"speedup.{key}.min"], comparison[f"speedup.{key}.max"]) == (min(ratios), max(ratios))
        assert comparison[f"speedup.{key}"] > 1, "24 matmuls against 3: the sparse (fast) side is faster"
    assert comparison["benchmark.other_cores"] >= 0 and isinstance(reliability.reliable, bool)


def test_openvino_runs_the_twin_and_best_dense_compares_the_fastest_engines(chains, tmp_path: Path) -> None:
    """The sparse label's OpenVINO file is its twin (here the 3-matmul chain beside a 200-matmul file ONNX
    Runtime runs), and speedup_vs_best_dense is the per-round median of the reference's fastest engine
    over the candidate's fastest, which are different engines here."""
    heavy = matmul_chain(tmp_path / "heavy.onnx", 200)
    entrants, notes = plan_session({"dense": chains["slow"], "sparse": heavy},
                                   {"dense": ("openvino",), "sparse": ("openvino", "onnxruntime")}, (4,),
                                   reference="dense", engine_files={"sparse": {"openvino": chains["fast"]}})
    assert notes == []
    by_label = {e.label: e for e in entrants}
    assert by_label["sparse"].file_for("openvino") == chains["fast"] and by_label["sparse"].file_for("onnxruntime") == heavy
    assert by_label["dense"].file_for("openvino") == chains["slow"]
    assert set(by_label["dense"].settings) == {("openvino", 4), ("onnxruntime", 4)}
    speed = run_session(entrants, ROWS, iterations=6, rounds=3)
    # here at bs4: ORT 3 matmuls 0.02 ms, 24 0.14 ms, 200 5 ms; OpenVINO 0.16, 0.29, 4.7 ms
    sparse, dense = speed.measurements["sparse"], speed.measurements["dense"]
    assert sparse["openvino.bs4"].result.latency_ms_median * 4 < sparse["onnxruntime.bs4"].result.latency_ms_median, \
        "OpenVINO timed the sparse label's 3-matmul twin, not its 200-matmul file"
    speedups = speed.speedups("dense", "sparse")
    best_dense, best_sparse = speed.fastest("dense", 4), speed.fastest("sparse", 4)
    assert best_dense == min(dense, key=lambda k: dense[k].result.latency_ms_median) == "onnxruntime.bs4"
    assert best_sparse == min(sparse, key=lambda k: sparse[k].result.latency_ms_median) == "openvino.bs4"
    ratios = [d / s for d, s in zip(dense[best_dense].round_ms, sparse[best_sparse].round_ms)]
    assert speedups["speedup_vs_best_dense.bs4"].value == statistics.median(ratios)
    assert speedups["speedup_vs_best_dense.bs4"].rounds == tuple(ratios)

    from helpers.onnx_files import openvino_refuses

    refused = openvino_refuses(tmp_path / "sparse" / "model.qdq.onnx")
    entrants, notes = plan_session({"sparse": chains["fast"]}, {"sparse": ("openvino",)}, (1,),
                                   engine_files={"sparse": {"openvino": refused}})
    assert entrants[0].settings == (("onnxruntime", 1),) and len(notes) == 1
    assert notes[0].startswith("OpenVINO cannot compile sparse/model.qdq.onnx (") and "Scaler" in notes[0]
