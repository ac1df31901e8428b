"""What a recipe does (a user's `--recipe` file or the derived one), read with sparseml's own parser.

With `--recipe FILE` the optim level decides nothing: params, registry tags, the summary's title and
the model's description must describe the file that was trained. sparseml evaluates the recipe
(variables, `eval(...)` expressions) exactly as training will, so the facts here are the ones the
trainer sees, and a recipe sparseml cannot read fails at the door, before any run starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from sparsify_mlflow.errors import ConfigError
from sparsify_mlflow.levels import RecipePlan, Schedule

PRUNING_MODIFIERS = ("GMPruningModifier", "MagnitudePruningModifier", "MFACPruningModifier",
                     "MovementPruningModifier", "OBSPruningModifier", "GlobalMagnitudePruningModifier",
                     "ACDCPruningModifier", "LayerPruningModifier")


@dataclass(frozen=True)
class PruningGroup:
    params: tuple[str, ...]
    final_sparsity: float
    mask_type: str
    start_epoch: float
    end_epoch: float


@dataclass(frozen=True)
class RecipeFacts:
    file: str                       # the file's name, as the record names it
    groups: tuple[PruningGroup, ...]
    quantize: bool
    holds_sparsity: bool            # a ConstantPruningModifier keeps existing zeros
    qat_start: float | None
    freeze_bn_epoch: float | None
    disable_observers_epoch: float | None
    epochs: int                     # what training runs: ceil(sparseml's max_epochs)

    @property
    def target_sparsity(self) -> float:
        """The highest final sparsity of any parameter group (0 when nothing is pruned)."""
        return max((g.final_sparsity for g in self.groups), default=0.0)

    def params(self) -> dict[str, object]:
        """Per parameter group: its final sparsity, mask and how many parameters it names."""
        out: dict[str, object] = {}
        for i, group in enumerate(self.groups):
            out[f"recipe.group{i}.final_sparsity"] = group.final_sparsity
            out[f"recipe.group{i}.mask_type"] = group.mask_type
            out[f"recipe.group{i}.num_params"] = len(group.params)
        return out


def read_recipe(path: Path) -> RecipeFacts:
    """Parse `path` with sparseml; ConfigError (one line, naming the file) if sparseml rejects it or it
    neither prunes nor quantizes (a user's recipe is there to do one of them)."""
    facts = recipe_facts(Path(path).read_text(), f"--recipe {path}", Path(path).name)
    if not facts.groups and not facts.quantize and not facts.holds_sparsity:
        raise ConfigError(f"--recipe {path}: it neither prunes nor quantizes (no pruning or QuantizationModifier)")
    return facts


def recipe_facts(text: str, where: str = "the recipe", name: str = "recipe.yaml") -> RecipeFacts:
    manager = _manager(text, where)
    groups, quant = [], None
    for mod in manager.iter_modifiers():
        kind = type(mod).__name__
        if kind in PRUNING_MODIFIERS and getattr(mod, "final_sparsity", None) is not None:
            sparsity = mod.final_sparsity
            if isinstance(sparsity, dict):  # {sparsity: [params]} form
                for value, names in sparsity.items():
                    groups.append(_group(mod, float(value), names))
            else:
                groups.append(_group(mod, float(sparsity), mod.params))
        elif kind == "QuantizationModifier":
            quant = mod
    return RecipeFacts(
        file=name, groups=tuple(groups), quantize=quant is not None,
        holds_sparsity=any(type(m).__name__ == "ConstantPruningModifier" for m in manager.iter_modifiers()),
        qat_start=_epoch(quant, "start_epoch"), freeze_bn_epoch=_epoch(quant, "freeze_bn_stats_epoch"),
        disable_observers_epoch=_epoch(quant, "disable_quantization_observer_epoch"),
        epochs=max(1, math.ceil(manager.max_epochs)))


def qat_steps(facts: RecipeFacts, steps_per_epoch: int, epochs: int) -> int:
    """Optimizer steps the QAT phase gets: sparseml starts it at the first step whose epoch
    (step / steps_per_epoch) reaches its start epoch."""
    if facts.qat_start is None:
        return 0
    return max(0, epochs * steps_per_epoch - math.ceil(facts.qat_start * steps_per_epoch - 1e-9))


def check_qat_steps(facts: RecipeFacts, rows: int, batch_size: int, epochs: int) -> None:
    """Never label an FP32 file INT8: a QAT phase that sees no step (tiny data, short phase) is a
    ConfigError naming what would give it one, said before any training."""
    if not facts.quantize:
        return
    per_epoch = steps_per_epoch(rows, batch_size)
    if qat_steps(facts, per_epoch, epochs) >= 1:
        return
    length = epochs - (facts.qat_start or 0.0)
    raise ConfigError(
        f"the INT8 (QAT) phase, epochs {facts.qat_start:g}-{epochs} of {facts.file}, gets no optimizer step: "
        f"{rows} training rows at batch size {batch_size} make {per_epoch} step(s) per epoch, so it needs "
        f"at least {1 / per_epoch:.2f} epochs (it has {length:.2f}); give more --epochs, a smaller --batch-size "
        f"or more data, or lengthen it (--recipe-args '{{\"num_qat_epochs\": {math.ceil(100 / per_epoch) / 100:g}}}')")


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """The training loader's batches per epoch (training._loader drops a last partial batch)."""
    return max(1, rows // batch_size) if rows > batch_size else 1


def plan_from_recipe(facts: RecipeFacts, derived: RecipePlan) -> RecipePlan:
    """The plan the record describes: the file's sparsity, quantization and phases; the rest (scope,
    learning rate) as derived, since the file's own values are in the logged recipe.yaml."""
    first = facts.groups[0] if facts.groups else None
    schedule = Schedule(
        epochs=float(facts.epochs),
        prune_start=None if first is None else first.start_epoch, prune_end=None if first is None else first.end_epoch,
        init_sparsity=None, update_frequency=None, qat_start=facts.qat_start,
        freeze_bn_epoch=facts.freeze_bn_epoch, disable_observers_epoch=facts.disable_observers_epoch)
    return replace(derived, optim_level=None, epochs=facts.epochs, target_sparsity=facts.target_sparsity,
                   quantize=facts.quantize, mask_type=first.mask_type if first else None,
                   mask_reason=f"{first.mask_type} (from {facts.file})" if first else "",
                   schedule=schedule, distillation=derived.distillation, recipe_file=facts.file,
                   file_params=facts.params())


def _manager(text: str, where: str):
    from sparseml.pytorch.optim import ScheduledModifierManager

    try:
        return ScheduledModifierManager.from_yaml(text)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the recipe's
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{where}: sparseml cannot read it ({type(exc).__name__}: {first})") from None


def _group(mod: object, sparsity: float, params: object) -> PruningGroup:
    names = (params,) if isinstance(params, str) else tuple(params or ())
    return PruningGroup(names, round(sparsity, 4), str(getattr(mod, "mask_type", "unstructured")),
                        float(mod.start_epoch), float(mod.end_epoch))


def _epoch(mod: object | None, name: str) -> float | None:
    value = None if mod is None else getattr(mod, name, None)
    return None if value is None or value < 0 else round(float(value), 4)
