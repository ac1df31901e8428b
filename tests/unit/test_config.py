"""Validation at the door: options and use-case names."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparsify_mlflow import usecases
from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.validation import build_config


@pytest.mark.parametrize("alias", [
    "cv-classification", "image_classification", "image-classification", "classification",
    "Image_Classification", " cv-classification ",
])
def test_aliases_resolve_to_the_canonical_use_case(alias: str) -> None:
    assert usecases.resolve(alias).name == "cv-classification"


def test_unknown_use_case_lists_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match="unknown use case 'speech'.*supported: .*cv-classification"):
        usecases.resolve("speech")


def test_every_alias_maps_to_a_registered_use_case() -> None:
    assert set(usecases.aliases().values()) == set(usecases.names())


def test_defaults(tmp_path: Path) -> None:
    cfg = build_config("image_classification", working_dir=tmp_path)
    assert cfg.use_case == "cv-classification"
    assert cfg.optim_level == 0.5
    assert cfg.register is True
    filled = cfg.with_defaults(model="resnet18", epochs=3, batch_size=8, lr=0.1)
    assert (filled.model, filled.epochs, filled.batch_size, filled.lr, filled.pretrained) == (
        "resnet18", 3, 8, 0.1, False)  # the default model trains from scratch: no network
    named = build_config("cv-classification", model="resnet50", working_dir=tmp_path)
    assert named.with_defaults(model="x", epochs=1, batch_size=1, lr=0.1).pretrained is True


def test_mlproject_blank_strings_mean_not_given(tmp_path: Path) -> None:
    cfg = build_config("cv-classification", model="", data="  ", recipe="", working_dir=tmp_path)
    assert cfg.model is None and cfg.data is None and cfg.recipe is None


@pytest.mark.parametrize("level", [1.5, -0.1, float("nan"), "high"])
def test_optim_level_outside_0_1_is_rejected(level: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optim-level"):
        build_config("cv-classification", optim_level=level, working_dir=tmp_path)


@pytest.mark.parametrize("option,value", [
    ("epochs", 0), ("epochs", -3), ("batch_size", 0), ("batch_size", -1), ("image_size", 0),
    ("lr", 0.0), ("lr", -1.0), ("device", "tpu"),
])
def test_bad_numbers_and_devices_name_the_option(option: str, value: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=option.replace("_", "-")):
        build_config("cv-classification", working_dir=tmp_path, **{option: value})


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--recipe file .*nope.yaml does not exist"):
        build_config("cv-classification", recipe=tmp_path / "nope.yaml", working_dir=tmp_path)


def test_unwritable_working_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="working folder .*a-file/out cannot be created"):
        build_config("cv-classification", working_dir=blocker / "out")
