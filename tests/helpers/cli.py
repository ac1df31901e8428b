"""Calling the CLI and MLproject's entry points from tests."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from mlflow.projects import _project_spec

from helpers import REPO
from sparsify_mlflow.cli import cli, main


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Exit code and the error line; the error must be the only `error:` line and the last one."""
    code = main(list(args))
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) <= 1 and (not errors or lines[-1] == errors[0]), lines
    assert not any("Traceback" in line for line in lines), lines
    return code, (errors[0] + "\n") if errors else ""


def parse(entry_point: str, params: dict[str, str], tmp_path: Path):
    project = _project_spec.load_project(str(REPO))
    command = project.get_entry_point(entry_point).compute_command(params, str(tmp_path))
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "sparsify_mlflow"], command
    name, args = words[3], words[4:]
    return cli.commands[name].make_context(name, args)
