"""`sparsify.run`: click commands only (parse, build the config, call the experiment, print)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
import warnings
from typing import Any

import click

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # sparseml/deepsparse phone home otherwise
# Third-party import-time chatter that users cannot act on.
warnings.filterwarnings("ignore", message=r"Field .* has conflict with protected namespace")
warnings.filterwarnings("ignore", category=FutureWarning)
for _name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
    logging.getLogger(_name).setLevel(logging.WARNING)

from sparsify_mlflow.config import COMMON_OPTIONS  # noqa: E402 - declarations only: no torch, no mlflow
from sparsify_mlflow.errors import UserError  # noqa: E402
from sparsify_mlflow.options import (  # noqa: E402
    OPT_FLOAT,
    OPT_INT,
    RECIPE,
    SWEEP,
    TRAINING,
    TRAINING_AWARE,
    Declared,
    click_options,
    declared,
    with_options,
)

# Command controls and old spellings: options of a command, not of the experiment (see config.py for those).
DISTILL = Declared("distill", bool, None, "Older spelling of --teacher self / --teacher off.", TRAINING, None, None,
                   False, None)
EXTRA_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}  # the use case's own options
TRUE_FALSE = click.Choice(["true", "false"], case_sensitive=False)  # a flag MLproject can pass as a value
USE_CASE_OPTIONS = ("Each use case has options of its own (e.g. --image-size, --max-seq-length, --doc-stride): "
                    "`sparsify.run use-cases` lists them.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Sparsify-style training-aware experiments (GMP pruning + INT8 QAT), tracked in MLflow."""


@cli.command("training-aware", context_settings=EXTRA_ARGS, epilog=USE_CASE_OPTIONS)
@with_options([*COMMON_OPTIONS, DISTILL], TRAINING_AWARE)
@click.option("--nproc-per-node", type=OPT_INT, default=1, show_default=True,
              help="Train with DistributedDataParallel in this many processes on this machine (gloo on CPU, "
                   "NCCL on GPU), relaunched through torchrun; rank 0 alone logs, exports and registers.")
@click.option("--resume", "resume_run", default=None, metavar="RUN_ID",
              help="Continue a stopped (killed, failed) experiment in its own MLflow runs from its last "
                   "per-epoch checkpoint. It keeps the options it was started with: give only --tracking-uri, "
                   "--working-dir or --summary-json beside it.")
@click.pass_context
def training_aware(ctx: click.Context, resume_run: str | None, nproc_per_node: int | None, **options: Any) -> None:
    """Fine-tune a dense baseline and a pruned + INT8 model, compare them, register the sparse one."""
    if resume_run:
        _only_resume_options()  # before the heavy imports: a wrong call fails at once
    if nproc_per_node is not None and nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be a positive integer, got {nproc_per_node}")
    from sparsify_mlflow.summary import print_summary, write_summary_json

    if resume_run:
        if (nproc_per_node or 1) > 1 and "WORLD_SIZE" not in os.environ:
            from sparsify_mlflow import launcher

            raise click.exceptions.Exit(launcher.launch(nproc_per_node, _without_nproc(_ARGV)))
        result = _resume(resume_run, options)
    else:
        cfg = _config(options, ctx.args)  # bad options fail here, once, before any process starts
        if "WORLD_SIZE" in os.environ or (nproc_per_node or 1) > 1:
            _check_distributable(cfg)
        if (nproc_per_node or 1) > 1 and "WORLD_SIZE" not in os.environ:
            from sparsify_mlflow import launcher

            raise click.exceptions.Exit(launcher.launch(nproc_per_node, _without_nproc(_ARGV)))
        from sparsify_mlflow.experiment import run_training_aware

        result = run_training_aware(cfg)
    print_summary(result)
    if result.config.summary_json:
        write_summary_json(result, result.config.summary_json)


def _config(options: dict[str, Any], args: list[str], **fixed: Any) -> Any:
    """The validated config: the common options, and the use case's own parsed from the extra `args`."""
    from sparsify_mlflow.usecases import resolve
    from sparsify_mlflow.validation import build_config

    use_case = resolve(options.pop("use_case"))
    return build_config(use_case, **options, **fixed, **use_case_values(use_case, args))


def use_case_values(use_case: Any, args: list[str]) -> dict[str, Any]:
    """The use case's own options from the arguments click left over. Another use case's option is
    ignored when blank (MLproject passes every parameter) and refused, in one line, when given."""
    own = [o for o in declared(use_case.options)]
    known = {flag for o in own for flag in (o.flag, f"--no-{o.flag[2:]}")}
    kept: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, _, inline = arg.partition("=")
        takes_value = not inline and i + 1 < len(args) and not args[i + 1].startswith("--")
        value = inline if inline else (args[i + 1] if takes_value else "")
        step = 1 if inline or not takes_value else 2
        if flag in known:
            kept += args[i:i + step]
        elif not flag.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}")
        elif value.strip() or not takes_value and not inline:
            listed = ", ".join(o.flag for o in own) or "none"
            raise UserError(f"no such option {flag} for {use_case.name} (its own options: {listed}; "
                            f"`sparsify.run use-cases` lists every use case's)")
        i += step
    command = click.Command(use_case.name, params=click_options(own, TRAINING_AWARE), add_help_option=False)
    values = command.make_context(use_case.name, kept).params
    return {k: v for k, v in values.items() if v is not None and not (k.endswith("_off") and v is False)}


@cli.command("recipe")
@with_options(COMMON_OPTIONS, RECIPE)
@click.option("--num-classes", type=int, default=10, show_default=True, help="Head size of the model the recipe is for.")
def recipe(num_classes: int, **options: Any) -> None:
    """Print the sparseml recipe YAML an optim level derives to, without training."""
    from sparsify_mlflow.levels import Distillation, plan_recipe, recipe_yaml

    cfg = _config(options, [])
    from sparsify_mlflow.usecases import resolve

    case = resolve(cfg.use_case)
    cfg = cfg.with_defaults(model=case.default_model, epochs=case.default_epochs,
                            batch_size=case.default_batch_size, lr=case.default_lr)
    distillation = Distillation() if case.default_distill else None  # as training-aware does
    built, _ = case.create_model(cfg, num_classes, pretrained=False)
    scope = case.pruning_scope(built)
    if cfg.recipe_args.allocates_layers(case.default_layer_allocation):  # weighs each layer on a data row
        from sparsify_mlflow.training import with_layer_costs

        scope = with_layer_costs(built, scope, case.sample_inputs(case.load_data(cfg), 1))
    click.echo(recipe_yaml(plan_recipe(cfg.optim_level, cfg.epochs, scope, cfg.lr,
                                       distillation=distillation, args=cfg.recipe_args, target=cfg.target,
                                       **case.recipe_defaults())), nl=False)


@cli.command("use-cases")
def use_cases() -> None:
    """List the use cases: their aliases, default model and epochs, and their own options."""
    from sparsify_mlflow.report import print_table
    from sparsify_mlflow.usecases import REGISTRY, resolve

    rows = []
    for name, entry in REGISTRY.items():
        case = resolve(name)
        own = "; ".join(f"{o.flag} ({o.help})" for o in declared(case.options)) or "-"
        rows.append((name, ", ".join(entry.aliases), f"{case.default_model}, {case.default_epochs} epochs", own))
    print_table("Use cases (--use-case takes the name or an alias)", ("use case", "aliases", "default", "own options"),
                rows)


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


@cli.command("sweep", context_settings=EXTRA_ARGS, epilog=USE_CASE_OPTIONS)
@click.option("--optim-levels", default="0.1,0.3,0.5,0.7,1.0", show_default=True,
              help="Comma-separated optim levels; the dense baseline is trained once for all of them.")
@click.option("--max-metric-drop", type=OPT_FLOAT, default=None,
              help="Recommend the fastest level losing at most this many points of the main metric.")
@click.option("--min-speedup", type=OPT_FLOAT, default=None,
              help="...and at least this batch-1 speedup over the dense baseline (x).")
@with_options([*COMMON_OPTIONS, DISTILL], SWEEP)
@click.pass_context
def sweep(ctx: click.Context, optim_levels: str, max_metric_drop: float | None, min_speedup: float | None,
          **options: Any) -> None:
    """Run the training-aware experiment at several optim levels; compare, plot the Pareto front, recommend."""
    from sparsify_mlflow.summary import print_sweep_summary, write_sweep_summary_json
    from sparsify_mlflow.sweep import build_sweep_options, run_sweep

    sweep_options = build_sweep_options(optim_levels, max_metric_drop, min_speedup)
    if "--recipe" in ctx.args or any(arg.startswith("--recipe=") for arg in ctx.args):
        raise UserError("--recipe does not combine with sweep: every level would train the same recipe")
    cfg = _config(options, ctx.args, optim_level=sweep_options.levels[0])
    result = run_sweep(cfg, sweep_options)
    print_sweep_summary(result)
    if cfg.summary_json:
        write_sweep_summary_json(result, cfg.summary_json)


@cli.command("promote")
@click.option("--registered-model-name", required=True, help="The registered model.")
@click.option("--version", default=None, help="The version to promote (or give --alias).")
@click.option("--alias", default=None, help="Promote the version holding this alias, e.g. candidate or recommended.")
@click.option("--to", "to", default="champion", show_default=True, help="The alias to move to that version.")
@click.option("--max-metric-drop", type=OPT_FLOAT, default=None,
              help="Refuse if the version lost more points of the main metric than this (tag main_drop).")
@click.option("--min-speedup", type=OPT_FLOAT, default=None,
              help="Refuse if its batch-1 speedup over the dense baseline is below this (tag speedup).")
@click.option("--speedup-against", type=click.Choice(["best-dense", "same-engine"]), default="best-dense",
              show_default=True, help="Which speedup --min-speedup reads: against the fastest dense engine the "
              "session timed, or the dense model on the same engine.")
@click.option("--min-speedup-vs-int8", type=OPT_FLOAT, default=None,
              help="Refuse if its fastest deployment is less than this much faster than the INT8-only reference "
              "(the dense model quantized post-training; tag speedup_vs_int8_only).")
@click.option("--accept-unreliable-speedup", "accept_unreliable", type=TRUE_FALSE, default="false",
              is_flag=False, flag_value="true",
              help="Let --min-speedup pass a speedup whose benchmark session was marked unreliable (machine busy).")
@click.option("--reason", default=None, help="Why: recorded on the version with who and when.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; else MLFLOW_TRACKING_URI; else sqlite:///./mlflow.db.")
def promote(registered_model_name: str, version: str | None, alias: str | None, to: str,
            max_metric_drop: float | None, min_speedup: float | None, speedup_against: str,
            min_speedup_vs_int8: float | None, accept_unreliable: str, reason: str | None,
            tracking_uri: str | None) -> None:
    """Move an alias (champion) to a version after checking its gates; the old holder stays previous-<alias>."""
    from pathlib import Path

    from sparsify_mlflow import tracking
    from sparsify_mlflow.promote import Gates
    from sparsify_mlflow.promote import promote as run_promote

    uri = tracking.resolve_tracking_uri(tracking_uri or None, Path(".").resolve())
    tracking.require_existing_store(uri)
    tracking.connect(uri)
    done = run_promote(registered_model_name, to=to, version=version or None, alias=alias or None,
                       gates=Gates(max_metric_drop, min_speedup, accept_unreliable.lower() == "true", speedup_against,
                                   min_speedup_vs_int8),
                       reason=reason)
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
@click.option("--engine", type=click.Choice(["deepsparse", "onnxruntime", "openvino", "both"]), default="deepsparse",
              show_default=True, help="Engine(s) (both: DeepSparse and ONNX Runtime); OpenVINO runs the version's "
              "QDQ INT8 file; DeepSparse and OpenVINO fall back to ONNX Runtime where they cannot run.")
@click.option("--iterations", type=int, default=30, show_default=True,
              help="Timed batches per engine and batch size, over all rounds.")
@click.option("--rounds", type=OPT_INT, default=7, show_default=True, help="Alternating rounds of the benchmark session.")
@click.option("--num-cores", type=OPT_INT, default=None,
              help="Cores (threads) the engines use (default: every physical core available).")
@click.option("--experiment-name", default=None,
              help="MLflow experiment of the benchmark run (default sparsify-benchmarks).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; else MLFLOW_TRACKING_URI; else sqlite:///./mlflow.db.")
def benchmark_command(model_uri: str, batch_sizes: str, engine: str, iterations: int, rounds: int | None,
                      num_cores: int | None, experiment_name: str | None, tracking_uri: str | None) -> None:
    """Benchmark a registered model's ONNX file and log the figures to a run linked to that version."""
    from sparsify_mlflow.model_benchmark import DEFAULT_EXPERIMENT, benchmark_registered, parse_batch_sizes
    from sparsify_mlflow.report import print_table
    done = benchmark_registered(model_uri, batch_sizes=parse_batch_sizes(batch_sizes), engine=engine,
                                iterations=iterations, rounds=rounds, num_cores=num_cores,
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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: join the process group
        from sparsify_mlflow import distributed

        ctx = distributed.init_from_env()
        code = 1
        try:
            if ctx.leader:
                code = _run(argv)
            else:
                from sparsify_mlflow import launcher

                code = launcher.serve(ctx)
        except BaseException:
            traceback.print_exc()  # exit_now below would end the process before Python prints it
            raise
        finally:
            if ctx.leader:
                distributed.shutdown()
                distributed.record_exit(code)
            distributed.exit_now(code)
    return _run(argv)


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
