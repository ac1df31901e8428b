"""Optim level -> recipe plan -> sparseml 1.8 recipe YAML.

The optim level is Sparsify's single knob. This module is the one place that decides what a
level means (sparsity, quantization, schedule), so the dense baseline and every sparse run
are built from the same rules. It is pure (stdlib + yaml) so it can be tested and used
without torch; sparseml only sees the YAML string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import yaml

PRUNE_FROM_LEVEL = 0.3  # below this a level only quantizes
MIN_SPARSITY, MAX_SPARSITY = 0.60, 0.95  # final sparsity at level 0.3 and at level 1.0
# Explicit INT8 scheme (sparseml's default, the one DeepSparse runs): asymmetric activations,
# symmetric weights. Written out so the recipe says what it does.
INT8_SCHEME = {
    "input_activations": {"num_bits": 8, "symmetric": False},
    "weights": {"num_bits": 8, "symmetric": True},
}


@dataclass(frozen=True)
class PruningScope:
    """Which parameters a use case prunes and which it keeps dense (decided per use case).

    `prune` holds exact parameter names: sparseml matches plain names exactly (``re:`` prefixes
    are regexes) and raises at ``manager.modify`` if a name matches nothing. `quant_ignore`
    entries match module names by *prefix* ("fc" also matches "fc2") or a module class name.
    """

    prune: tuple[str, ...]
    keep_dense: dict[str, str]
    quant_ignore: tuple[str, ...] = ()
    quant_scheme_overrides: dict[str, dict] = field(default_factory=dict)
    # per pruned parameter: its number of weights and its multiply-accumulates per input row (measured
    # on a forward pass, training.with_layer_costs); only the per-layer allocations need them
    weights: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)


def validate_level(optim_level: float) -> float:
    """Return the level as a float, or raise: a silent clamp would run the wrong experiment."""
    try:
        level = float(optim_level)
    except (TypeError, ValueError):
        raise ValueError(f"optim level {optim_level!r} is not a number") from None
    if math.isnan(level) or not 0.0 <= level <= 1.0:
        raise ValueError(f"optim level {optim_level} is outside [0, 1]")
    return level


def target_sparsity(optim_level: float) -> float:
    """Final unstructured sparsity: 0 below 0.3, then 0.60 -> 0.95 linearly up to 1.0."""
    level = validate_level(optim_level)
    if level < PRUNE_FROM_LEVEL:
        return 0.0
    frac = (level - PRUNE_FROM_LEVEL) / (1.0 - PRUNE_FROM_LEVEL)
    return round(MIN_SPARSITY + frac * (MAX_SPARSITY - MIN_SPARSITY), 4)


def describe_level(optim_level: float) -> str:
    """What a level does, in words: "INT8 only, no pruning" or "70% sparsity + INT8"."""
    sparsity = target_sparsity(optim_level)
    if not quantizes(optim_level):
        return "no sparsification (the dense baseline)"
    return "INT8 only, no pruning" if sparsity == 0 else f"{sparsity:.0%} sparsity + INT8"


def quantizes(optim_level: float) -> bool:
    """Every level above 0 trains INT8 QAT; level 0 is the dense FP32 baseline."""
    return validate_level(optim_level) > 0.0


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the dense baseline) over the whole sparse run.

    The loss becomes (1 - hardness) * task loss + hardness * KL(student || teacher) at `temperature`.
    """

    hardness: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hardness <= 1.0:
            raise ValueError(f"distillation hardness must be in [0, 1], got {self.hardness!r}")
        if not self.temperature > 0.0:
            raise ValueError(f"distillation temperature must be positive, got {self.temperature!r}")


# --target, in sparseml's recipe-template vocabulary, and the pruning mask each one writes.
TARGETS = ("auto", "vnni", "default", "tensorrt")
MASK_TYPES = ("unstructured", "block4", "2:4")
TARGET_MASKS = {"vnni": "block4", "default": "unstructured", "tensorrt": "2:4"}
# Why `auto` writes 1x4 blocks: VNNI's INT8 dot products take 4 consecutive input channels, and
# DeepSparse's sparse INT8 kernels skip whole blocks of them. Measured with benchmarks/models.py's
# recipe path (speedup over dense FP32 on DeepSparse, 2 cores, unstructured -> 1x4 blocks, level 0.5):
# Intel VNNI+AMX ResNet-50 bs16 2.25x -> 3.48x, BERT-base bs16 2.76x -> 4.27x; AMD Zen 5 VNNI
# ResNet-50 bs16 1.93x -> 2.89x, BERT-base 3.11x -> 5.81x (ResNet-50 bs1 lost 1.87x -> 1.65x there);
# AMD EPYC AVX2 without VNNI (the benchmark suite, docs/benchmarks/results_avx2.md): ResNet-50 bs16 1.31x -> 2.58x
# (bs1 2.29x -> 1.82x), BERT-base bs16 1.50x -> 3.37x and bs1 2.68x -> 3.30x; AMD EPYC Zen 4 VNNI (the suite,
# docs/benchmarks/results_avx512_vnni.md, ResNet-50 by_compute): ResNet-50 bs16 4.24x -> 5.79x (bs1 4.22x -> 3.91x),
# BERT-base bs16 3.99x -> 7.82x and bs1 4.97x -> 5.80x.
AUTO_REASON = ("1x4 blocks (auto): DeepSparse's sparse INT8 kernels skip whole 4-channel blocks; measured faster "
               "than unstructured at batch 16 on AVX-512 VNNI and AVX2 CPUs for ResNet-50 and BERT-base")
LR_FUNCTIONS = ("linear", "cosine")  # what sparseml's LearningRateFunctionModifier offers without extra args
# How the level's sparsity is spread over the pruned layers (--recipe-args layer_allocation): `uniform`
# prunes every layer to the target; the other two keep the same overall sparsity but leave each layer
# either dense or pruned past BREAK_EVEN_SPARSITY (never in between), choosing the layers to prune by
# their number of weights (`by_size`: the big, redundant late layers first) or by the compute each
# weight costs (`by_compute`: multiply-accumulates per weight, the early high-resolution layers first;
# ResNet-50 at level 0.5 on an AVX-512 VNNI Xeon, DeepSparse, vs INT8 alone at batch 1: by_compute 1.43x,
# by_size 1.00x, uniform 0.86x; benchmarks/layer_allocation.py).
LAYER_ALLOCATIONS = ("uniform", "by_size", "by_compute")
# The sparsity past which DeepSparse's sparse INT8 kernels beat its dense INT8 ones on ResNet-50's
# convolutions at batch 1, from its per-layer analysis on AVX-512 VNNI CPUs: past the first stage, the
# network at 70% ran slower than dense INT8 and at 91% 1.4x faster (docs/optim-levels.md).
BREAK_EVEN_SPARSITY = 0.9


def allocate_layers(weights: dict[str, int], macs: dict[str, int], target: float, allocation: str,
                    break_even: float = BREAK_EVEN_SPARSITY, cap: float = MAX_SPARSITY) -> dict[str, float]:
    """Final sparsity per parameter with `target` sparsity over all of `weights` together.

    `uniform`: every layer at `target`. `by_size` / `by_compute`: the layers last in that order stay
    dense, as many as keep the others' common sparsity within [break_even, cap] (a layer that would
    push it past `cap` is passed over for a smaller one); the others are pruned to that sparsity, so
    the zeros add up to the target. Where no set of layers fits (a few huge layers), the pruned ones
    end as close above the target as the sizes allow. A target at or past `break_even` is uniform."""
    if allocation not in LAYER_ALLOCATIONS:
        raise ValueError(f"layer_allocation must be one of {', '.join(LAYER_ALLOCATIONS)}, got {allocation!r}")
    if allocation == "uniform" or target <= 0.0 or target >= break_even:
        return {name: target for name in weights}
    missing = sorted(set(weights) - set(macs)) if allocation == "by_compute" else []
    if missing or not weights or min(weights.values()) <= 0:
        raise ValueError(f"layer_allocation {allocation} needs the weights{' and compute' if missing else ''} "
                         f"of every pruned layer{': none for ' + ', '.join(missing[:3]) if missing else ''}")
    # by_compute breaks ties by size: a transformer's linear layers all compute once per token, so there
    # it is by_size
    key = (lambda n: (weights[n],)) if allocation == "by_size" else (lambda n: (macs[n] / weights[n], weights[n]))
    total = sum(weights.values())
    zeros = target * total
    # dense weights D: the pruned ones' sparsity zeros / (total - D) is >= break_even from `least` on
    least, most = total - zeros / break_even, total - zeros / cap
    dense, kept = set(), 0
    for name in sorted(weights, key=lambda n: (*key(n), n)):  # lowest priority first
        if kept >= least:
            break
        if kept + weights[name] <= most:
            dense.add(name)
            kept += weights[name]
    sparsity = round(zeros / (total - kept), 4)
    return {name: 0.0 if name in dense else sparsity for name in weights}


@dataclass(frozen=True)
class RecipeArgs:
    """Overrides of the derived recipe (`--recipe-args`), named like sparseml's recipe-template variables.

    Unset fields keep the values the optim level derives; they change the training-aware
    recipe only, never the dense baseline (so its cache stays valid). Ranges are checked here;
    fitting the phases into the epochs is checked by `check_fits`.
    """

    num_qat_epochs: float | None = None              # length of the QAT phase (the last epochs)
    num_pruning_active_epochs: float | None = None   # length of the GMP ramp from epoch 0
    pruning_init_sparsity: float | None = None       # sparsity of the first pruning step
    pruning_update_frequency: float | None = None    # epochs between mask updates
    init_lr: float | None = None                     # replaces --lr for the training-aware model
    final_lr: float | None = None
    lr_func: str | None = None                       # linear or cosine
    mask_type: str | None = None                     # unstructured, block4 or 2:4 (instead of --target's)
    layer_allocation: str | None = None              # uniform (default), by_size or by_compute
    break_even_sparsity: float | None = None         # the pruned layers' least sparsity (by_size, by_compute)

    def __post_init__(self) -> None:
        positive = ("num_qat_epochs", "num_pruning_active_epochs", "pruning_update_frequency", "init_lr")
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.init_lr is not None and self.init_lr > 1:  # sparseml rejects lrs outside [0, 1]
            raise ValueError(f"init_lr must be in (0, 1], got {self.init_lr!r}")
        if self.final_lr is not None and not 0 <= self.final_lr <= 1:
            raise ValueError(f"final_lr must be in [0, 1], got {self.final_lr!r}")
        if self.pruning_init_sparsity is not None and not 0 <= self.pruning_init_sparsity < MIN_SPARSITY:
            raise ValueError(f"pruning_init_sparsity must be in [0, {MIN_SPARSITY}) (below the lowest target "
                             f"sparsity), got {self.pruning_init_sparsity!r}")
        if self.lr_func is not None and self.lr_func not in LR_FUNCTIONS:
            raise ValueError(f"lr_func must be one of {', '.join(LR_FUNCTIONS)}, got {self.lr_func!r}")
        if self.mask_type is not None and self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {', '.join(MASK_TYPES)}, got {self.mask_type!r}")
        if self.layer_allocation is not None and self.layer_allocation not in LAYER_ALLOCATIONS:
            raise ValueError(f"layer_allocation must be one of {', '.join(LAYER_ALLOCATIONS)}, "
                             f"got {self.layer_allocation!r}")
        if self.break_even_sparsity is not None and not MIN_SPARSITY <= self.break_even_sparsity <= MAX_SPARSITY:
            raise ValueError(f"break_even_sparsity must be in [{MIN_SPARSITY}, {MAX_SPARSITY}], "
                             f"got {self.break_even_sparsity!r}")

    def allocates_layers(self, use_case_default: str = "uniform") -> bool:
        """A per-layer allocation (the one given here, else the use case's default), which needs each
        layer's size and compute (PruningScope.weights/macs)."""
        return (self.layer_allocation or use_case_default) != "uniform"

    def check_fits(self, epochs: int) -> None:
        """The QAT phase and the pruning ramp must fit into `epochs`, one after the other."""
        qat = self.num_qat_epochs if self.num_qat_epochs is not None else _qat_length(epochs)
        ramp = self.num_pruning_active_epochs or 0.0
        if qat > epochs or ramp + qat > epochs:
            raise ValueError(f"num_pruning_active_epochs ({ramp:g}) + num_qat_epochs ({qat:g}) exceed the "
                             f"{epochs} epochs of the run (raise --epochs or shorten a phase)")

    def given(self) -> dict[str, float | str]:
        """Only the overrides the user set (for params and logs)."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Schedule:
    """Phase boundaries in (float) epochs; None where the phase does not exist at this level."""

    epochs: float
    prune_start: float | None
    prune_end: float | None
    init_sparsity: float | None
    update_frequency: float | None
    qat_start: float | None
    freeze_bn_epoch: float | None
    disable_observers_epoch: float | None


def _qat_length(epochs: float) -> float:
    """sparseml's recipe template: 5 QAT epochs for long runs, 2 for medium, a third for tiny ones."""
    if epochs >= 15:
        return 5.0
    if epochs >= 6:
        return 2.0
    return epochs / 3.0


def _r4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _build_schedule(level: float, epochs: int, sparsity: float, args: RecipeArgs) -> Schedule:
    """QAT in the last epochs; pruning ramps over the first half of the rest, then stabilises.

    Phase lengths, init sparsity and update frequency come from `args` where the user set them.
    """
    prune: tuple = (None,) * 4
    qat: tuple = (None,) * 3
    if level > 0.0:
        qat_len = args.num_qat_epochs if args.num_qat_epochs is not None else _qat_length(epochs)
        qat_start = epochs - qat_len
        qat = (qat_start, qat_start + 0.5 * qat_len, qat_start + 0.75 * qat_len)
        if sparsity > 0.0:
            ramp = args.num_pruning_active_epochs or (epochs - qat_len) / 2.0
            init = args.pruning_init_sparsity if args.pruning_init_sparsity is not None else min(0.05, sparsity)
            prune = (0.0, ramp, init, args.pruning_update_frequency or ramp / 20.0)
    return Schedule(float(epochs), *map(_r4, prune), *map(_r4, qat))


@dataclass(frozen=True)
class RecipePlan:
    """Everything a run needs to know about its recipe, before any YAML or torch is involved.

    With a user's recipe file (`recipe_file`), `optim_level` is None and the sparsity, quantization
    and phases are the file's (sparsify_mlflow.recipe_facts), so the record describes what was trained.
    """

    optim_level: float | None
    target_sparsity: float
    quantize: bool
    epochs: int
    lr: float
    final_lr: float
    schedule: Schedule
    scope: PruningScope
    distillation: Distillation | None = None
    lr_func: str = "linear"
    recipe_args: RecipeArgs = field(default_factory=RecipeArgs)
    recipe_file: str | None = None
    file_params: dict[str, object] = field(default_factory=dict)  # per parameter group of the file
    mask_type: str | None = None        # the pruning mask (None: nothing is pruned)
    mask_reason: str = ""               # why that mask (--target, auto's measurements, --recipe-args)
    layer_allocation: str = "uniform"   # how the sparsity is spread over the layers (LAYER_ALLOCATIONS)
    allocation_reason: str = ""         # why that allocation (--recipe-args, the use case's default)
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # per pruned parameter, when not uniform
    lr_reason: str = "--lr"             # where the initial learning rate comes from (choose_lr)

    @property
    def label(self) -> str:
        """What was trained, for titles: "optim level 0.5" or "recipe mine.yaml"."""
        return f"recipe {self.recipe_file}" if self.recipe_file else f"optim level {self.optim_level:g}"

    @property
    def source(self) -> str:
        return f"file {self.recipe_file}" if self.recipe_file else "optim level"

    def summary(self) -> dict[str, object]:
        """Flat plain values for MLflow params (None phases are left out: MLflow would log 'None')."""
        out: dict[str, object] = {"recipe.source": self.source}
        if self.optim_level is not None:
            out["recipe.optim_level"] = self.optim_level
        out |= {
            "recipe.target_sparsity": self.target_sparsity,
            "recipe.mask_type": self.mask_type or "none",
            "recipe.quantize": self.quantize,
            "recipe.epochs": self.epochs,
            "recipe.lr": self.lr,
            "recipe.lr_reason": self.lr_reason,
            "recipe.final_lr": self.final_lr,
            "recipe.num_pruned_params": len(self.scope.prune) if self.target_sparsity else 0,
            "recipe.num_dense_params": len(self.scope.keep_dense),
        }
        if self.target_sparsity:
            out["recipe.layer_allocation"] = self.layer_allocation
        if self.layer_sparsity:
            pruned = {v for v in self.layer_sparsity.values() if v > 0}
            out["recipe.layer_sparsity"] = ",".join(f"{v:g}" for v in sorted(pruned))
            out["recipe.num_allocated_dense"] = sum(v == 0 for v in self.layer_sparsity.values())
        for name, value in vars(self.schedule).items():
            if name != "epochs" and value is not None:
                out[f"recipe.schedule.{name}"] = value
        if self.quantize and self.scope.quant_ignore:
            out["recipe.quant_ignore"] = ",".join(self.scope.quant_ignore)
        out["recipe.distillation"] = self.distillation is not None
        if self.distillation is not None:
            out["recipe.distillation.hardness"] = self.distillation.hardness
            out["recipe.distillation.temperature"] = self.distillation.temperature
        out["recipe.lr_func"] = self.lr_func
        out.update({f"recipe.args.{k}": v for k, v in self.recipe_args.given().items()})
        return out | self.file_params


def choose_mask(target: str, quantize: bool, args: RecipeArgs) -> tuple[str, str]:
    """(mask type, why) for a pruning run on `target` (--target); --recipe-args mask_type wins."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if args.mask_type is not None:
        return args.mask_type, f"{args.mask_type} (--recipe-args mask_type)"
    if target == "auto":
        return ("block4", AUTO_REASON) if quantize else ("unstructured", "unstructured (auto: FP32, no INT8 kernels)")
    mask = TARGET_MASKS[target]
    return mask, f"{mask} (--target {target}, as sparseml's recipe template writes for it)"


def choose_allocation(args: RecipeArgs, use_case_default: str, mask: str) -> tuple[str, str]:
    """(layer allocation, why): --recipe-args layer_allocation wins; the use case's default applies to
    the masks it was measured with (not 2:4, whose sparsity is fixed per layer)."""
    if args.layer_allocation is not None:
        return args.layer_allocation, f"{args.layer_allocation} (--recipe-args layer_allocation)"
    if use_case_default == "uniform" or mask == "2:4":
        return "uniform", "uniform (every pruned layer at the level's sparsity)"
    return use_case_default, (f"{use_case_default} (the use case's default: DeepSparse's sparse INT8 kernels beat "
                              f"its dense ones only past ~{BREAK_EVEN_SPARSITY:g} sparsity)")


def choose_lr(lr: float, sparsity: float, args: RecipeArgs, pruned_lr_scale: float) -> tuple[float, str]:
    """(initial learning rate, why): --recipe-args init_lr wins; a pruning run starts at the use case's
    `pruned_lr_scale` times --lr (the model starts from the trained dense one and must win back what each
    pruning step takes); the dense baseline and INT8-only levels start at --lr."""
    if args.init_lr is not None:
        return float(args.init_lr), "--recipe-args init_lr"
    if sparsity > 0.0 and pruned_lr_scale != 1.0:
        return float(f"{lr * pruned_lr_scale:.10g}"), (f"{pruned_lr_scale:g}x --lr, the use case's rate for a "
                                                       f"pruned model recovering from the dense one")
    return float(lr), "--lr"


def plan_recipe(
    optim_level: float, epochs: int, scope: PruningScope, lr: float, final_lr_ratio: float = 0.01,
    distillation: Distillation | None = None, args: RecipeArgs | None = None, target: str = "auto",
    default_allocation: str = "uniform", pruned_lr_scale: float = 1.0,
) -> RecipePlan:
    """Decide sparsity, mask, quantization and schedule for one run; raises ValueError on bad input.

    `distillation` adds a DistillationModifier (the trainer must pass the teacher); it is dropped
    at level 0, which trains the dense baseline itself. `args` overrides derived values; `target`
    (--target) chooses the pruning mask. 2:4 masks (tensorrt) are 50% sparse by construction.
    `default_allocation` and `pruned_lr_scale` are the use case's layer allocation and learning-rate
    multiple for pruning runs, where `args` names none.
    """
    args = args or RecipeArgs()
    level = validate_level(optim_level)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    # sparseml's LearningRateFunctionModifier rejects init/final lr outside [0, 1].
    if not isinstance(lr, (int, float)) or not 0.0 < lr <= 1.0:
        raise ValueError(f"lr must be in (0, 1], got {lr!r}")
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ValueError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio!r}")
    overlap = set(scope.prune) & set(scope.keep_dense)
    if overlap:
        raise ValueError(f"parameters both pruned and kept dense: {sorted(overlap)}")
    sparsity = target_sparsity(level)
    if sparsity > 0.0 and not scope.prune:
        raise ValueError(f"optim level {level} prunes but the pruning scope is empty")
    args.check_fits(epochs)
    mask, why = choose_mask(target, quantizes(level), args)
    if mask == "2:4" and sparsity > 0.0:
        sparsity = 0.5  # two zeros in every four weights: the only sparsity a 2:4 mask has
    allocation, allocation_why = choose_allocation(args, default_allocation, mask)
    if allocation != "uniform" and mask == "2:4":
        raise ValueError(f"layer_allocation {allocation} needs a mask whose sparsity can vary (block4 or "
                         f"unstructured); a 2:4 mask is 50% in every layer")
    per_layer = {}
    if allocation != "uniform" and sparsity > 0.0:
        per_layer = allocate_layers({n: scope.weights.get(n, 0) for n in scope.prune}, scope.macs, sparsity,
                                    allocation, args.break_even_sparsity or BREAK_EVEN_SPARSITY)
    init_lr, lr_why = choose_lr(lr, sparsity, args, pruned_lr_scale)
    return RecipePlan(
        optim_level=level,
        target_sparsity=sparsity,
        quantize=quantizes(level),
        epochs=epochs,
        lr=init_lr,
        final_lr=float(args.final_lr if args.final_lr is not None else f"{init_lr * final_lr_ratio:.10g}"),
        schedule=_build_schedule(level, epochs, sparsity, args),
        scope=scope,
        distillation=distillation if level > 0.0 else None,
        lr_func=args.lr_func or "linear",
        recipe_args=args,
        mask_type=mask if sparsity > 0.0 else None,
        mask_reason=why if sparsity > 0.0 else "",
        layer_allocation=allocation,
        allocation_reason=allocation_why if sparsity > 0.0 else "",
        layer_sparsity=per_layer,
        lr_reason=lr_why,
    )


def _modifier(tag: str, args: dict) -> str:
    body = yaml.safe_dump(args, sort_keys=False, default_flow_style=False, width=1000)
    return f"  - !{tag}\n" + "\n".join(f"    {line}" for line in body.splitlines())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _header(plan: RecipePlan) -> list[str]:
    s, sc = plan.schedule, plan.scope
    lines = [
        "# Sparsify-style recipe generated by sparsify_mlflow.levels (sparseml 1.8)",
        f"# optim level: {plan.optim_level}",
        f"# target sparsity: {plan.target_sparsity}" + (f", mask {plan.mask_reason}" if plan.mask_type else ""),
        f"# quantization: {'yes, INT8 QAT (weights + activations)' if plan.quantize else 'no'}",
        f"# phases (epochs, {plan.epochs} in total):",
    ]
    if s.prune_end is not None:
        lines += [
            f"#   {s.prune_start} -> {s.prune_end}: GMP pruning, cubic {s.init_sparsity} -> "
            f"{plan.target_sparsity}, masks updated every {s.update_frequency} epochs",
            f"#   {s.prune_end} -> {s.qat_start}: stabilisation at {plan.target_sparsity} sparsity",
        ]
    elif plan.quantize:
        lines.append(f"#   0.0 -> {s.qat_start}: dense fine-tune, existing zeros held")
    else:
        lines.append(f"#   0.0 -> {s.epochs}: dense training (baseline)")
    if plan.quantize:
        lines.append(
            f"#   {s.qat_start} -> {s.epochs}: QAT (BN stats frozen at {s.freeze_bn_epoch}, "
            f"observers disabled at {s.disable_observers_epoch})"
        )
    lines.append(f"#   learning rate: {plan.lr_func} {plan.lr} -> {plan.final_lr} over 0.0 -> {s.epochs}"
                 + ("" if plan.lr_reason == "--lr" else f" ({plan.lr_reason})"))
    if plan.distillation is not None:
        lines.append(f"#   distillation from the dense baseline (teacher) over 0.0 -> {s.epochs}: hardness "
                     f"{plan.distillation.hardness}, temperature {plan.distillation.temperature}")
    if plan.target_sparsity or plan.quantize:
        lines.append(f"# pruned scope: {len(sc.prune)} parameters (listed in params below)")
    if plan.layer_sparsity:
        dense = [n for n in sc.prune if plan.layer_sparsity[n] == 0]
        pruned = {v for v in plan.layer_sparsity.values() if v > 0}
        lines.append(f"# layer allocation {plan.allocation_reason}: {len(sc.prune) - len(dense)} layers pruned to "
                     f"{', '.join(f'{v:g}' for v in sorted(pruned))}, {len(dense)} left dense, "
                     f"{plan.target_sparsity} over the scope")
        lines += [f"#   dense by the allocation: {name}" for name in dense]
    lines.append("# kept dense:" + ("" if sc.keep_dense else " (none)"))
    lines += [f"#   {name}: {_one_line(why)}" for name, why in sc.keep_dense.items()]
    if plan.quantize and sc.quant_ignore:
        lines.append(f"# left in FP32 by QAT: {', '.join(sc.quant_ignore)}")
    if plan.recipe_args.given():
        lines.append(f"# --recipe-args: {_one_line(plan.recipe_args.given())}")
    return lines


def recipe_yaml(plan: RecipePlan) -> str:
    """Render the plan as a sparseml recipe: literal values only, with a commented header."""
    s, sc = plan.schedule, plan.scope
    out = _header(plan) + ["", "version: 1.1.0", "", "training_modifiers:"]
    out.append(_modifier("EpochRangeModifier", {"start_epoch": 0.0, "end_epoch": s.epochs}))
    lr_args = {"start_epoch": 0.0, "end_epoch": s.epochs, "lr_func": plan.lr_func,
               "init_lr": plan.lr, "final_lr": plan.final_lr}
    out.append(_modifier("LearningRateFunctionModifier", lr_args))
    if s.prune_end is not None:
        out += ["", "pruning_modifiers:"]
        for sparsity, params in _pruning_groups(plan):
            out.append(_modifier("GMPruningModifier", {
                "params": params, "init_sparsity": min(s.init_sparsity, sparsity),
                "final_sparsity": sparsity, "start_epoch": s.prune_start,
                "end_epoch": s.prune_end, "update_frequency": s.update_frequency,
                "inter_func": "cubic", "mask_type": plan.mask_type, "leave_enabled": True}))
    elif plan.quantize and sc.prune:
        out += ["", "pruning_modifiers:", _modifier("ConstantPruningModifier", {
            "params": list(sc.prune), "start_epoch": 0.0, "end_epoch": s.epochs})]
    if plan.quantize:
        q_args = _quantization_args(sc, s.qat_start)
        q_args["freeze_bn_stats_epoch"] = s.freeze_bn_epoch
        q_args["disable_quantization_observer_epoch"] = s.disable_observers_epoch
        out += ["", "quantization_modifiers:", _modifier("QuantizationModifier", q_args)]
    if plan.distillation is not None:
        out += ["", "distillation_modifiers:", _modifier("DistillationModifier", {
            "start_epoch": 0.0, "end_epoch": s.epochs, "hardness": plan.distillation.hardness,
            "temperature": plan.distillation.temperature})]
    return "\n".join(out) + "\n"


def _pruning_groups(plan: RecipePlan) -> list[tuple[float, list[str]]]:
    """(final sparsity, parameters) of each GMP modifier: one for a uniform plan; per sparsity of the
    allocation otherwise (the layers it leaves dense get no modifier)."""
    if not plan.layer_sparsity:
        return [(plan.target_sparsity, list(plan.scope.prune))]
    groups: dict[float, list[str]] = {}
    for name in plan.scope.prune:
        if plan.layer_sparsity[name] > 0:
            groups.setdefault(plan.layer_sparsity[name], []).append(name)
    return sorted(groups.items(), reverse=True)


def _quantization_args(scope: PruningScope, start_epoch: float) -> dict:
    """The QuantizationModifier's keys. Only keys of the new modifier: one legacy-only key would make
    sparseml load the legacy class instead (and it rejects scheme/ignore)."""
    args: dict = {"start_epoch": start_epoch, "scheme": INT8_SCHEME}
    if scope.quant_scheme_overrides:
        args["scheme_overrides"] = {k: dict(v) for k, v in scope.quant_scheme_overrides.items()}
    if scope.quant_ignore:
        args["ignore"] = list(scope.quant_ignore)
    return args


def post_training_recipe(scope: PruningScope) -> str:
    """The INT8-only reference's recipe: the levels' INT8 scheme on the dense model from epoch 0, no
    pruning, no schedule; its observers are calibrated on training batches, no weight is trained."""
    return "\n".join(["# post-training INT8 (the quantize-only reference): calibration, no training",
                      "", "version: 1.1.0", "", "quantization_modifiers:",
                      _modifier("QuantizationModifier", _quantization_args(scope, 0.0))]) + "\n"
