"""Inputs checked before the work: a teacher that cannot teach, QAT that would see no step, a resume
onto another configuration's checkpoint, a stale baseline cache, levels read as percents, and a
--recipe file the record must describe. Each bad input: one line, non-zero exit, nothing registered,
no run left RUNNING."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers.data import make_image_folder
from helpers.mlflow_checks import assert_failed_cleanly, registered_versions, runs_of
from sparsify_mlflow.cli import main
from sparsify_mlflow.data.embedded_text import generate
from sparsify_mlflow.validation import build_config


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Exit code, the single `error:` line (or ""), and stdout."""
    code = main(list(args))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) <= 1 and not any("Traceback" in line for line in lines), lines
    return code, errors[0] if errors else "", captured.out


def text_data(tmp_path: Path, rows: int = 60) -> Path:
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(rows)), encoding="utf-8")
    return path


def teacher_folder(tiny_bert: Path, tmp_path: Path, labels: list[str], swap_vocab: bool = False) -> Path:
    """A sequence classifier saved with `labels`, with tiny_bert's tokenizer (or one whose first two
    ordinary tokens trade ids: same size, other vocabulary)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = tmp_path / ("teacher-swapped" if swap_vocab else f"teacher-{len(labels)}")
    config = AutoConfig.from_pretrained(tiny_bert, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={n: i for i, n in enumerate(labels)})
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_bert / name).exists():
            shutil.copy(tiny_bert / name, folder / name)
    if swap_vocab:
        (folder / "tokenizer.json").unlink(missing_ok=True)  # the slow vocab.txt decides, then converted
        vocab = (folder / "vocab.txt").read_text().splitlines()
        vocab[2000], vocab[2001] = vocab[2001], vocab[2000]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


TEXT = ["--use-case", "text_classification", "--epochs", "1", "--max-seq-length", "16", "--batch-size", "16",
        "--benchmark-iterations", "2", "--benchmark-rounds", "3", "--no-int8-reference"]


@pytest.mark.parametrize("labels, swap, message", [
    (["negative", "neutral", "positive"], False, "predicts 3 labels [negative, neutral, positive], the data has 2"),
    (["positive", "negative"], False, "predicts 2 labels [positive, negative], the data has 2 [negative, positive]"),
    (["negative", "positive"], True, "tokenizer has another vocabulary"),
])
def test_a_teacher_that_cannot_teach_is_refused_before_training(capsys, store, tmp_path, tiny_bert, labels, swap,
                                                                 message) -> None:
    teacher = teacher_folder(tiny_bert, tmp_path, labels, swap)
    code, err, _ = run_cli(capsys, "training-aware", *TEXT, "--model", str(tiny_bert), "--teacher", str(teacher),
                           "--data", str(text_data(tmp_path)), "--tracking-uri", store, "--working-dir", str(tmp_path))
    assert code == 2 and message in err, err
    assert_failed_cleanly(store, message)
    assert not any(r.info.run_name == "dense-baseline" for r in runs_of(store)), "refused before any training"


def test_a_qat_phase_without_a_step_is_refused_before_training(capsys, store, tmp_path) -> None:
    data = make_image_folder(tmp_path / "tiny", per_class=6)  # 8 training images: 1 step of 8 per epoch
    code, err, _ = run_cli(capsys, "training-aware", "--data", str(data), "--epochs", "2", "--batch-size", "8",
                           "--image-size", "32", "--model", "resnet18", "--no-pretrained",
                           "--tracking-uri", store, "--working-dir", str(tmp_path))
    assert code == 2
    assert "gets no optimizer step: 8 training rows at batch size 8 make 1 step(s) per epoch" in err, err
    assert "num_qat_epochs" in err
    assert_failed_cleanly(store, "gets no optimizer step")
    assert not any(r.info.run_name == "dense-baseline" for r in runs_of(store))


def test_the_qat_step_count_follows_sparsemls_epoch_rule() -> None:
    from sparsify_mlflow.recipe_facts import RecipeFacts, qat_steps

    facts = RecipeFacts("r.yaml", (), True, False, qat_start=1.3333, freeze_bn_epoch=None,
                        disable_observers_epoch=None, epochs=2)
    assert qat_steps(facts, steps_per_epoch=1, epochs=2) == 0   # steps at epochs 0 and 1
    assert qat_steps(facts, steps_per_epoch=3, epochs=2) == 2   # steps at 4/3 and 5/3
    assert qat_steps(facts, steps_per_epoch=6, epochs=2) == 4   # 8/6 .. 11/6


def test_a_level_read_as_a_percent_says_so(capsys) -> None:
    assert build_config("cv-classification", optim_level=2).optim_level == 0.02
    assert "note: --optim-level 2 read as 2% = 0.02: INT8 only, no pruning" in capsys.readouterr().out
    assert build_config("cv-classification", optim_level=50).optim_level == 0.5
    assert "read as 50% = 0.5: 70% sparsity + INT8" in capsys.readouterr().out
    assert build_config("cv-classification", optim_level=0.5).optim_level == 0.5
    assert "read as" not in capsys.readouterr().out


def test_recipe_and_level_together_or_an_unreadable_recipe_stop_at_the_door(capsys, store, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1.1.0\nmodifiers:\n  - !NoSuchModifier\n    start_epoch: 0\n")
    code, err, _ = run_cli(capsys, "training-aware", "--recipe", str(recipe), "--tracking-uri", store,
                           "--working-dir", str(tmp_path))
    assert code == 2 and err.startswith(f"error: --recipe {recipe}: sparseml cannot read it"), err
    code, err, _ = run_cli(capsys, "training-aware", "--recipe", str(recipe), "--optim-level", "0.5",
                           "--tracking-uri", store, "--working-dir", str(tmp_path))
    assert code == 2 and "--optim-level and --recipe are both given" in err
    assert runs_of(store) == [] and registered_versions(store) == []


def test_the_baseline_cache_key_follows_a_local_models_content(tmp_path) -> None:
    from sparsify_mlflow.experiment import _baseline_key

    weights = tmp_path / "net.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    cfg = build_config("cv-classification", model=str(weights), epochs=1).with_defaults(
        model="resnet18", epochs=1, batch_size=8, lr=0.01)
    data = SimpleNamespace(fingerprint="same data")
    before = _baseline_key(cfg, data)
    assert _baseline_key(cfg, data) == before
    torch.save({"w": torch.ones(3)}, weights)  # overwritten in place: same path, another model
    assert _baseline_key(cfg, data) != before


def test_resume_onto_another_configurations_checkpoint_is_refused_before_reopening(capsys, store, tmp_path) -> None:
    from sparsify_mlflow import tracking
    from sparsify_mlflow.checkpoint import CHECKPOINT_NAME, Checkpoint
    from sparsify_mlflow.resume import CONFIG_ARTIFACT, FOLDER_TAG, stage_key

    cfg = build_config("cv-classification", epochs=2, working_dir=tmp_path).with_defaults(
        model="resnet18", epochs=2, batch_size=8, lr=0.01)
    folder = tmp_path / "experiment"
    ckpt_dir = folder / "training_artifacts" / "sparse"
    ckpt_dir.mkdir(parents=True)
    other = build_config("cv-classification", epochs=3, working_dir=tmp_path).with_defaults(
        model="resnet18", epochs=3, batch_size=8, lr=0.01)
    Checkpoint(epoch=1, batch_size=8, model={}, optimizer={}, manager={}, rng={}, history=[],
               key=stage_key(other, "sparse")).to_file(ckpt_dir / CHECKPOINT_NAME)
    tracking.connect(store)
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.create_experiment("resume-check")
    parent = client.create_run(experiment_id, tags={FOLDER_TAG: str(folder)}, run_name="parent")
    import mlflow

    with mlflow.start_run(run_id=parent.info.run_id):
        mlflow.log_dict(cfg.to_json(), CONFIG_ARTIFACT)
    client.set_terminated(parent.info.run_id, "FAILED")
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id,
                                                   "sparsify.role": "sparse"}, run_name="training-aware")
    client.set_terminated(child.info.run_id, "FAILED")
    code, err, _ = run_cli(capsys, "training-aware", "--resume", parent.info.run_id, "--tracking-uri", store,
                           "--working-dir", str(tmp_path))
    assert code == 2 and "checkpoint" in err and "was written by another configuration" in err, err
    assert {r.info.run_id: r.info.status for r in runs_of(store)} == {parent.info.run_id: "FAILED",
                                                                      child.info.run_id: "FAILED"}
