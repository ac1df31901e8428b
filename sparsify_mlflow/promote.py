"""Promotion: move an alias (e.g. `champion`) to a model version after checking its gates.

The gates read what `sparsify.run training-aware`/`sweep` tagged on the version when it registered
it: `main_drop` (points lost against the dense baseline, measured on the exported files on the deploy
engine) and the batch-1 speedup from the interleaved benchmark session: by default
`speedup_vs_best_dense` (the fastest deployment of the version against the fastest dense engine the
session timed), with `--speedup-against same-engine` the same-engine `speedup`. A speedup is refused
when that session was marked unreliable (`benchmark_reliable=false`) unless explicitly accepted.
A refused promotion changes nothing. An accepted one records who, why and when on the version,
and the version it replaces keeps the alias `previous-<alias>` so it can be restored with
`promote --alias previous-champion --to champion`.
"""
from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sparsify_mlflow.errors import ConfigError, UserError

EPS = 1e-9


class PromotionRefused(UserError):
    """A gate failed: nothing was changed."""


@dataclass(frozen=True)
class Gates:
    max_metric_drop: float | None = None   # points
    min_speedup: float | None = None       # x
    accept_unreliable: bool = False        # let --min-speedup pass a speedup its benchmark marked unreliable
    speedup_against: str = "best-dense"    # which speedup --min-speedup reads: best-dense or same-engine
    min_speedup_vs_int8: float | None = None  # x, over the INT8-only reference (tag speedup_vs_int8_only)


SPEEDUP_AGAINST = {"best-dense": "speedup_vs_best_dense", "same-engine": "speedup"}


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    alias: str                    # the alias moved, e.g. champion
    previous_version: str | None  # the version that held it before (now @previous-<alias>)
    checks: tuple[str, ...]
    by: str
    at: str
    reason: str
    changed: bool = True          # False when the version already held the alias

    @property
    def previous_alias(self) -> str:
        return previous_alias(self.alias)


def previous_alias(alias: str) -> str:
    return f"previous-{alias}"


def promotion_user() -> str:
    """Who promotes: MLFLOW_TRACKING_USERNAME (the identity the server sees), else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def check_gates(name: str, version: str, tags: dict[str, str], gates: Gates) -> tuple[str, ...]:
    """The passed checks as readable lines; PromotionRefused (one line) at the first failed gate."""
    checks = []
    speedup_tag = SPEEDUP_AGAINST[gates.speedup_against]
    if gates.min_speedup is not None and speedup_tag not in tags and "speedup" in tags:
        speedup_tag = "speedup"  # registered before the session compared with the best dense engine
        checks.append("no speedup_vs_best_dense tag (registered by an older version): gated on the same-engine speedup")
    for gate, tag, bound, ok, words in (
        ("--max-metric-drop", "main_drop", gates.max_metric_drop, lambda v, b: v <= b + EPS, "<="),
        ("--min-speedup", speedup_tag, gates.min_speedup, lambda v, b: v >= b - EPS, ">="),
        ("--min-speedup-vs-int8", "speedup_vs_int8_only", gates.min_speedup_vs_int8, lambda v, b: v >= b - EPS, ">="),
    ):
        if bound is None:
            continue
        if tag == "speedup_vs_int8_only" and tag not in tags:
            raise PromotionRefused(f"refused: {name} version {version} has no '{tag}' tag to check {gate} against: "
                                   f"its experiment ran without the INT8-only reference, or the reference failed")
        value = _tag_number(name, version, tags, tag, gate)
        if not ok(value, bound):
            what = (f"drops {value:.2f} points of {tags.get('main_metric', 'its main metric')}, more than "
                    f"{gate} {_num(bound)}" if tag == "main_drop"
                    else f"has a {tag} of {value:.2f}x, below {gate} {_num(bound)}")
            raise PromotionRefused(f"refused: {name} version {version} {what}")
        if tag != "main_drop" and tags.get("benchmark_reliable") == "false":
            if not gates.accept_unreliable:
                raise PromotionRefused(
                    f"refused: {name} version {version}'s speedup {value:.2f}x comes from an unreliable benchmark "
                    f"({tags.get('benchmark_load', 'see its benchmark_load tag')}); re-run the experiment on an idle "
                    f"machine, or pass --accept-unreliable-speedup")
            checks.append(f"{tag} {_num(value)} {words} {_num(bound)} (unreliable benchmark, accepted)")
            continue
        checks.append(f"{tag} {_num(value)} {words} {_num(bound)}")
    return tuple(checks) or ("no gates given",)


def _tag_number(name: str, version: str, tags: dict[str, str], tag: str, gate: str) -> float:
    raw = tags.get(tag)
    if raw is None:
        raise PromotionRefused(f"refused: {name} version {version} has no '{tag}' tag to check {gate} against "
                               f"(was it registered by sparsify.run?)")
    try:
        return float(raw)
    except ValueError:
        raise PromotionRefused(f"refused: {name} version {version} has a non-numeric '{tag}' tag {raw!r}") from None


def resolve_version(client: MlflowClient, name: str, version: str | None, alias: str | None) -> ModelVersion:
    if (version is None) == (alias is None):
        raise ConfigError("give exactly one of --version and --alias")
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        which = f"version {version}" if version is not None else f"alias @{alias}"
        raise UserError(f"registered model {name!r} has no {which} ({_first_line(exc.message)})") from None


def promote(name: str, *, to: str, version: str | None = None, alias: str | None = None,
            gates: Gates = Gates(), reason: str | None = None, user: str | None = None,
            client: MlflowClient | None = None) -> Promotion:
    """Check the gates on the version, then move alias `to` to it (the old holder -> previous-<to>)."""
    client = client or MlflowClient()
    if not to or to.startswith("previous-"):
        raise ConfigError(f"--to must name an alias such as champion (not {to!r}); previous-* aliases are kept for you")
    target = resolve_version(client, name, version, alias)
    tags = dict(target.tags or {})
    checks = check_gates(name, str(target.version), tags, gates)
    by, at = user or promotion_user(), datetime.now(UTC).isoformat(timespec="seconds")
    why = (reason or "").strip() or "(no reason given)"
    current = _holder(client, name, to)
    if current == str(target.version):
        return Promotion(name, current, to, None, checks, by, at, why, changed=False)
    old_previous = _holder(client, name, previous_alias(to))
    try:
        if current is not None:
            client.set_registered_model_alias(name, previous_alias(to), current)
        client.set_registered_model_alias(name, to, str(target.version))
        for key, value in {
            "promoted_to": to, "promoted_by": by, "promoted_at": at, "promotion_reason": why,
            "promotion_checks": "; ".join(checks), "promoted_over_version": current or "none",
            **({"promotion_run_id": os.environ["MLFLOW_RUN_ID"]} if os.environ.get("MLFLOW_RUN_ID") else {}),
        }.items():
            client.set_model_version_tag(name, str(target.version), key, value)
        if current is not None:
            for key, value in {"demoted_from": to, "demoted_by": by, "demoted_at": at,
                               "replaced_by_version": str(target.version)}.items():
                client.set_model_version_tag(name, current, key, value)
    except BaseException:
        _restore(client, name, to, current)
        _restore(client, name, previous_alias(to), old_previous)
        raise
    return Promotion(name, str(target.version), to, current, checks, by, at, why)


def _holder(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _restore(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    try:
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
    except MlflowException:
        pass


def _num(value: float) -> str:
    """2.5 -> '2.5', 1e6 -> '1000000': as a user would type it."""
    return format(value, "f").rstrip("0").rstrip(".") or "0"


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""
