"""`sparsify.run`: click commands only (parse, build the config, call the experiment, print)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from typing import Any

import click

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # sparseml/deepsparse phone home otherwise
# Third-party import-time chatter that users cannot act on.
warnings.filterwarnings("ignore", message=r"Field .* has conflict with protected namespace")
warnings.filterwarnings("ignore", category=FutureWarning)
for _name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
    logging.getLogger(_name).setLevel(logging.WARNING)

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
# A flag MLproject can pass as a value: --flag alone means true, --flag false/true as given.
TRISTATE_FLAG = click.Choice(["true", "false"], case_sensitive=False)
USE_CASE_HELP = "cv-classification, nlp-text_classification, ... (aliases accepted, e.g. image_classification)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Sparsify-style training-aware experiments (GMP pruning + INT8 QAT), tracked in MLflow."""


@cli.command("training-aware")
@click.option("--use-case", default="cv-classification", show_default=True, help=USE_CASE_HELP)
@click.option("--model", default=None, help="Model name (e.g. resnet50) or a local .pt/.pth checkpoint. "
              "Default: the use case's small model, trained from scratch.")
@click.option("--data", default=None, help="Dataset folder/file (see README). Default: embedded sklearn digits.")
@click.option("--optim-level", type=OPT_FLOAT, default=None,
              help="0 = dense baseline; <0.3 INT8 only; 0.3..1.0 = 60%..95% sparsity + INT8; "
                   "an integer 2..100 is a percent (50 = 0.5). Default 0.5 (without --recipe).")
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
@click.option("--benchmark-batch-size", type=OPT_INT, default=None, help="Batch size of the throughput benchmark (default 16).")
@click.option("--benchmark-iterations", type=OPT_INT, default=None,
              help="Timed batches per model, engine and batch size, over all rounds (default 30).")
@click.option("--benchmark-rounds", type=OPT_INT, default=None,
              help="Alternating rounds of the benchmark session; a speedup is the median of the per-round "
                   "ratios (default 5).")
@click.option("--num-cores", type=OPT_INT, default=None,
              help="Cores (threads) the inference engines use (default: every physical core available).")
@click.option("--max-seq-length", type=OPT_INT, default=None,
              help="NLP: tokens per example; the exported ONNX has this fixed length (default 128).")
@click.option("--text-column", default=None,
              help="NLP: column with the text (default: auto-detected, e.g. text or sentence).")
@click.option("--text-pair-column", default=None, help="NLP: second text column, for sentence pairs.")
@click.option("--label-column", default=None, help="NLP: column with the label (default: label).")
@click.option("--distill/--no-distill", default=None,
              help="Distil the sparse model from the dense baseline (default: on for NLP, off for CV).")
@click.option("--distill-mode", type=TRISTATE, default="auto", hidden=True,
              help="MLproject's spelling of --distill/--no-distill (auto/true/false).")
@click.option("--distill-hardness", type=OPT_FLOAT, default=None,
              help="Weight of the distillation loss against the task loss, 0..1 (default 0.5).")
@click.option("--distill-temperature", type=OPT_FLOAT, default=None,
              help="Softmax temperature of the distillation loss (default 2.0).")
@click.option("--teacher", default=None,
              help="Distillation teacher: off, self (the dense baseline) or a model name/path trained on the "
                   "same labels (default: self for NLP, off for CV).")
@click.option("--eval-metric", default=None,
              help="Main metric for summaries, sweeps and promotion: accuracy, f1, recall, precision "
                   "(as the use case offers; default accuracy).")
@click.option("--recipe-args", default=None,
              help='JSON/YAML mapping overriding the derived recipe, e.g. \'{"num_qat_epochs": 2, "init_lr": 0.01}\'.')
@click.option("--train-kwargs", default=None,
              help='JSON/YAML mapping for the training loop: weight_decay, momentum, grad_clip, num_workers.')
@click.option("--deploy-engine", default="deepsparse", show_default=True,
              help="Engine that validates and benchmarks the deployment: deepsparse or onnxruntime.")
@click.option("--tokens-column", default=None, help="Token classification: field with the word list "
              "(default: auto-detected, tokens or words).")
@click.option("--tags-column", default=None, help="Token classification: field with the tag list "
              "(default: auto-detected, ner_tags, tags or labels).")
@click.option("--doc-stride", type=OPT_INT, default=None, help="Question answering: tokens shared by consecutive "
              "windows of a long context (default: max-seq-length / 4).")
@click.option("--max-answer-length", type=OPT_INT, default=None,
              help="Question answering: longest answer in tokens (default 30).")
@click.option("--nproc-per-node", type=OPT_INT, default=None,
              help="Train with DistributedDataParallel in this many processes on this machine (gloo on CPU, "
                   "NCCL on GPU), relaunched through torchrun; rank 0 alone logs, exports and registers.")
@click.option("--resume", "resume_run", default=None, metavar="RUN_ID",
              help="Continue a stopped (killed, failed) experiment in its own MLflow runs from its last "
                   "per-epoch checkpoint. It keeps the options it was started with: give only --tracking-uri, "
                   "--working-dir or --summary-json beside it.")
def training_aware(use_case: str, no_register: bool, register_value: str, pretrained_weights: str,
                   distill_mode: str, resume_run: str | None, nproc_per_node: int | None, **options: Any) -> None:
    """Fine-tune a dense baseline and a pruned + INT8 model, compare them, register the sparse one."""
    if resume_run:
        _only_resume_options()  # before the heavy imports: a wrong call fails at once
    from sparsify_mlflow.config import build_config
    from sparsify_mlflow.experiment import run_training_aware
    from sparsify_mlflow.summary import print_summary, write_summary_json

    if nproc_per_node is not None and nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be a positive integer, got {nproc_per_node}")
    if (nproc_per_node or 1) > 1 and "WORLD_SIZE" not in os.environ:
        if not resume_run:  # bad options fail here, once, before any process starts
            _check_distributable(build_config(use_case, **_apply_spellings(dict(
                options, no_register=no_register, register_value=register_value,
                pretrained_weights=pretrained_weights, distill_mode=distill_mode))))
        from sparsify_mlflow import distributed

        raise click.exceptions.Exit(distributed.launch(nproc_per_node, _without_nproc(_ARGV)))
    if resume_run:
        result = _resume(resume_run, options)
        print_summary(result)
        if result.config.summary_json:
            write_summary_json(result, result.config.summary_json)
        return
    options["register"] = not no_register and register_value.lower() != "false"
    if options["pretrained"] is None and pretrained_weights.lower() != "auto":
        options["pretrained"] = pretrained_weights.lower() == "true"
    if options["distill"] is None and distill_mode.lower() != "auto":
        options["distill"] = distill_mode.lower() == "true"
    cfg = build_config(use_case, **options)
    if "WORLD_SIZE" in os.environ:
        _check_distributable(cfg)
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
@click.option("--recipe-args", default=None, help="JSON/YAML overrides, as for training-aware.")
def recipe(use_case: str, optim_level: float, epochs: int | None, model: str | None, lr: float | None,
           num_classes: int, recipe_args: str | None) -> None:
    """Print the sparseml recipe YAML an optim level derives to, without training."""
    from sparsify_mlflow.config import build_config
    from sparsify_mlflow.levels import Distillation, plan_recipe, recipe_yaml
    from sparsify_mlflow.usecases import resolve

    cfg = build_config(use_case, optim_level=optim_level, epochs=epochs, model=model, lr=lr, recipe_args=recipe_args)
    case = resolve(cfg.use_case)
    cfg = cfg.with_defaults(model=case.default_model, epochs=case.default_epochs,
                            batch_size=case.default_batch_size, lr=case.default_lr)
    built, _ = case.create_model(cfg, num_classes, pretrained=False)
    distillation = Distillation() if getattr(case, "default_distill", False) else None  # as training-aware does
    click.echo(recipe_yaml(plan_recipe(cfg.optim_level, cfg.epochs, case.pruning_scope(built), cfg.lr,
                                       distillation=distillation, args=cfg.recipe_args)), nl=False)



RESUME_OPTIONS = {"tracking_uri", "working_dir", "summary_json", "resume_run", "nproc_per_node"}
_ARGV: list[str] = []  # this process's arguments, for --nproc-per-node's relaunch


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out


def _check_distributable(cfg: Any) -> None:
    """What distributed training does not cover yet, said before any process starts."""
    if cfg.teacher not in (None, "off"):
        raise UserError(f"--nproc-per-node does not combine with distillation yet (--teacher {cfg.teacher}); "
                        f"use --teacher off or one process")


def _only_resume_options() -> None:
    """--resume takes the run's own options: any other option given is a mistake, said in one line."""
    ctx = click.get_current_context()
    given = sorted(name for name in ctx.params if name not in RESUME_OPTIONS
                   and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE)
    if given:
        raise UserError(f"--resume continues a run with the options it was started with; drop "
                        f"{', '.join('--' + n.replace('_', '-') for n in given)}")


def _resume(run_id: str, options: dict[str, Any]) -> Any:
    """--resume: the stopped run's own config, found (and checked) before any run is reopened."""
    from dataclasses import replace
    from pathlib import Path

    from sparsify_mlflow import resume, tracking
    from sparsify_mlflow.experiment import run_training_aware

    working_dir = Path(options.get("working_dir") or ".").expanduser().resolve()
    uri = tracking.resolve_tracking_uri(options.get("tracking_uri"), working_dir)
    point = resume.find(run_id, uri, working_dir)
    summary = options.get("summary_json")
    cfg = replace(point.cfg, tracking_uri=uri, summary_json=Path(summary) if summary else point.cfg.summary_json)
    done = ", ".join(f"{role} stage after epoch {c.epoch}" for role, c in point.checkpoints.items())
    print(f"Resuming run {point.parent_run_id} ({done or 'no checkpoint yet: unfinished stages start over'}).")
    return run_training_aware(cfg, point)


def _apply_spellings(options: dict[str, Any]) -> dict[str, Any]:
    """Fold MLproject's spellings of the flag options (register, pretrained, distill) into config values."""
    no_register, register_value = options.pop("no_register", False), options.pop("register_value", "auto")
    pretrained_weights, distill_mode = options.pop("pretrained_weights", "auto"), options.pop("distill_mode", "auto")
    options["register"] = not no_register and register_value.lower() != "false"
    if options.get("pretrained") is None and pretrained_weights.lower() != "auto":
        options["pretrained"] = pretrained_weights.lower() == "true"
    if options.get("distill") is None and distill_mode.lower() != "auto":
        options["distill"] = distill_mode.lower() == "true"
    return options


@cli.command("sweep")
@click.option("--optim-levels", default="0.1,0.3,0.5,0.7,1.0", show_default=True,
              help="Comma-separated optim levels; the dense baseline is trained once for all of them.")
@click.option("--max-metric-drop", type=OPT_FLOAT, default=None,
              help="Recommend the fastest level losing at most this many points of the main metric.")
@click.option("--min-speedup", type=OPT_FLOAT, default=None,
              help="...and at least this batch-1 speedup over the dense baseline (x).")
def sweep(optim_levels: str, max_metric_drop: float | None, min_speedup: float | None, use_case: str,
          **options: Any) -> None:
    """Run the training-aware experiment at several optim levels; compare, plot the Pareto front, recommend."""
    from sparsify_mlflow.config import build_config
    from sparsify_mlflow.summary import print_sweep_summary, write_sweep_summary_json
    from sparsify_mlflow.sweep import build_sweep_options, run_sweep

    sweep_options = build_sweep_options(optim_levels, max_metric_drop, min_speedup)
    if options.get("recipe"):
        raise UserError("--recipe does not combine with sweep: every level would train the same recipe")
    cfg = build_config(use_case, optim_level=sweep_options.levels[0], **_apply_spellings(options))
    result = run_sweep(cfg, sweep_options)
    print_sweep_summary(result)
    if cfg.summary_json:
        write_sweep_summary_json(result, cfg.summary_json)


# Every training-aware option except the single level (click options, shared by name with MLproject).
sweep.params.extend(p for p in training_aware.params
                    if p.name not in ("optim_level", "resume_run", "nproc_per_node"))


@cli.command("promote")
@click.option("--registered-model-name", required=True, help="The registered model.")
@click.option("--version", default=None, help="The version to promote (or give --alias).")
@click.option("--alias", default=None, help="Promote the version holding this alias, e.g. candidate or recommended.")
@click.option("--to", "to", default="champion", show_default=True, help="The alias to move to that version.")
@click.option("--max-metric-drop", type=OPT_FLOAT, default=None,
              help="Refuse if the version lost more points of the main metric than this (tag main_drop).")
@click.option("--min-speedup", type=OPT_FLOAT, default=None,
              help="Refuse if its batch-1 speedup over the dense baseline is below this (tag speedup).")
@click.option("--accept-unreliable-speedup", "accept_unreliable", type=TRISTATE_FLAG, default="false",
              is_flag=False, flag_value="true",
              help="Let --min-speedup pass a speedup whose benchmark session was marked unreliable (machine busy).")
@click.option("--reason", default=None, help="Why: recorded on the version with who and when.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; else MLFLOW_TRACKING_URI; else sqlite:///./mlflow.db.")
def promote(registered_model_name: str, version: str | None, alias: str | None, to: str,
            max_metric_drop: float | None, min_speedup: float | None, accept_unreliable: str, reason: str | None,
            tracking_uri: str | None) -> None:
    """Move an alias (champion) to a version after checking its gates; the old holder stays previous-<alias>."""
    from pathlib import Path

    from sparsify_mlflow import tracking
    from sparsify_mlflow.promote import Gates
    from sparsify_mlflow.promote import promote as run_promote

    tracking.connect(tracking.resolve_tracking_uri(tracking_uri or None, Path(".").resolve()))
    done = run_promote(registered_model_name, to=to, version=version or None, alias=alias or None,
                       gates=Gates(max_metric_drop, min_speedup, accept_unreliable.lower() == "true"), reason=reason)
    if not done.changed:
        click.echo(f"{done.name} version {done.version} already is @{done.alias}; nothing changed")
        return
    before = (f" (version {done.previous_version} is now @{done.previous_alias})" if done.previous_version
              else " (no previous holder)")
    click.echo(f"Promoted {done.name} version {done.version} to @{done.alias}{before}; "
               f"checks: {'; '.join(done.checks)}; by {done.by} at {done.at}")


@cli.command("benchmark")
@click.option("--model-uri", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION.")
@click.option("--batch-size", "batch_sizes", default="1,16", show_default=True, help="Comma-separated batch sizes.")
@click.option("--engine", type=click.Choice(["deepsparse", "onnxruntime", "both"]), default="deepsparse",
              show_default=True, help="Engine(s); DeepSparse falls back to ONNX Runtime where it cannot run.")
@click.option("--iterations", type=int, default=30, show_default=True,
              help="Timed batches per engine and batch size, over all rounds.")
@click.option("--rounds", type=OPT_INT, default=None, help="Alternating rounds of the benchmark session (default 5).")
@click.option("--num-cores", type=OPT_INT, default=None,
              help="Cores (threads) the engines use (default: every physical core available).")
@click.option("--experiment-name", default=None, help="MLflow experiment of the benchmark run (default sparsify-benchmarks).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; else MLFLOW_TRACKING_URI; else sqlite:///./mlflow.db.")
def benchmark_command(model_uri: str, batch_sizes: str, engine: str, iterations: int, rounds: int | None,
                      num_cores: int | None, experiment_name: str | None, tracking_uri: str | None) -> None:
    """Benchmark a registered model's ONNX file and log the figures to a run linked to that version."""
    from sparsify_mlflow.model_benchmark import DEFAULT_EXPERIMENT, benchmark_registered, parse_batch_sizes
    from sparsify_mlflow.report import print_table
    from sparsify_mlflow.speed_session import DEFAULT_ROUNDS

    done = benchmark_registered(model_uri, batch_sizes=parse_batch_sizes(batch_sizes), engine=engine,
                                iterations=iterations, rounds=rounds or DEFAULT_ROUNDS, num_cores=num_cores,
                                tracking_uri=tracking_uri or None,
                                experiment_name=experiment_name or DEFAULT_EXPERIMENT)
    print_table(f"{done.name} version {done.version} ({done.model_uri}; inputs: {done.input_source})",
                ("engine / batch", "latency median (ms)", "p90 (ms)", "items/s"),
                [(key, f"{r.latency_ms_median:.2f}", f"{r.latency_ms_p90:.2f}", f"{r.items_per_second:.1f}")
                 for key, r in done.results.items()])
    if not done.reliability.reliable:
        click.echo(f"warning: these figures are unreliable: {done.reliability.reason}")
    click.echo(f"Logged to run {done.run_id}; tagged on the version as benchmark_run_id")

def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _refused_by_server(exc: BaseException) -> str | None:
    """One line for an MLflow server's 401/403 (credentials, permissions); None for anything else."""
    from mlflow.exceptions import MlflowException

    from sparsify_mlflow.remote import redact_uri

    if not isinstance(exc, MlflowException) or exc.error_code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return None
    import mlflow

    what = "refused the credentials" if exc.error_code == "UNAUTHENTICATED" else "denied permission"
    return (f"MLflow tracking server {redact_uri(mlflow.get_tracking_uri())} {what} ({exc.error_code}); check "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and the user's permissions")


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user's mistake is one line on stderr and exit code 2, never a traceback."""
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up promptly in logs and pipes
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends the MLflow runs KILLED, not RUNNING forever
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: join the process group
        from sparsify_mlflow import distributed

        ctx = distributed.init_from_env()
        if not ctx.leader:
            return distributed.serve(ctx)
    code = 1
    try:
        code = _run(argv)
    finally:
        if ctx is not None:
            distributed.shutdown()
            distributed.record_exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="sparsify.run", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:  # Ctrl-C / SIGTERM (click turns KeyboardInterrupt into Abort)
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:  # the tracking server refusing us mid-command is the user's to fix, too
        message = _refused_by_server(exc)
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
