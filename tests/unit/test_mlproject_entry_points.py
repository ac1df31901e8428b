"""The MLproject entry points of the compare-and-promote workflow parse into the CLI they wrap.

`mlflow run -e sweep|promote|benchmark` renders a command line from the parameters; these tests
render it the way MLflow does (its own project loader) and let click parse it, without running.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.projects import _project_spec

from helpers import REPO
from helpers.cli import parse

REQUIRED = {"promote": {"registered_model_name": "m"}, "benchmark": {"model_uri": "models:/m@champion"}}


@pytest.mark.parametrize("entry_point", ["sweep", "promote", "benchmark"])
def test_defaults_parse(entry_point: str, tmp_path: Path) -> None:
    ctx = parse(entry_point, REQUIRED.get(entry_point, {}), tmp_path)
    assert ctx.command.name == entry_point


def test_sweep_takes_every_main_parameter_but_the_single_level() -> None:
    project = _project_spec.load_project(str(REPO))
    main = set(project.get_entry_point("main").parameters)
    sweep = set(project.get_entry_point("sweep").parameters)
    # nproc_per_node: sweeps do not train with several processes yet (README "Long runs")
    assert main - {"optim_level", "recipe", "nproc_per_node"} <= sweep, "the sweep entry point lacks main parameters"
    assert {"optim_levels", "max_metric_drop", "min_speedup"} <= sweep


def test_values_reach_the_options(tmp_path: Path) -> None:
    ctx = parse("sweep", {"optim_levels": "0.3,0.7", "max_metric_drop": "1.5", "epochs": "4"}, tmp_path)
    assert ctx.params["optim_levels"] == "0.3,0.7" and ctx.params["max_metric_drop"] == 1.5
    assert ctx.params["epochs"] == 4 and ctx.params["min_speedup"] is None
    ctx = parse("promote", {"registered_model_name": "m", "alias": "candidate", "min_speedup": "2"}, tmp_path)
    assert ctx.params["alias"] == "candidate" and ctx.params["version"] == "" and ctx.params["min_speedup"] == 2.0
    assert ctx.params["to"] == "champion"
    ctx = parse("benchmark", {"model_uri": "models:/m/3", "engine": "both", "batch_size": "1,4"}, tmp_path)
    assert (ctx.params["model_uri"], ctx.params["engine"], ctx.params["batch_sizes"]) == ("models:/m/3", "both", "1,4")


def test_main_passes_the_process_count(tmp_path: Path) -> None:
    assert parse("main", {}, tmp_path).params["nproc_per_node"] == 1
    assert parse("main", {"nproc_per_node": "2"}, tmp_path).params["nproc_per_node"] == 2


def test_the_default_environment_needs_no_python_download() -> None:
    """`mlflow run .` without --env-manager builds a virtualenv: with no `python:` in python_env.yaml it
    uses the exact Python running mlflow, so nothing is fetched from python.org or compiled."""
    from mlflow.utils.environment import PYTHON_VERSION, _PythonEnv

    env = _PythonEnv.from_yaml(str(REPO / "python_env.yaml"))
    assert env.python == PYTHON_VERSION
    assert {"-c requirements.lock", "-e ."} <= set(env.dependencies)
