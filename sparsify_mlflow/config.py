"""ExperimentConfig: the common options (declared here, once: see options.py), validated at the door.

Click option names, MLproject parameter names and these field names are the same words, and the
whole config (with the use case's own options) is logged to MLflow as params, so a run says
exactly how it was made.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.levels import TARGETS, RecipeArgs
from sparsify_mlflow.options import (
    RECIPE,
    TRAINING,
    TRAINING_AWARE,
    NoOptions,
    declared,
    fraction,
    one_of,
    option,
    positive_int,
    positive_number,
)

DEFAULT_EXPERIMENT = "sparsify-training-aware"
DEFAULT_LEVEL = 0.5
DEVICES = ("auto", "cpu", "cuda")
DEPLOY_ENGINES = ("deepsparse", "onnxruntime", "openvino")
TEACHER_OFF, TEACHER_SELF = "off", "self"   # --teacher: no distillation / the dense baseline teaches


@dataclass(frozen=True)
class TrainKwargs:
    """`--train-kwargs`: what the training loop accepts beyond the main options (unset: the use case's)."""

    weight_decay: float | None = None   # of the parameters the use case decays (biases and norms stay at 0)
    momentum: float | None = None       # SGD momentum; beta1 for Adam-type optimizers
    grad_clip: float | None = None      # max gradient norm per step
    num_workers: int | None = None      # data-loader worker processes

    def __post_init__(self) -> None:
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")

    def given(self) -> dict[str, float | int]:
        return {k: v for k, v in vars(self).items() if v is not None}


ALL = (*TRAINING, RECIPE)
EXPERIMENT_ONLY = (TRAINING_AWARE,)


def _mapping(target: type) -> Any:
    return lambda flag, text: parse_mapping(flag, text, target)


def _device(value: str) -> str | None:
    ok = value in DEVICES or value.startswith("cuda:")
    return None if ok else f"must be one of {', '.join(DEVICES)} (or cuda:N)"


def _engine(value: str) -> str | None:
    return None if value in DEPLOY_ENGINES else f"must be one of {', '.join(DEPLOY_ENGINES)}"


@dataclass(frozen=True)
class ExperimentConfig:
    use_case: str = option("cv-classification", "cv-classification, nlp-text_classification, ... (aliases accepted, "
                           "e.g. image_classification; `sparsify.run use-cases` lists them with their options)",
                           commands=ALL)
    model: str | None = option(None, "Model name (e.g. resnet50) or a local .pt/.pth checkpoint or model folder. "
                               "Default: the use case's small model.", commands=ALL)
    data: str | None = option(None, "Dataset folder/file (see docs/use-cases). Default: the use case's embedded data.")
    optim_level: float | None = option(
        None, "0 = dense baseline; <0.3 INT8 only; 0.3..1.0 = 60%..95% sparsity + INT8; an integer 2..100 is a "
        "percent (50 = 0.5). Default 0.5 (without --recipe).", commands=(TRAINING_AWARE, RECIPE))
    epochs: int | None = option(None, "Training epochs (both models). Default per use case.", commands=ALL,
                                check=positive_int)
    batch_size: int | None = option(None, "Training batch size. Default per use case.", check=positive_int)
    lr: float | None = option(None, "Initial learning rate (linear decay). Default per use case.", commands=ALL,
                              check=positive_number)
    seed: int = option(0, "Seed for splits, init and shuffling.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (benchmarks run on the CPU).", check=_device)
    pretrained: bool | None = option(None, "Start from pretrained weights (default: yes for a named model, no for "
                                     "the default one).")
    experiment_name: str = option(DEFAULT_EXPERIMENT, "MLflow experiment.", mlproject=False)
    registered_model_name: str | None = option(None, "Registry name (default <use-case>-<model>).")
    tracking_uri: str | None = option(None, "MLflow tracking URI; else MLFLOW_TRACKING_URI; else "
                                      "sqlite:///<working-dir>/mlflow.db.", mlproject=False)
    recipe: Path | None = option(None, "Use this sparseml recipe YAML instead of the derived one.",
                                 commands=EXPERIMENT_ONLY)
    register: bool = option(True, "Register the sparse model (--no-register: do not).")
    summary_json: Path | None = option(None, "Write a machine-readable summary to this path.")
    working_dir: Path = option(Path("."), "Where the experiment folder and the default store go.")
    benchmark_batch_size: int = option(16, "Batch size of the throughput benchmark.", check=positive_int)
    benchmark_iterations: int = option(30, "Timed batches per model, engine and batch size, over all rounds.",
                                       check=positive_int)
    benchmark_rounds: int = option(7, "Alternating rounds of the benchmark session; a speedup is the median of "
                                   "the per-round ratios.", check=positive_int)
    int8_reference: bool = option(True, "Also quantize the dense model post-training (no pruning, no training) and "
                                  "time it: the INT8-only reference the sparse model must beat "
                                  "(--no-int8-reference: skip it).")
    num_cores: int | None = option(None, "Cores (threads) the inference engines use (default: every physical core "
                                   "available).", check=positive_int)
    teacher: str | None = option(None, "Distillation teacher: off, self (the dense baseline) or a model name/path "
                                 "trained on the same labels (default: self where the use case distils, else off).")
    distill_hardness: float = option(0.5, "Weight of the distillation loss against the task loss, 0..1.",
                                     check=fraction)
    distill_temperature: float = option(2.0, "Softmax temperature of the distillation loss.", check=positive_number)
    eval_metric: str | None = option(None, "Main metric for summaries, sweeps and promotion (the use case's "
                                     "choices, e.g. accuracy, f1; default: the use case's).")
    recipe_args: RecipeArgs = option(RecipeArgs, "JSON/YAML mapping overriding the derived recipe, e.g. "
                                     '\'{"num_qat_epochs": 2, "init_lr": 0.01}\'.', commands=ALL,
                                     parse=_mapping(RecipeArgs))
    train_kwargs: TrainKwargs = option(TrainKwargs, "JSON/YAML mapping for the training loop: weight_decay, "
                                       "momentum, grad_clip, num_workers.", parse=_mapping(TrainKwargs))
    target: str = option("auto", "Deployment target, as in sparseml's recipe template: chooses the pruning mask. auto "
                         "(1x4 blocks at INT8 levels), vnni (1x4 blocks), default (unstructured), tensorrt (2:4, so "
                         "50% sparse).", commands=ALL, check=one_of(*TARGETS))
    deploy_engine: str = option("deepsparse", "Engine that validates and benchmarks the deployment: deepsparse "
                                "(OpenVINO timed beside it where installed), onnxruntime or openvino (the sparse "
                                "model's QDQ INT8 file).", check=_engine)
    use_case_options: Any = field(default_factory=NoOptions)  # the use case's own options (its `options` dataclass)

    @property
    def distill(self) -> bool:
        """Whether the training-aware model learns from a teacher (after with_defaults)."""
        return self.teacher not in (None, TEACHER_OFF)

    def with_defaults(self, *, model: str, epochs: int, batch_size: int, lr: float,
                      pretrained: bool | None = None, distill: bool = False,
                      eval_metric: str | None = None) -> ExperimentConfig:
        """Fill the options the user left to the use case.

        Pretrained weights are the default only for a model the user named: the embedded default
        model trains from scratch so the default run needs no network. A use case whose default
        model ships its weights (NLP) passes `pretrained=True`.
        """
        if pretrained is None:
            pretrained = self.model is not None
        return replace(
            self,
            pretrained=pretrained if self.pretrained is None else self.pretrained,
            teacher=self.teacher or (TEACHER_SELF if distill else TEACHER_OFF),
            eval_metric=self.eval_metric or eval_metric,
            model=self.model or model,
            epochs=self.epochs or epochs,
            batch_size=self.batch_size or batch_size,
            lr=self.lr or lr,
        )

    def as_params(self) -> dict[str, Any]:
        """The resolved config for mlflow.log_params, as `config.<option>` (the use case's options too).

        Prefixed because `mlflow run` has already logged the raw MLproject parameters under the
        bare names, and MLflow refuses to change a logged param.
        """
        values = {k: v for k, v in asdict(self).items() if k != "use_case_options"} | asdict(self.use_case_options)
        params = {f"config.{k}": _param_value(v) for k, v in values.items()}
        if self.tracking_uri:  # a password in the URI never reaches the store
            from sparsify_mlflow.remote import redact_uri

            params["config.tracking_uri"] = redact_uri(self.tracking_uri)
        return params | {"config.distill": str(self.distill)}  # derived from teacher; handy to filter on

    def to_json(self) -> dict[str, Any]:
        """The resolved config as plain JSON values (kept with the run so --resume rebuilds it; the
        tracking URI without any password in it: --resume connects with the URI it is given)."""
        from sparsify_mlflow.remote import redact_uri

        values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return values | {"tracking_uri": redact_uri(self.tracking_uri) if self.tracking_uri else self.tracking_uri}

    @classmethod
    def from_json(cls, values: dict[str, Any], use_case_options: type = NoOptions) -> ExperimentConfig:
        """The inverse of to_json (`use_case_options`: the use case's options class): already validated
        values, so no checks beyond the types."""
        paths = {"recipe", "summary_json", "working_dir"}
        values = {k: Path(v) if k in paths and v is not None else v for k, v in values.items()}
        return cls(**values | {"recipe_args": RecipeArgs(**values.get("recipe_args") or {}),
                               "train_kwargs": TrainKwargs(**values.get("train_kwargs") or {}),
                               "use_case_options": use_case_options(**values.get("use_case_options") or {})})


COMMON_OPTIONS = declared(ExperimentConfig)


def _param_value(value: Any) -> str:
    """'' for unset, JSON of the given entries for the mapping options, str() for the rest."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps({k: v for k, v in value.items() if v is not None}, sort_keys=True)
    return str(value)


def parse_optim_level(value: Any, option: str) -> float:
    """A level in [0, 1], or an integer 2..100 read as percent (Sparsify's rule: 50 means 0.5), said in
    one line, since `--optim-level 2` meaning 2% (INT8 only) surprises."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} must be a number in [0, 1] or a percent 1..100, got {value!r}") from None
    if 1.0 < level <= 100.0 and level.is_integer():
        from sparsify_mlflow.levels import describe_level

        print(f"note: {option} {level:g} read as {level:g}% = {level / 100:g}: {describe_level(level / 100)}")
        return level / 100.0
    if math.isnan(level) or not 0.0 <= level <= 1.0:
        raise ConfigError(f"{option} {level:g} is outside [0, 1] (or an integer percent 1..100)")
    return level


def parse_mapping(option: str, text: Any, target: type) -> Any:
    """A JSON or YAML mapping (or an already parsed dict) validated into the dataclass `target`.

    Unknown keys name the valid ones; wrong types and out-of-range values name the key.
    """
    if text is None:
        return target()
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except json.JSONDecodeError as json_error:
            try:
                text = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(f"{option} is not valid JSON or YAML ({json_error})") from None
    if not isinstance(text, dict):
        raise ConfigError(f"{option} must be a mapping like '{{\"key\": value}}', got {text!r}")
    valid = [f.name for f in fields(target)]
    unknown = sorted(set(map(str, text)) - set(valid))
    if unknown:
        raise ConfigError(f"{option}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(target).validate_python(text)
    except ValidationError as exc:
        first = exc.errors()[0]  # a type error names its key; a range check (__post_init__) says it all
        where = "".join(f"{part}: " for part in first["loc"])
        raise ConfigError(f"{option}: {where}{first['msg'].removeprefix('Value error, ')}") from None
