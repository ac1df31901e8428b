"""ExperimentConfig: every user option, validated once at the door.

Click option names, MLproject parameter names and these field names are the same words, and the
whole config is logged to MLflow as params, so a run says exactly how it was made.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.levels import RecipeArgs

DEFAULT_EXPERIMENT = "sparsify-training-aware"
DEFAULT_LEVEL = 0.5
DEVICES = ("auto", "cpu", "cuda")
DEPLOY_ENGINES = ("deepsparse", "onnxruntime")
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


@dataclass(frozen=True)
class ExperimentConfig:
    use_case: str                      # canonical use-case name (aliases resolved)
    model: str | None = None           # None: the use case's default model
    data: str | None = None            # None: the use case's embedded default dataset
    optim_level: float | None = 0.5   # None with --recipe: the file decides
    epochs: int | None = None          # None: the use case's default
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    image_size: int | None = None
    device: str = "auto"
    pretrained: bool | None = None     # None: pretrained when a named model is given
    experiment_name: str = DEFAULT_EXPERIMENT
    registered_model_name: str | None = None
    tracking_uri: str | None = None
    recipe: Path | None = None         # a user's sparseml recipe instead of the derived one
    register: bool = True
    summary_json: Path | None = None
    working_dir: Path = Path(".")
    benchmark_batch_size: int = 16
    benchmark_iterations: int = 30     # timed batches per model, engine and batch size, over all rounds
    benchmark_rounds: int = 5          # alternating rounds of the benchmark session (speedup = median ratio)
    num_cores: int | None = None       # cores/threads the engines use; None: every physical core we may use
    # NLP use cases (ignored by the others)
    max_seq_length: int = 128          # tokens per example; the exported ONNX has this fixed length
    text_column: str | None = None     # None: auto-detected (text, sentence, sentence1/sentence2, ...)
    text_pair_column: str | None = None
    label_column: str | None = None    # None: "label"
    teacher: str | None = None         # off, self (the dense baseline) or a model; None: the use case's default
    distill_hardness: float = 0.5      # weight of the distillation loss vs the task loss
    distill_temperature: float = 2.0
    eval_metric: str | None = None     # the main metric's name as logged; None: the use case's
    recipe_args: RecipeArgs = field(default_factory=RecipeArgs)
    train_kwargs: TrainKwargs = field(default_factory=TrainKwargs)
    deploy_engine: str = "deepsparse"  # validates and benchmarks the deployment
    tokens_column: str | None = None   # token classification: None: auto-detected (tokens, words)
    tags_column: str | None = None     # None: auto-detected (ner_tags, tags, labels)
    doc_stride: int | None = None      # question answering: overlap of context windows; None: max_seq_length // 4
    max_answer_length: int = 30        # longest answer span in tokens

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
        """The resolved config for mlflow.log_params, as `config.<option>`.

        Prefixed because `mlflow run` has already logged the raw MLproject parameters under the
        bare names, and MLflow refuses to change a logged param.
        """
        params = {f"config.{k}": _param_value(v) for k, v in asdict(self).items()}
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
    def from_json(cls, values: dict[str, Any]) -> ExperimentConfig:
        """The inverse of to_json: already validated values, so no checks beyond the types."""
        paths = {"recipe", "summary_json", "working_dir"}
        values = {k: Path(v) if k in paths and v is not None else v for k, v in values.items()}
        return cls(**values | {"recipe_args": RecipeArgs(**values.get("recipe_args") or {}),
                               "train_kwargs": TrainKwargs(**values.get("train_kwargs") or {})})


def _param_value(value: Any) -> str:
    """'' for unset, JSON of the given entries for the mapping options, str() for the rest."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps({k: v for k, v in value.items() if v is not None}, sort_keys=True)
    return str(value)


def _blank_to_none(value: Any) -> Any:
    """MLproject passes unset string parameters as ''; treat them as not given."""
    return None if isinstance(value, str) and value.strip() == "" else value


def build_config(use_case: str, **options: Any) -> ExperimentConfig:
    """Validate raw CLI/MLproject values and build the config; raise ConfigError naming the option."""
    from sparsify_mlflow import usecases  # resolve aliases here so the rest sees one name

    opts = {k: _blank_to_none(v) for k, v in options.items()}
    canonical = usecases.resolve(use_case).name

    level = opts.get("optim_level")
    if level is not None and opts.get("recipe") is not None:
        raise ConfigError("--optim-level and --recipe are both given: the recipe file decides sparsity and "
                          "quantization; drop one of them")
    opts["optim_level"] = None if opts.get("recipe") is not None else parse_optim_level(
        DEFAULT_LEVEL if level is None else level, "--optim-level")

    for name in ("epochs", "batch_size", "image_size", "benchmark_batch_size", "benchmark_iterations",
                 "benchmark_rounds", "num_cores", "max_seq_length", "doc_stride", "max_answer_length"):
        value = opts.get(name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    lr = opts.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--lr must be a positive number, got {lr!r}")
    _check_distillation(canonical, opts, _fold_distill_into_teacher(opts))
    opts["eval_metric"] = _eval_metric(canonical, opts.get("eval_metric"))
    opts["recipe_args"] = parse_mapping("--recipe-args", opts.get("recipe_args"), RecipeArgs)
    opts["train_kwargs"] = parse_mapping("--train-kwargs", opts.get("train_kwargs"), TrainKwargs)
    if opts["recipe_args"].given() and opts.get("recipe") is not None:
        raise ConfigError("--recipe-args changes the derived recipe; with --recipe, edit your recipe file instead")
    _check_recipe_fits(canonical, opts)
    engine = (opts.get("deploy_engine") or DEPLOY_ENGINES[0]).lower()
    if engine not in DEPLOY_ENGINES:
        raise ConfigError(f"--deploy-engine must be one of {', '.join(DEPLOY_ENGINES)}, got {engine!r}")
    opts["deploy_engine"] = engine
    stride = opts.get("doc_stride")
    if stride is not None and stride >= (opts.get("max_seq_length") or ExperimentConfig.max_seq_length):
        raise ConfigError(f"--doc-stride {stride} must be smaller than --max-seq-length "
                          f"{opts.get('max_seq_length') or ExperimentConfig.max_seq_length}")
    device = (opts.get("device") or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    opts["device"] = device

    recipe = opts.get("recipe")
    if recipe is not None:
        recipe = Path(recipe)
        if not recipe.is_file():
            raise ConfigError(f"--recipe file {recipe} does not exist")
        from sparsify_mlflow.recipe_facts import read_recipe

        read_recipe(recipe)  # a file sparseml cannot read fails here, before any run starts
        opts["recipe"] = recipe
    if opts.get("summary_json") is not None:
        opts["summary_json"] = Path(opts["summary_json"])

    working_dir = Path(opts.get("working_dir") or ".").expanduser().resolve()
    _check_writable(working_dir)
    opts["working_dir"] = working_dir
    opts["experiment_name"] = opts.get("experiment_name") or DEFAULT_EXPERIMENT
    opts["register"] = True if opts.get("register") is None else bool(opts["register"])
    opts["seed"] = 0 if opts.get("seed") is None else int(opts["seed"])

    known = set(ExperimentConfig.__dataclass_fields__) - {"use_case"}
    unknown = set(opts) - known
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return ExperimentConfig(use_case=canonical, **{k: v for k, v in opts.items() if v is not None or k == "optim_level"})


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


def _eval_metric(use_case: str, name: str | None) -> str | None:
    """The logged metric an --eval-metric choice selects (None: the use case's main metric)."""
    from sparsify_mlflow import usecases

    if name is None:
        return None
    choices = usecases.eval_metrics(usecases.resolve(use_case))
    if name not in choices:
        raise ConfigError(f"--eval-metric {name!r} is not available for {use_case}; choose one of: "
                          f"{', '.join(choices)}")
    return choices[name]


def _check_recipe_fits(use_case: str, opts: dict[str, Any]) -> None:
    """--recipe-args phases must fit the run's epochs (the use case's default when not given)."""
    from sparsify_mlflow import usecases

    epochs = opts.get("epochs") or usecases.resolve(use_case).default_epochs
    try:
        opts["recipe_args"].check_fits(epochs)
    except ValueError as exc:
        raise ConfigError(f"--recipe-args: {exc}") from None


def _fold_distill_into_teacher(opts: dict[str, Any]) -> str:
    """--distill/--no-distill are the older spellings of --teacher self/off; both given must agree.

    Returns the spelling the user chose, for error messages.
    """
    distill = opts.pop("distill", None)
    teacher = opts.get("teacher")
    if distill is None:
        return f"--teacher {teacher}"
    implied = TEACHER_SELF if distill else TEACHER_OFF
    if teacher is not None and (teacher == TEACHER_OFF) == distill:
        flag = "--distill" if distill else "--no-distill"
        raise ConfigError(f"{flag} contradicts --teacher {teacher}")
    opts["teacher"] = teacher or implied
    return "--distill" if teacher is None else f"--teacher {teacher}"


def _check_distillation(use_case: str, opts: dict[str, Any], spelling: str) -> None:
    """A teacher needs a use case that can distil; hardness in [0, 1], temperature > 0."""
    from sparsify_mlflow import usecases

    if opts.get("teacher") not in (None, TEACHER_OFF) and not hasattr(usecases.resolve(use_case), "distillation_step"):
        raise ConfigError(f"{spelling} is not supported by {use_case} (NLP use cases only)")
    hardness = opts.get("distill_hardness")
    if hardness is not None and not (isinstance(hardness, (int, float)) and 0.0 <= hardness <= 1.0):
        raise ConfigError(f"--distill-hardness must be in [0, 1], got {hardness!r}")
    temperature = opts.get("distill_temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0.0 < temperature
                                        and math.isfinite(temperature)):
        raise ConfigError(f"--distill-temperature must be a positive number, got {temperature!r}")


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
