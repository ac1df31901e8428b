"""`sparsify.run`: click commands only (parse, build the config, call the experiment, print)."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import click

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # sparseml/deepsparse phone home otherwise
# Third-party import-time chatter that users cannot act on.
warnings.filterwarnings("ignore", message=r"Field .* has conflict with protected namespace")
warnings.filterwarnings("ignore", category=FutureWarning)

from sparsify_mlflow.errors import UserError  # noqa: E402

class _Optional(click.ParamType):
    """An int/float option that MLproject may pass as '' (its way of saying "not given")."""

    def __init__(self, kind: type):
        self.kind = kind
        self.name = f"optional {kind.__name__}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, self.kind):
            return value
        if isinstance(value, str) and not value.strip():
            return None
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a valid {self.kind.__name__}", param, ctx)


OPT_INT, OPT_FLOAT = _Optional(int), _Optional(float)
TRISTATE = click.Choice(["auto", "true", "false"], case_sensitive=False)
USE_CASE_HELP = "cv-classification, nlp-text_classification, ... (aliases accepted, e.g. image_classification)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Sparsify-style training-aware experiments (GMP pruning + INT8 QAT), tracked in MLflow."""


@cli.command("training-aware")
@click.option("--use-case", default="cv-classification", show_default=True, help=USE_CASE_HELP)
@click.option("--model", default=None, help="Model name (e.g. resnet50) or a local .pt/.pth checkpoint. "
              "Default: the use case's small model, trained from scratch.")
@click.option("--data", default=None, help="Dataset folder/file (see README). Default: embedded sklearn digits.")
@click.option("--optim-level", type=float, default=0.5, show_default=True,
              help="0 = dense baseline; <0.3 INT8 only; 0.3..1.0 = 60%..95% sparsity + INT8.")
@click.option("--epochs", type=OPT_INT, default=None, help="Training epochs (both models). Default per use case.")
@click.option("--batch-size", type=OPT_INT, default=None, help="Training batch size. Default per use case.")
@click.option("--lr", type=OPT_FLOAT, default=None, help="Initial learning rate (linear decay). Default per use case.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, init and shuffling.")
@click.option("--image-size", type=OPT_INT, default=None, help="CV input size in pixels (default 224; 32 for digits).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (benchmarks run on CPU).")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Start from pretrained weights (default: yes for a named model, no for the default one).")
@click.option("--pretrained-weights", type=TRISTATE, default="auto", hidden=True,
              help="MLproject's spelling of --pretrained/--no-pretrained (auto/true/false).")
@click.option("--experiment-name", default=None, help="MLflow experiment (default sparsify-training-aware).")
@click.option("--registered-model-name", default=None, help="Registry name (default <use-case>-<model>).")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI; else MLFLOW_TRACKING_URI; else sqlite:///<working-dir>/mlflow.db.")
@click.option("--recipe", default=None, help="Use this sparseml recipe YAML instead of the derived one.")
@click.option("--no-register", is_flag=True, help="Do not register the sparse ONNX model.")
@click.option("--register", "register_value", type=TRISTATE, default="auto", hidden=True,
              help="MLproject's spelling of --no-register (true/false).")
@click.option("--summary-json", default=None, help="Write a machine-readable summary to this path.")
@click.option("--working-dir", default=".", show_default=True, help="Where the experiment folder and default store go.")
@click.option("--benchmark-batch-size", type=int, default=16, show_default=True, help="Batch size of the throughput benchmark.")
@click.option("--benchmark-iterations", type=int, default=30, show_default=True, help="Timed iterations per benchmark.")
def training_aware(use_case: str, no_register: bool, register_value: str, pretrained_weights: str,
                   **options: Any) -> None:
    """Fine-tune a dense baseline and a pruned + INT8 model, compare them, register the sparse one."""
    from sparsify_mlflow.config import build_config
    from sparsify_mlflow.experiment import run_training_aware
    from sparsify_mlflow.summary import print_summary, write_summary_json

    options["register"] = not no_register and register_value.lower() != "false"
    if options["pretrained"] is None and pretrained_weights.lower() != "auto":
        options["pretrained"] = pretrained_weights.lower() == "true"
    cfg = build_config(use_case, **options)
    result = run_training_aware(cfg)
    print_summary(result)
    if cfg.summary_json:
        write_summary_json(result, cfg.summary_json)


@cli.command("recipe")
@click.option("--use-case", default="cv-classification", show_default=True, help=USE_CASE_HELP)
@click.option("--optim-level", type=float, default=0.5, show_default=True)
@click.option("--epochs", type=OPT_INT, default=None, help="Default per use case.")
@click.option("--model", default=None, help="Model whose layers the recipe names (default: the use case's).")
@click.option("--lr", type=float, default=None)
@click.option("--num-classes", type=int, default=10, show_default=True, help="Head size of the model the recipe is for.")
def recipe(use_case: str, optim_level: float, epochs: int | None, model: str | None, lr: float | None,
           num_classes: int) -> None:
    """Print the sparseml recipe YAML an optim level derives to, without training."""
    from sparsify_mlflow.config import build_config
    from sparsify_mlflow.levels import plan_recipe, recipe_yaml
    from sparsify_mlflow.usecases import resolve

    cfg = build_config(use_case, optim_level=optim_level, epochs=epochs, model=model, lr=lr)
    case = resolve(cfg.use_case)
    cfg = cfg.with_defaults(model=case.default_model, epochs=case.default_epochs,
                            batch_size=case.default_batch_size, lr=case.default_lr)
    built, _ = case.create_model(cfg, num_classes, pretrained=False)
    click.echo(recipe_yaml(plan_recipe(cfg.optim_level, cfg.epochs, case.pruning_scope(built), cfg.lr)), nl=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user's mistake is one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="sparsify.run", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
