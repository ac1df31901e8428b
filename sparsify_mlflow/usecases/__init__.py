"""Use-case registry: canonical names, aliases, and lookup with a helpful error."""
from __future__ import annotations

from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.usecases.base import UseCase

_REGISTRY: dict[str, UseCase] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register(use_case: UseCase) -> UseCase:
    """Add a use case; its name and aliases must not clash with existing ones."""
    for alias in (use_case.name, *use_case.aliases):
        owner = _ALIASES.get(_key(alias))
        if owner is not None and owner != use_case.name:
            raise ValueError(f"alias {alias!r} of {use_case.name} already belongs to {owner}")
        _ALIASES[_key(alias)] = use_case.name
    _REGISTRY[use_case.name] = use_case
    return use_case


def names() -> list[str]:
    """Canonical names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def aliases() -> dict[str, str]:
    """Every accepted spelling -> canonical name."""
    _load_builtin()
    return dict(_ALIASES)


def eval_metrics(use_case: UseCase) -> dict[str, str]:
    """--eval-metric choices (Sparsify's names) -> the metric they select, as the use case logs it.

    A use case without an `eval_metrics` table offers its main metric only.
    """
    return dict(getattr(use_case, "eval_metrics", None) or {use_case.main_metric: use_case.main_metric})


def resolve(name_or_alias: str) -> UseCase:
    """The use case for a name or alias (case-insensitive); unknown names list the choices."""
    _load_builtin()
    canonical = _ALIASES.get(_key(name_or_alias))
    if canonical is None:
        raise ConfigError(
            f"unknown use case {name_or_alias!r}; supported: {', '.join(names())}"
        )
    return _REGISTRY[canonical]


def _load_builtin() -> None:
    """Import the built-in use-case modules (they call register(); Python imports each once).

    Not skipped when the registry is non-empty: importing one use-case module directly registers
    only that one, and the others must still load.
    """
    from sparsify_mlflow.usecases import (  # noqa: F401
        detection,
        image_classification,
        question_answering,
        segmentation,
        text_classification,
        token_classification,
    )
