"""Models in MLflow: each exported file logged as a named LoggedModel, the result registered with
tags, a description and an alias.

Registration is the last step of an experiment and is all-or-nothing: if tagging or aliasing
fails after the version was created, the version is deleted again.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CANDIDATE_ALIAS = "candidate"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str | None       # None: registered without an alias (the levels of a sweep)
    model_uri: str          # models:/NAME@ALIAS, or models:/NAME/VERSION without an alias


@dataclass(frozen=True)
class LoggedModel:
    """A model logged in a run (an MLflow 3 LoggedModel): what registration and linked metrics point at."""

    name: str
    model_id: str
    model_uri: str          # models:/<model_id>


def pinned_requirements(*packages: str) -> list[str]:
    """pip requirements of a served model: each package at the version installed here (unpinned if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in packages:
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            out.append(package)
    return out


# The step our LoggedModels are logged at: MLflow's log_model links every run metric of its `step` (0 by
# default: all our evaluation figures) to the new model, ahead of the headline, which exists only after the
# benchmark; the Models page orders its columns by first logging, so the speedups sat past the evaluation's
# dozens. No metric is logged at step -1: each model gets exactly the figures `link_metrics` gives it.
MODEL_STEP = -1


def log_onnx(onnx_path: Path, name: str, *, example_inputs: dict[str, np.ndarray] | None = None,
             example_outputs: dict[str, np.ndarray] | None = None, params: dict[str, str],
             extra_files: list[Path] | None = None) -> LoggedModel:
    """Log the ONNX file (onnx flavor; a signature and input example when given) as a LoggedModel of
    the active run, named `name`; `extra_files` (the QDQ twin) go into the model's `extra_files/` folder."""
    import onnx
    from mlflow.models import infer_signature

    signature = None if example_inputs is None else infer_signature(example_inputs, example_outputs)
    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name=name,
        signature=signature,
        input_example=example_inputs,
        params=params,
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],  # the models are built for CPU engines
        step=MODEL_STEP,
        # given, not inferred: MLflow would start a Python process (~4 s) to find what we know
        pip_requirements=pinned_requirements("onnx", "onnxruntime", "numpy"),
        extra_files=[str(f) for f in extra_files] if extra_files else None,
    )
    return LoggedModel(name, info.model_id, info.model_uri)


def log_pyfunc(name: str, *, python_model: Path, artifacts: dict[str, str], input_example: Any, signature: Any,
               pip_requirements: list[str], params: dict[str, str], model_config: dict[str, Any] | None = None,
               code_paths: list[Path] | None = None) -> LoggedModel:
    """Log a pyfunc ("models from code": `python_model` is a .py file calling mlflow.models.set_model)
    with its artifacts (e.g. model.onnx + tokenizer) as a LoggedModel of the active run.

    For use cases whose users predict on raw inputs (text), not on tensors.
    """
    with warnings.catch_warnings():  # the explicit signature is the schema; no type-hint inference wanted
        warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(python_model),
            artifacts=artifacts,
            input_example=input_example,
            signature=signature,
            pip_requirements=pip_requirements,
            model_config=model_config,  # defaults a caller may override at load time
            code_paths=[str(p) for p in code_paths] if code_paths else None,  # modules the model file imports
            params=params,
            step=MODEL_STEP,
        )
    return LoggedModel(name, info.model_id, info.model_uri)


def find_logged_model(experiment_id: str, run_id: str, name: str) -> LoggedModel | None:
    """The LoggedModel `name` that run `run_id` logged (a reused dense baseline's), if any."""
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    return LoggedModel(name, found[0].model_id, f"models:/{found[0].model_id}") if found else None


def link_metrics(model: LoggedModel, run_id: str, metrics: dict[str, float]) -> None:
    """Metrics of `run_id` linked to the model (its columns on the experiment's Models page), in order."""
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=run_id, model_id=model.model_id,
                           synchronous=True)


def register(model: LoggedModel, name: str, *, tags: dict[str, str], description: str,
             alias: str | None = CANDIDATE_ALIAS) -> RegisteredVersion:
    """A new version of registered model `name` pointing at the LoggedModel, tagged and aliased."""
    version = mlflow.register_model(model.model_uri, name)
    return _tag_and_alias(name, str(version.version), tags, description, alias)


def _tag_and_alias(name: str, version: str, tags: dict[str, str], description: str, alias: str | None
                   ) -> RegisteredVersion:
    """Tags, description and alias on a new version; the version is deleted again if any fails."""
    client = MlflowClient()
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.update_model_version(name, version, description=description)
        if alias is not None:
            _set_alias(client, name, alias, version)
    except BaseException:
        client.delete_model_version(name, version)
        raise
    return RegisteredVersion(name, version, alias, f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}")


def _set_alias(client: MlflowClient, name: str, alias: str, version: str, attempts: int = 5) -> None:
    """Point the alias at `version`, retrying a lost insert race: two experiments registering the same
    name at once both try to create the alias row, and the database rejects one of them."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                                                             "PERMISSION_DENIED", "UNAUTHENTICATED"):
                raise
            time.sleep(0.2 * 2 ** attempt)
