"""Bad input through the CLI: one clear line, exit code 2, runs FAILED, nothing registered."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO
from helpers.cli import run_cli
from helpers.data import make_image_folder, write_image
from helpers.mlflow_checks import assert_failed_cleanly, runs_of


def common(store: str, tmp_path: Path) -> list[str]:
    return ["--tracking-uri", store, "--working-dir", str(tmp_path / "work")]


@pytest.mark.parametrize("args,message", [
    (["--optim-level", "1.5"], "error: --optim-level 1.5 is outside [0, 1]"),
    (["--optim-level", "-0.2"], "error: --optim-level -0.2 is outside [0, 1]"),
    (["--epochs", "0"], "error: --epochs must be a positive integer, got 0"),
    (["--batch-size", "-4"], "error: --batch-size must be a positive integer, got -4"),
    (["--use-case", "speech"], "error: unknown use case 'speech'; supported:"),
])
def test_option_errors_stop_before_any_run(capsys, store, tmp_path, args, message) -> None:
    code, err = run_cli(capsys, "training-aware", *common(store, tmp_path), *args)
    assert code == 2
    assert err.startswith(message)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert runs_of(store) == []


def test_unwritable_output_folder(capsys, store, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, "training-aware", "--tracking-uri", store,
                        "--working-dir", str(tmp_path / "file" / "sub"))
    assert code == 2 and "cannot be created" in err


@pytest.mark.parametrize("make_data,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "has no class sub-folders"),
    (lambda p: write_image(p / "one" / "a" / "x.png", 0, np.random.default_rng(0)) or p / "one",
     "only one class"),
    (lambda p: (make_image_folder(p / "holes", split=False), (p / "holes" / "class_z").mkdir())[0],
     "class_z has no images"),
])
def test_data_errors_fail_the_run_and_register_nothing(capsys, store, tmp_path, make_data, message) -> None:
    data = make_data(tmp_path)
    code, err = run_cli(capsys, "training-aware", *common(store, tmp_path), "--data", str(data))
    assert code == 2, err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1
    assert_failed_cleanly(store, message)
    assert not list((tmp_path / "work").glob("training-aware_*")), "a failed run leaves no empty experiment folder"


def test_unknown_model_fails_the_run(capsys, store, tmp_path) -> None:
    data = make_image_folder(tmp_path / "d")
    code, err = run_cli(capsys, "training-aware", *common(store, tmp_path), "--data", str(data),
                        "--model", "nosuchnet")
    assert code == 2
    assert "unknown model 'nosuchnet'" in err and "resnet50" in err
    assert_failed_cleanly(store, "unknown model")


def test_checkpoint_that_is_not_a_state_dict(capsys, store, tmp_path) -> None:
    data = make_image_folder(tmp_path / "d")
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    code, err = run_cli(capsys, "training-aware", *common(store, tmp_path), "--data", str(data),
                        "--model", str(bad))
    assert code == 2 and "is not a loadable state dict" in err
    assert_failed_cleanly(store, "state dict")


def test_the_console_script_prints_no_traceback(store, tmp_path) -> None:
    """The installed entry point, in its own process, for the whole user experience."""
    script = Path(sys.executable).parent / "sparsify.run"
    proc = subprocess.run([str(script), "training-aware", *common(store, tmp_path), "--data",
                           str(tmp_path / "nowhere")], capture_output=True, text=True,
                          env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data folder")


def test_sigterm_mid_training_ends_the_runs_killed(store, tmp_path) -> None:
    """A killed job must not leave its runs RUNNING in the store."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    data = make_image_folder(tmp_path / "d", per_class=40)
    # Create the store's tables before the job starts: mlflow's schema migration is not safe to run
    # from two processes at once (CI once failed here with "AttributeError: dimension_attributes").
    client = MlflowClient(tracking_uri=store)
    client.search_experiments()
    script = Path(sys.executable).parent / "sparsify.run"
    proc = subprocess.Popen([str(script), "training-aware", *common(store, tmp_path), "--data", str(data),
                             "--epochs", "50", "--image-size", "32", "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            history = [r for r in runs_of(store) if r.info.run_name == "dense-baseline"
                       and client.get_metric_history(r.info.run_id, "train.loss")]
        except Exception:  # the store may not exist yet
            history = []
        if history:
            break
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    statuses = {r.info.run_name: r.info.status for r in runs_of(store)}
    assert set(statuses.values()) == {"KILLED"}, statuses


@pytest.mark.parametrize("script, first_words, reason", [
    ("cv_classification_resnet50_imagenette.sh", "error: could not download dataset 'imagenette'", "could not download"),
    ("nlp_text_classification_bert_sst2.sh", "error: cannot load the Hugging Face dataset 'glue/sst2'", "cannot load"),
])
def test_online_example_fails_clearly_without_internet(store, tmp_path, script, first_words, reason) -> None:
    """The guide's two examples: with no route to the internet they must say what to do, in one line."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "SPARSIFY_MLFLOW_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
                        "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)  # a user without internet has not set it either
    example = REPO / "examples" / script
    proc = subprocess.run(["bash", str(example), *common(store, tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(first_words), proc.stderr[-2000:]
    assert_failed_cleanly(store, reason)
