"""Model registry: register the exported ONNX model with tags, a description and an alias.

Registration is the last step of an experiment and is all-or-nothing: if tagging or aliasing
fails after the version was created, the version is deleted again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

CANDIDATE_ALIAS = "candidate"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    model_uri: str          # models:/NAME@ALIAS


def register_onnx(
    onnx_path: Path,
    name: str,
    *,
    example_inputs: dict[str, np.ndarray],
    example_outputs: dict[str, np.ndarray],
    tags: dict[str, str],
    description: str,
    alias: str = CANDIDATE_ALIAS,
) -> RegisteredVersion:
    """Log the ONNX model (onnx flavor, signature, input example) in the active run and register it."""
    import onnx
    from mlflow.models import infer_signature

    signature = infer_signature(example_inputs, example_outputs)
    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="model",
        registered_model_name=name,
        signature=signature,
        input_example=example_inputs,
        save_as_external_data=False,
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.update_model_version(name, version, description=description)
        client.set_registered_model_alias(name, alias, version)
    except BaseException:
        client.delete_model_version(name, version)
        raise
    return RegisteredVersion(name, version, alias, f"models:/{name}@{alias}")
