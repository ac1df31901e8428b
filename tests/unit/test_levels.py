"""Tests for sparsify_mlflow.levels: the optim-level contract, the schedule and the recipe YAML."""

import ast
import math
from pathlib import Path

import pytest
import yaml

from sparsify_mlflow import levels
from sparsify_mlflow.levels import (
    PruningScope,
    RecipeArgs,
    plan_recipe,
    quantizes,
    recipe_yaml,
    target_sparsity,
    validate_level,
)

SCOPE = PruningScope(
    prune=("conv2.weight",),
    keep_dense={
        "conv1.weight": "first conv: few weights, large accuracy impact",
        "fc.weight": "classifier head",
    },
    quant_ignore=("fc",),
)
# The only keys the newer QuantizationModifier may get: any legacy-only key would make
# sparseml 1.8 silently load the legacy class instead.
NEW_QUANT_KEYS = {
    "start_epoch", "scheme", "scheme_overrides", "ignore",
    "freeze_bn_stats_epoch", "disable_quantization_observer_epoch",
}


class _TagLoader(yaml.SafeLoader):
    """SafeLoader that turns sparseml's `!ModifierName` mappings into {"ModifierName": {...}}."""


_TagLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: {suffix: loader.construct_mapping(node, deep=True)}
)


def parse(text: str) -> dict:
    return yaml.load(text, Loader=_TagLoader)


def modifiers(doc: dict) -> dict[str, dict]:
    """Modifier name -> args over every `*modifiers` group of a parsed recipe."""
    out = {}
    for key, group in doc.items():
        if "modifiers" in key:
            for item in group:
                ((name, args),) = item.items()
                assert name not in out, f"duplicate modifier {name}"
                out[name] = args
    return out


# --- the level contract -----------------------------------------------------------------

@pytest.mark.parametrize(
    "level, sparsity, quant",
    [(0.0, 0.0, False), (0.1, 0.0, True), (0.29, 0.0, True), (0.3, 0.6, True),
     (0.5, 0.7, True), (0.65, 0.775, True), (1.0, 0.95, True)],
)
def test_level_mapping(level, sparsity, quant):
    assert target_sparsity(level) == sparsity
    assert quantizes(level) is quant
    plan = plan_recipe(level, 10, SCOPE, 0.01)
    assert (plan.target_sparsity, plan.quantize) == (sparsity, quant)


@pytest.mark.parametrize("bad, shown", [(-0.1, "-0.1"), (1.01, "1.01"), (float("nan"), "nan")])
def test_bad_levels_raise_with_value(bad, shown):
    for fn in (validate_level, target_sparsity, quantizes):
        with pytest.raises(ValueError, match=f"optim level {shown} is outside"):
            fn(bad)
    with pytest.raises(ValueError, match=shown):
        plan_recipe(bad, 10, SCOPE, 0.01)


def test_non_numeric_level_raises():
    with pytest.raises(ValueError, match="'high'"):
        validate_level("high")


@pytest.mark.parametrize("epochs", [0, -1, 2.5, True])
def test_bad_epochs_raise_with_value(epochs):
    with pytest.raises(ValueError, match=f"epochs must be a positive int, got {epochs}"):
        plan_recipe(0.5, epochs, SCOPE, 0.01)


@pytest.mark.parametrize("lr", [0, -0.1, 1.5])
def test_bad_lr_raises(lr):
    with pytest.raises(ValueError, match=f"lr must be in \\(0, 1\\], got {lr}"):
        plan_recipe(0.5, 10, SCOPE, lr)


def test_bad_scopes_raise():
    with pytest.raises(ValueError, match="pruning scope is empty"):
        plan_recipe(0.5, 10, PruningScope(prune=(), keep_dense={}), 0.01)
    both = PruningScope(prune=("a.weight",), keep_dense={"a.weight": "x"})
    with pytest.raises(ValueError, match="a.weight"):
        plan_recipe(0.5, 10, both, 0.01)
    # quantize-only and baseline levels need nothing to prune
    assert plan_recipe(0.1, 10, PruningScope(prune=(), keep_dense={}), 0.01).quantize


# --- the schedule -----------------------------------------------------------------------

@pytest.mark.parametrize("epochs, qat_len", [(1, 1 / 3), (3, 1.0), (6, 2.0), (10, 2.0), (20, 5.0)])
def test_schedule_shape(epochs, qat_len):
    s = plan_recipe(0.5, epochs, SCOPE, 0.01).schedule
    assert s.epochs == epochs
    assert s.prune_start == 0.0
    assert s.prune_start < s.prune_end <= s.qat_start < s.freeze_bn_epoch
    assert s.freeze_bn_epoch < s.disable_observers_epoch <= s.epochs
    assert s.qat_start == round(epochs - qat_len, 4)
    assert s.freeze_bn_epoch == round(epochs - 0.5 * qat_len, 4)
    assert s.disable_observers_epoch == round(epochs - 0.25 * qat_len, 4)
    assert s.prune_end == round((epochs - qat_len) / 2, 4)
    assert s.init_sparsity == 0.05
    assert s.update_frequency == round((epochs - qat_len) / 2 / 20, 4)
    for value in vars(s).values():  # every epoch value rounded to 4 decimals
        assert value == round(value, 4)


def test_schedule_per_level():
    base = plan_recipe(0.0, 10, SCOPE, 0.01).schedule
    assert base.epochs == 10.0
    assert all(v is None for k, v in vars(base).items() if k != "epochs")
    qonly = plan_recipe(0.1, 10, SCOPE, 0.01).schedule
    assert (qonly.prune_start, qonly.prune_end, qonly.update_frequency) == (None, None, None)
    assert (qonly.qat_start, qonly.freeze_bn_epoch, qonly.disable_observers_epoch) == (8.0, 9.0, 9.5)


def test_plan_lr_and_summary():
    plan = plan_recipe(0.5, 10, SCOPE, 0.01)
    assert (plan.lr, plan.final_lr) == (0.01, 0.0001)
    assert plan_recipe(0.5, 10, SCOPE, 0.02, final_lr_ratio=0.5).final_lr == 0.01
    summary = plan.summary()
    assert summary["recipe.target_sparsity"] == 0.7
    assert summary["recipe.quantize"] is True
    assert summary["recipe.schedule.prune_end"] == 4.0
    assert summary["recipe.quant_ignore"] == "fc"
    assert all(isinstance(v, (bool, int, float, str)) for v in summary.values())
    assert "recipe.schedule.qat_start" not in plan_recipe(0.0, 10, SCOPE, 0.01).summary()


def test_a_pruning_run_starts_at_the_use_cases_rate_unless_the_recipe_args_say_otherwise():
    pruned = plan_recipe(0.5, 10, SCOPE, 0.01, pruned_lr_scale=2.0)
    assert (pruned.lr, pruned.final_lr) == (0.02, 0.0002) and pruned.lr_reason.startswith("2x --lr")
    assert "learning rate: linear 0.02 -> 0.0002 over 0.0 -> 10.0 (2x --lr" in recipe_yaml(pruned)
    assert pruned.summary()["recipe.lr_reason"] == pruned.lr_reason
    # nothing is pruned at level 0 (the dense baseline) and below 0.3 (INT8 only): --lr as given
    for level in (0.0, 0.1):
        assert plan_recipe(level, 10, SCOPE, 0.01, pruned_lr_scale=2.0).lr == 0.01
    given = plan_recipe(0.5, 10, SCOPE, 0.01, pruned_lr_scale=2.0, args=RecipeArgs(init_lr=0.005))
    assert (given.lr, given.lr_reason) == (0.005, "--recipe-args init_lr")
    plain = plan_recipe(0.5, 10, SCOPE, 0.01)
    assert (plain.lr, plain.lr_reason) == (0.01, "--lr") and "over 0.0 -> 10.0\n" in recipe_yaml(plain)


# --- the YAML ---------------------------------------------------------------------------

def test_yaml_level_0_is_epoch_and_lr_only():
    doc = parse(recipe_yaml(plan_recipe(0.0, 10, SCOPE, 0.01)))
    assert doc["version"] == "1.1.0"
    mods = modifiers(doc)
    assert set(mods) == {"EpochRangeModifier", "LearningRateFunctionModifier"}
    assert mods["EpochRangeModifier"] == {"start_epoch": 0.0, "end_epoch": 10.0}
    assert mods["LearningRateFunctionModifier"] == {
        "start_epoch": 0.0, "end_epoch": 10.0, "lr_func": "linear",
        "init_lr": 0.01, "final_lr": 0.0001,
    }


def test_yaml_level_01_is_constant_pruning_and_qat():
    mods = modifiers(parse(recipe_yaml(plan_recipe(0.1, 10, SCOPE, 0.01))))
    assert set(mods) == {"EpochRangeModifier", "LearningRateFunctionModifier",
                         "ConstantPruningModifier", "QuantizationModifier"}
    assert mods["ConstantPruningModifier"]["params"] == ["conv2.weight"]
    assert mods["ConstantPruningModifier"]["start_epoch"] == 0.0
    q = mods["QuantizationModifier"]
    assert set(q) <= NEW_QUANT_KEYS
    assert (q["start_epoch"], q["freeze_bn_stats_epoch"], q["disable_quantization_observer_epoch"]) \
        == (8.0, 9.0, 9.5)
    assert q["ignore"] == ["fc"]
    assert q["scheme"]["weights"] == {"num_bits": 8, "symmetric": True}
    assert q["scheme"]["input_activations"] == {"num_bits": 8, "symmetric": False}


def test_yaml_level_05_is_gmp_and_qat():
    text = recipe_yaml(plan_recipe(0.5, 10, SCOPE, 0.01))
    mods = modifiers(parse(text))
    assert set(mods) == {"EpochRangeModifier", "LearningRateFunctionModifier",
                         "GMPruningModifier", "QuantizationModifier"}
    gmp = mods["GMPruningModifier"]
    assert gmp == {
        "params": ["conv2.weight"], "init_sparsity": 0.05, "final_sparsity": 0.7,
        "start_epoch": 0.0, "end_epoch": 4.0, "update_frequency": 0.2,
        "inter_func": "cubic", "mask_type": "block4", "leave_enabled": True,  # --target auto at an INT8 level
    }
    assert set(mods["QuantizationModifier"]) <= NEW_QUANT_KEYS
    assert mods["QuantizationModifier"]["start_epoch"] == 8.0
    # the human-readable header
    assert "# optim level: 0.5" in text
    assert "# target sparsity: 0.7, mask 1x4 blocks" in text
    assert "# quantization: yes" in text
    assert "#   0.0 -> 4.0: GMP pruning" in text
    assert "#   8.0 -> 10.0: QAT" in text
    for name, why in SCOPE.keep_dense.items():
        assert text.count(f"#   {name}: {why}\n") == 1
    body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert body[0] == "version: 1.1.0"


def test_yaml_scheme_overrides_and_multiline_reason():
    scope = PruningScope(
        prune=("encoder.layer.0.attention.self.query.weight",),
        keep_dense={"embeddings.word_embeddings.weight": "embedding:\nlookup table"},
        quant_ignore=("classifier",),
        quant_scheme_overrides={"Embedding": {"input_activations": None}},
    )
    text = recipe_yaml(plan_recipe(0.1, 3, scope, 5e-5))
    q = modifiers(parse(text))["QuantizationModifier"]
    assert q["scheme_overrides"] == {"Embedding": {"input_activations": None}}
    assert q["ignore"] == ["classifier"]
    assert "#   embeddings.word_embeddings.weight: embedding: lookup table\n" in text


def test_module_is_pure():
    """levels must not import torch or mlflow at module level (pure planning, cheap import)."""
    tree = ast.parse(Path(levels.__file__).read_text())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "mlflow", "sparseml", "deepsparse", "numpy"}


# --- integration with sparseml ------------------------------------------------------------

def test_recipe_drives_sparseml(tmp_path, monkeypatch):
    """A level-0.5 recipe prunes the scope to 70% and inserts fake-quant; 0 and 0.1 load too."""
    monkeypatch.setenv("NM_DISABLE_ANALYTICS", "1")
    monkeypatch.chdir(tmp_path)  # sparseml writes ./sparse_logs
    torch = pytest.importorskip("torch")
    from sparseml.pytorch.optim import ScheduledModifierManager
    from sparseml.pytorch.sparsification.quantization.modifier_quantization import (
        QuantizationModifier,
    )
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
            self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
            self.pool, self.flat, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)

        def forward(self, x):
            x = self.relu1(self.bn1(self.conv1(x)))
            return self.fc(self.flat(self.pool(self.relu2(self.bn2(self.conv2(x))))))

    for level in (0.0, 0.1, 1.0):  # every recipe shape parses into modifiers
        manager = ScheduledModifierManager.from_yaml(recipe_yaml(plan_recipe(level, 3, SCOPE, 0.01)))
        assert len(manager.modifiers) == (2 if level == 0.0 else 4)

    torch.manual_seed(0)
    model = Net()
    manager = ScheduledModifierManager.from_yaml(recipe_yaml(plan_recipe(0.5, 3, SCOPE, 0.01)))
    quant = [m for m in manager.modifiers if "Quantization" in type(m).__name__]
    assert len(quant) == 1 and type(quant[0]) is QuantizationModifier  # not the legacy class
    steps = 4
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                               steps_per_epoch=steps)
    for _ in range(3 * steps):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.randint(0, 4, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # the wrapped optimizer advances the recipe
    manager.finalize(model)

    # QAT wraps modules (QuantWrapper + fused ConvBnReLU2d): "conv2.weight" -> "conv2.module.weight"
    sparsity = {n.replace(".module", ""): float((p == 0).float().mean())
                for n, p in model.named_parameters()}
    assert math.isclose(sparsity["conv2.weight"], 0.70, abs_tol=0.01)
    assert sparsity["conv1.weight"] < 0.01 and sparsity["fc.weight"] < 0.01
    fake_quants = [m for m in model.modules() if isinstance(m, torch.ao.quantization.FakeQuantize)]
    assert fake_quants
    assert type(model.fc) is nn.Linear  # quant_ignore keeps the head in FP32


# ---- --target: the pruning mask ------------------------------------------------------------------

@pytest.mark.parametrize("target, level, mask, sparsity", [
    ("auto", 0.5, "block4", 0.7), ("vnni", 0.5, "block4", 0.7), ("default", 0.5, "unstructured", 0.7),
    ("tensorrt", 0.5, "2:4", 0.5), ("tensorrt", 1.0, "2:4", 0.5), ("auto", 0.1, None, 0.0), ("auto", 0.0, None, 0.0),
])
def test_the_target_chooses_the_mask(target: str, level: float, mask: str | None, sparsity: float) -> None:
    plan = plan_recipe(level, 10, SCOPE, 0.01, target=target)
    assert (plan.mask_type, plan.target_sparsity) == (mask, sparsity)
    assert plan.summary()["recipe.mask_type"] == (mask or "none")
    text = recipe_yaml(plan)
    if mask:
        assert f"mask_type: {mask if mask != '2:4' else repr(mask)}" in text and plan.mask_reason in text
    else:
        assert "GMPruningModifier" not in text


def test_auto_says_why_and_recipe_args_override_the_mask() -> None:
    plan = plan_recipe(0.7, 10, SCOPE, 0.01)
    assert plan.mask_type == "block4" and "VNNI" in plan.mask_reason
    plan = plan_recipe(0.7, 10, SCOPE, 0.01, args=RecipeArgs(mask_type="unstructured"))
    assert plan.mask_type == "unstructured" and "--recipe-args" in plan.mask_reason
    with pytest.raises(ValueError, match="target must be one of auto, vnni, default, tensorrt"):
        plan_recipe(0.5, 10, SCOPE, 0.01, target="tpu")
    with pytest.raises(ValueError, match="mask_type must be one of"):
        RecipeArgs(mask_type="block8")


# ---- --recipe-args layer_allocation: each layer dense or past the break-even sparsity -------------

# A ResNet-like scope: small early layers that compute a lot per weight, big late ones that do not.
WEIGHTS = {"l1.weight": 40_000, "l2.weight": 150_000, "l3.weight": 600_000, "l4a.weight": 2_400_000,
           "l4b.weight": 2_400_000, "l4c.weight": 900_000}
MACS = {"l1.weight": 40_000 * 3136, "l2.weight": 150_000 * 784, "l3.weight": 600_000 * 196,
        "l4a.weight": 2_400_000 * 49, "l4b.weight": 2_400_000 * 49, "l4c.weight": 900_000 * 49}


def overall(sparsity: dict[str, float]) -> float:
    return sum(WEIGHTS[n] * s for n, s in sparsity.items()) / sum(WEIGHTS.values())


@pytest.mark.parametrize("allocation, dense", [
    ("by_size", {"l1.weight", "l2.weight", "l3.weight", "l4c.weight"}),  # the smallest layers stay dense
    # the least compute per weight stays dense: l4a and l4b would push the rest past the cap, so l4c and l3
    ("by_compute", {"l4c.weight", "l3.weight"}),
])
def test_allocations_keep_the_overall_sparsity_with_each_layer_dense_or_past_break_even(allocation, dense):
    sparsity = levels.allocate_layers(WEIGHTS, MACS, 0.7, allocation)
    assert {n for n, s in sparsity.items() if s == 0} == dense
    pruned = {s for s in sparsity.values() if s > 0}
    assert len(pruned) == 1 and levels.BREAK_EVEN_SPARSITY <= pruned.pop() <= levels.MAX_SPARSITY
    assert overall(sparsity) == pytest.approx(0.7, abs=1e-4)


def test_by_compute_is_by_size_where_every_weight_computes_alike():
    per_token = {name: size * 128 for name, size in WEIGHTS.items()}  # a transformer's linear layers
    assert levels.allocate_layers(WEIGHTS, per_token, 0.7, "by_compute") == \
        levels.allocate_layers(WEIGHTS, per_token, 0.7, "by_size")


def test_uniform_and_targets_past_break_even_prune_every_layer_alike():
    assert set(levels.allocate_layers(WEIGHTS, MACS, 0.7, "uniform").values()) == {0.7}
    assert set(levels.allocate_layers(WEIGHTS, MACS, 0.95, "by_size").values()) == {0.95}
    with pytest.raises(ValueError, match="needs the weights and compute of every pruned layer: none for l1"):
        levels.allocate_layers(WEIGHTS, {}, 0.7, "by_compute")
    with pytest.raises(ValueError, match="layer_allocation must be one of uniform, by_size, by_compute"):
        RecipeArgs(layer_allocation="greedy")
    with pytest.raises(ValueError, match=r"break_even_sparsity must be in \[0.6, 0.95\]"):
        RecipeArgs(break_even_sparsity=0.99)


def test_an_allocated_recipe_prunes_only_the_chosen_layers_and_says_which_stay_dense():
    scope = PruningScope(prune=tuple(WEIGHTS), keep_dense={"fc.weight": "head"}, weights=WEIGHTS, macs=MACS)
    plan = plan_recipe(0.5, 10, scope, 0.01, args=RecipeArgs(layer_allocation="by_size"))
    text = recipe_yaml(plan)
    gmp = modifiers(parse(text))["GMPruningModifier"]
    assert gmp["params"] == ["l4a.weight", "l4b.weight"] and gmp["final_sparsity"] >= 0.9
    assert "2 layers pruned to" in text and "#   dense by the allocation: l1.weight" in text
    assert plan.summary()["recipe.layer_allocation"] == "by_size"
    assert plan.summary()["recipe.num_allocated_dense"] == 4
    assert "recipe.layer_sparsity" not in plan_recipe(0.5, 10, scope, 0.01).summary()
    with pytest.raises(ValueError, match="a 2:4 mask is 50% in every layer"):
        plan_recipe(0.5, 10, scope, 0.01, target="tensorrt", args=RecipeArgs(layer_allocation="by_size"))


def test_the_use_case_default_allocation_applies_unless_the_recipe_args_or_a_2_4_mask_say_otherwise():
    scope = PruningScope(prune=tuple(WEIGHTS), keep_dense={}, weights=WEIGHTS, macs=MACS)
    plan = plan_recipe(0.5, 10, scope, 0.01, default_allocation="by_compute")
    assert plan.layer_allocation == "by_compute" and "the use case's default" in plan.allocation_reason
    assert set(plan.layer_sparsity.values()) - {0} and "layer allocation by_compute (the use case's default" \
        in recipe_yaml(plan)
    given = plan_recipe(0.5, 10, scope, 0.01, default_allocation="by_compute", args=RecipeArgs(layer_allocation="uniform"))
    assert given.layer_allocation == "uniform" and given.allocation_reason == "uniform (--recipe-args layer_allocation)"
    assert not given.layer_sparsity
    two_four = plan_recipe(0.5, 10, scope, 0.01, default_allocation="by_compute", target="tensorrt")
    assert two_four.layer_allocation == "uniform" and two_four.mask_type == "2:4"
    assert plan_recipe(0.5, 10, scope, 0.01).layer_allocation == "uniform"
    assert RecipeArgs().allocates_layers("by_compute") and not RecipeArgs(layer_allocation="uniform").allocates_layers(
        "by_compute")


def test_layer_costs_count_each_weight_once_per_output_pixel_or_token():
    torch = pytest.importorskip("torch")
    from torch import nn

    from sparsify_mlflow.training import with_layer_costs

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5))
    scope = with_layer_costs(model, PruningScope(prune=("1.weight", "3.weight"), keep_dense={}),
                             [torch.randn(2, 3, 8, 8).numpy()])
    assert scope.weights == {"1.weight": 8 * 4 * 9, "3.weight": 64 * 5}
    assert scope.macs == {"1.weight": 8 * 4 * 9 * 16, "3.weight": 64 * 5}  # conv2's output is 4x4
    assert model.training  # left as it was
