"""Options declared once: a dataclass field with its help is an option.

`ExperimentConfig`'s fields are the common options; a use case declares its own in its module, as
the fields of its `options` dataclass. From these declarations come the click options of every
command (`click_options`), the validation at the door (`parse_options`) and, through the click
commands, MLproject's entry points (sparsify_mlflow.mlproject). Adding an option is adding a field.

A field's type decides its command-line form: `int | None` and `float | None` take '' as "not
given" (MLproject's way of saying it); `bool | None` is a switch, `--x` / `--no-x` for people and
`--x true|false|auto` for MLproject; a field with `parse=` takes a string (JSON/YAML mappings).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sparsify_mlflow.errors import ConfigError

TRAINING_AWARE, SWEEP, RECIPE = "training-aware", "sweep", "recipe"
TRAINING = (TRAINING_AWARE, SWEEP)   # the commands that run an experiment
SWITCH_CHOICES = ("auto", "true", "false")


def option(default: Any, help: str, *, commands: tuple[str, ...] = TRAINING,
           check: Callable[[Any], str | None] | None = None, parse: Callable[[str, Any], Any] | None = None,
           mlproject: bool = True, metavar: str | None = None) -> Any:
    """A dataclass field that is an option: `check(value)` returns what is wrong (or None); `parse(flag, raw)`
    turns the command-line string into the field's value; `mlproject=False` keeps it out of MLproject."""
    meta = {"help": help, "commands": commands, "check": check, "parse": parse, "mlproject": mlproject,
            "metavar": metavar}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoOptions:
    """A use case without options of its own."""


@dataclass(frozen=True)
class Declared:
    """One option as the commands see it."""

    name: str                   # field name = MLproject parameter; --name-with-dashes on the command line
    kind: type                  # int, float, str, bool, Path (the field type without None)
    default: Any
    help: str
    commands: tuple[str, ...]
    check: Callable[[Any], str | None] | None
    parse: Callable[[str, Any], Any] | None
    mlproject: bool
    metavar: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def declared(cls: type) -> list[Declared]:
    """The options of a dataclass (fields without option() metadata are not options)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Declared(f.name, _base_type(hints[f.name]), default, f.metadata["help"], f.metadata["commands"],
                            f.metadata["check"], f.metadata["parse"], f.metadata["mlproject"], f.metadata["metavar"]))
    return out


def _base_type(hint: Any) -> type:
    """`int | None` -> int; a dataclass or other class -> itself."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


class _Optional(click.ParamType):
    """An int/float that MLproject may pass as '' (its way of saying "not given")."""

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
SWITCH = click.Choice(SWITCH_CHOICES, case_sensitive=False)


def click_options(options: Iterable[Declared], command: str) -> list[click.Option]:
    """The click options of `command` for these declarations (a switch gives two: --x [value] and --no-x)."""
    out: list[click.Option] = []
    for opt in options:
        if command not in opt.commands:
            continue
        if opt.kind is bool:
            out.append(click.Option([opt.flag], type=SWITCH, default="auto", is_flag=False, flag_value="true",
                                    help=opt.help))
            out.append(click.Option([f"--no-{opt.flag[2:]}", f"{opt.name}_off"], is_flag=True, hidden=True,
                                    help=f"Same as {opt.flag} false."))
            continue
        kind = {int: OPT_INT, float: OPT_FLOAT}.get(opt.kind, click.STRING)
        default = opt.default if opt.parse is None and not dataclasses.is_dataclass(opt.default) else None
        metavar = opt.metavar or {int: "INTEGER", float: "FLOAT"}.get(opt.kind)
        out.append(click.Option([opt.flag], type=kind, default=default, show_default=default not in (None, ""),
                                help=opt.help, metavar=metavar))
    return out


def with_options(options: Iterable[Declared], command: str) -> Callable[[Callable], Callable]:
    """Decorator: add the generated click options to a click command function."""
    generated = click_options(options, command)

    def decorate(fn: Callable) -> Callable:
        fn.__click_params__ = getattr(fn, "__click_params__", []) + generated[::-1]  # type: ignore[attr-defined]
        return fn
    return decorate


def fold_switch(values: dict[str, Any], name: str) -> bool | None:
    """The value of switch `name` from its two spellings (--x true|false|auto, --no-x)."""
    off = values.pop(f"{name}_off", False)
    raw = values.pop(name, "auto")
    if off:
        return False
    if isinstance(raw, bool) or raw is None:
        return raw
    return None if raw.lower() == "auto" else raw.lower() == "true"


def parse_options(cls: type, raw: dict[str, Any]) -> Any:
    """`cls` (an options dataclass) from command-line values, see parse_values."""
    return cls(**parse_values(cls, dict(raw)))


def parse_values(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """The given options of `cls` from command-line values: blanks are "not given", switches folded,
    strings parsed, every value checked; ConfigError names the option and the bad value."""
    values: dict[str, Any] = {}
    for opt in declared(cls):
        if opt.kind is bool and (opt.name in raw or f"{opt.name}_off" in raw):
            value = fold_switch(raw, opt.name)
        else:
            value = raw.pop(opt.name, None)
        if isinstance(value, str) and not value.strip():
            value = None
        if opt.parse is not None:
            value = opt.parse(opt.flag, value)
        elif value is not None and opt.kind is Path:
            value = Path(value)
        if value is None:
            continue
        if opt.check is not None and (problem := opt.check(value)):
            raise ConfigError(f"{opt.flag} {problem}, got {value!r}")
        values[opt.name] = value
    return values


def given(options: Any) -> dict[str, Any]:
    """The options set to something else than their default (for logs and cache keys)."""
    return {opt.name: getattr(options, opt.name) for opt in declared(type(options))
            if getattr(options, opt.name) != opt.default}


# ---- checks ------------------------------------------------------------------------------------

def positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "must be a positive integer"


def positive_number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return None if ok else "must be a positive number"


def fraction(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and 0.0 <= value <= 1.0 else "must be in [0, 1]"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if str(value).lower() in choices else f"must be one of {', '.join(choices)}"
    return check
