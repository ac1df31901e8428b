"""The config from raw options, at the door: the common options (config.py) and the use case's own.

Above both the config and the use cases (it needs the use case's options and checks), so that
neither imports the other's side.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sparsify_mlflow.config import (
    COMMON_OPTIONS,
    DEFAULT_LEVEL,
    TEACHER_OFF,
    TEACHER_SELF,
    ExperimentConfig,
    parse_optim_level,
)
from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.levels import RecipeArgs
from sparsify_mlflow.options import declared, fold_switch, parse_options, parse_values
from sparsify_mlflow.usecases import resolve
from sparsify_mlflow.usecases.base import UseCase


def build_config(use_case: str | UseCase, **options: Any) -> ExperimentConfig:
    """Validate raw CLI/MLproject values (the common options and the use case's own) and build the
    config; raise ConfigError naming the option. Blank strings mean "not given" (MLproject's '')."""
    if isinstance(use_case, str):
        use_case = resolve(use_case)  # the registry imports that one use case
    own = {opt.name for opt in declared(use_case.options)}
    common = {k: v for k, v in options.items() if k not in own}
    unknown = sorted(set(common) - {o.name for o in COMMON_OPTIONS} - {"distill", *_switch_offs()})
    if unknown:
        raise ConfigError(f"unknown option(s) for {use_case.name}: {', '.join('--' + u.replace('_', '-') for u in unknown)}")
    opts = {k: None if isinstance(v, str) and not v.strip() else v for k, v in common.items()}

    level = opts.pop("optim_level", None)
    if level is not None and opts.get("recipe") is not None:
        raise ConfigError("--optim-level and --recipe are both given: the recipe file decides sparsity and "
                          "quantization; drop one of them")
    optim_level = None if opts.get("recipe") is not None else parse_optim_level(
        DEFAULT_LEVEL if level is None else level, "--optim-level")
    spelling = _fold_distill_into_teacher(opts)
    for name in ("device", "deploy_engine"):
        if isinstance(opts.get(name), str):
            opts[name] = opts[name].lower()
    values = parse_values(ExperimentConfig, opts)
    if values.get("teacher") not in (None, TEACHER_OFF) and not use_case.distills:
        raise ConfigError(f"{spelling} is not supported by {use_case.name} (NLP use cases only)")
    values["eval_metric"] = _eval_metric(use_case, values.get("eval_metric"))
    if values.get("recipe_args", RecipeArgs()).given() and values.get("recipe") is not None:
        raise ConfigError("--recipe-args changes the derived recipe; with --recipe, edit your recipe file instead")
    try:
        values.get("recipe_args", RecipeArgs()).check_fits(values.get("epochs") or use_case.default_epochs)
    except ValueError as exc:
        raise ConfigError(f"--recipe-args: {exc}") from None
    recipe = values.get("recipe")
    if recipe is not None:
        if not recipe.is_file():
            raise ConfigError(f"--recipe file {recipe} does not exist")
        from sparsify_mlflow.recipe_facts import read_recipe

        read_recipe(recipe)  # a file sparseml cannot read fails here, before any run starts
    values["working_dir"] = Path(values.get("working_dir") or ".").expanduser().resolve()
    _check_writable(values["working_dir"])
    own_values = parse_options(use_case.options, {k: v for k, v in options.items() if k in own})
    cfg = ExperimentConfig(use_case=use_case.name, optim_level=optim_level, use_case_options=own_values, **values)
    use_case.check_options(cfg)  # what involves several options (QA: --doc-stride < --max-seq-length)
    return cfg


def _switch_offs() -> set[str]:
    """The --no-<switch> spellings click passes as `<switch>_off`."""
    return {f"{o.name}_off" for o in COMMON_OPTIONS if o.kind is bool} | {"distill_off"}


def _eval_metric(use_case: UseCase, name: str | None) -> str | None:
    """The logged metric an --eval-metric choice selects (None: the use case's main metric)."""
    if name is None:
        return None
    choices = use_case.eval_metric_choices()
    if name not in choices:
        raise ConfigError(f"--eval-metric {name!r} is not available for {use_case.name}; choose one of: "
                          f"{', '.join(choices)}")
    return choices[name]


def _fold_distill_into_teacher(opts: dict[str, Any]) -> str:
    """--distill/--no-distill are the older spellings of --teacher self/off; both given must agree.

    Returns the spelling the user chose, for error messages.
    """
    distill = fold_switch(opts, "distill")
    teacher = opts.get("teacher")
    if distill is None:
        return f"--teacher {teacher}"
    implied = TEACHER_SELF if distill else TEACHER_OFF
    if teacher is not None and (teacher == TEACHER_OFF) == distill:
        flag = "--distill" if distill else "--no-distill"
        raise ConfigError(f"{flag} contradicts --teacher {teacher}")
    opts["teacher"] = teacher or implied
    return "--distill" if teacher is None else f"--teacher {teacher}"


def _check_writable(folder: Path) -> None:
    """Fail before any training if results could not be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"working folder {folder} cannot be created: {exc.strerror}") from None
    try:  # os.access says yes to root even on read-only mounts: try for real
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"working folder {folder} is not writable: {exc.strerror}") from None
