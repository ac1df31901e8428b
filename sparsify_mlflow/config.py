"""ExperimentConfig: every user option, validated once at the door.

Click option names, MLproject parameter names and these field names are the same words, and the
whole config is logged to MLflow as params, so a run says exactly how it was made.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sparsify_mlflow.errors import ConfigError

DEFAULT_EXPERIMENT = "sparsify-training-aware"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ExperimentConfig:
    use_case: str                      # canonical use-case name (aliases resolved)
    model: str | None = None           # None: the use case's default model
    data: str | None = None            # None: the use case's embedded default dataset
    optim_level: float = 0.5
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
    benchmark_iterations: int = 30
    # NLP use cases (ignored by the others)
    max_seq_length: int = 128          # tokens per example; the exported ONNX has this fixed length
    text_column: str | None = None     # None: auto-detected (text, sentence, sentence1/sentence2, ...)
    text_pair_column: str | None = None
    label_column: str | None = None    # None: "label"
    distill: bool | None = None        # None: the use case's default (on for NLP, off for CV)
    distill_hardness: float = 0.5      # weight of the distillation loss vs the task loss
    distill_temperature: float = 2.0
    tokens_column: str | None = None   # token classification: None: auto-detected (tokens, words)
    tags_column: str | None = None     # None: auto-detected (ner_tags, tags, labels)
    doc_stride: int | None = None      # question answering: overlap of context windows; None: max_seq_length // 4
    max_answer_length: int = 30        # longest answer span in tokens

    def with_defaults(self, *, model: str, epochs: int, batch_size: int, lr: float,
                      pretrained: bool | None = None, distill: bool = False) -> ExperimentConfig:
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
            distill=distill if self.distill is None else self.distill,
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
        return {f"config.{k}": ("" if v is None else str(v)) for k, v in asdict(self).items()}


def _blank_to_none(value: Any) -> Any:
    """MLproject passes unset string parameters as ''; treat them as not given."""
    return None if isinstance(value, str) and value.strip() == "" else value


def build_config(use_case: str, **options: Any) -> ExperimentConfig:
    """Validate raw CLI/MLproject values and build the config; raise ConfigError naming the option."""
    from sparsify_mlflow import usecases  # resolve aliases here so the rest sees one name

    opts = {k: _blank_to_none(v) for k, v in options.items()}
    canonical = usecases.resolve(use_case).name

    level = opts.get("optim_level")
    level = 0.5 if level is None else level
    try:
        level = float(level)
    except (TypeError, ValueError):
        raise ConfigError(f"--optim-level must be a number in [0, 1], got {level!r}") from None
    if math.isnan(level) or not 0.0 <= level <= 1.0:
        raise ConfigError(f"--optim-level {level:g} is outside [0, 1]")
    opts["optim_level"] = level

    for name in ("epochs", "batch_size", "image_size", "benchmark_batch_size", "benchmark_iterations",
                 "max_seq_length", "doc_stride", "max_answer_length"):
        value = opts.get(name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    lr = opts.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--lr must be a positive number, got {lr!r}")
    _check_distillation(canonical, opts)
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
    return ExperimentConfig(use_case=canonical, **{k: v for k, v in opts.items() if v is not None})


def _check_distillation(use_case: str, opts: dict[str, Any]) -> None:
    """--distill needs a use case that can distil; hardness in [0, 1], temperature > 0."""
    from sparsify_mlflow import usecases

    if opts.get("distill") and not hasattr(usecases.resolve(use_case), "distillation_step"):
        raise ConfigError(f"--distill is not supported by {use_case} (NLP use cases only)")
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
