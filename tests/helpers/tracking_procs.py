"""Experiments as separate processes against a tracking server (what two users or CI jobs do)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import use_every_cpu


def start_experiment(uri: str, data: Path, work: Path, *args: str, env: dict[str, str] | None = None,
                     epochs: int = 2) -> subprocess.Popen:
    """`python -m sparsify_mlflow training-aware` with MLFLOW_TRACKING_URI; stdout+stderr piped, line by line."""
    options = [a for a in TINY_REMOTE]
    options[options.index("--epochs") + 1] = str(epochs)
    command = [sys.executable, "-m", "sparsify_mlflow", "training-aware", "--data", str(data),
               "--working-dir", str(work), "--summary-json", str(work / "summary.json"), *options, *args]
    environment = os.environ | {"MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=environment, cwd=work.parent, preexec_fn=use_every_cpu)


TINY_REMOTE = ["--model", "resnet18", "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
               "--benchmark-batch-size", "2", "--benchmark-iterations", "2",
               "--benchmark-rounds", "3", "--no-int8-reference", "--deploy-engine", "onnxruntime"]
