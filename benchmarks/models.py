"""The engine section's models, their pruning scopes, generated data, and one level's build.

A build is what the project does to a model at an optim level, shortened: levels.plan_recipe ->
levels.recipe_yaml -> sparseml manager over a few steps of generated data -> export.export_onnx.
Random weights are fine for speed: the engine's speed depends on shapes, sparsity and INT8.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.settings import ModelSpec

LR = 1e-3  # generated data: keep the few steps tame


def build_model(spec: ModelSpec):
    """A QAT-ready model: torchvision's quantization variant, or BERT with QAT-ready attention."""
    import torch

    torch.manual_seed(0)
    if spec.kind == "vision":
        import torchvision

        return getattr(torchvision.models.quantization, spec.key)(quantize=False)
    from sparseml.transformers.sparsification.modification.modifying_bert import modify
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                        max_position_embeddings=512, num_labels=2)
    model = BertForSequenceClassification(config)
    try:  # the project's NLP helper, when present: the same modification its use cases apply
        from sparsify_mlflow.usecases.nlp.transformers_models import make_qat_ready
    except ImportError:
        return modify(model)  # attention matmuls as QATMatMul modules (STACK.md)
    make_qat_ready(model)
    return model


def pruning_scope(spec: ModelSpec, model):
    """The project's scope for the model: image classification's, or the NLP use cases' encoder scope.

    Without the NLP helper (older checkouts), the same rule is spelled out here: prune the encoder
    blocks' Linear weights; keep embeddings, pooler and head dense; head out of QAT.
    """
    from sparsify_mlflow.levels import PruningScope

    if spec.kind == "vision":
        from sparsify_mlflow.usecases import resolve

        return resolve("cv-classification").pruning_scope(model)
    try:
        from sparsify_mlflow.usecases.nlp.transformers_models import encoder_scope
    except ImportError:
        pass
    else:
        return encoder_scope(model, "classifier")
    prune = tuple(n for n, p in model.named_parameters()
                  if n.startswith("bert.encoder.layer.") and n.endswith(".weight") and p.dim() == 2)
    keep = {
        "bert.embeddings.word_embeddings.weight": "embeddings: a lookup table, pruning it saves no compute",
        "bert.pooler.dense.weight": "pooler: one small layer outside the encoder",
        "classifier.weight": "classifier head: small, maps features to labels directly",
    }
    return PruningScope(
        prune=prune, keep_dense=keep, quant_ignore=("classifier",),
        # token ids are int64: fake-quantizing the embedding's input fails ("not implemented for 'Long'")
        quant_scheme_overrides={"Embedding": {"input_activations": None}},
    )


def sample_rows(spec: ModelSpec, n: int, seed: int = 0, seq_len: int | None = None) -> list[np.ndarray]:
    """Generated inputs, one array per ONNX input (images ~ N(0, 1); random token ids)."""
    rng = np.random.default_rng(seed)
    if spec.kind == "vision":
        return [rng.standard_normal((n, 3, spec.image_size, spec.image_size), dtype=np.float32)]
    ids = rng.integers(min(1000, spec.vocab // 2), spec.vocab, size=(n, seq_len or spec.seq_len), dtype=np.int64)
    return [ids, np.ones_like(ids), np.zeros_like(ids)]


def io_names(spec: ModelSpec) -> tuple[list[str], list[str]]:
    if spec.kind == "vision":
        return ["input"], ["logits"]
    return ["input_ids", "attention_mask", "token_type_ids"], ["logits"]


def _loss(spec: ModelSpec, model, rows: list, labels):
    import torch

    if spec.kind == "vision":
        return torch.nn.functional.cross_entropy(model(rows[0]), labels)
    return model(input_ids=rows[0], attention_mask=rows[1], token_type_ids=rows[2], labels=labels).loss


def use_case_allocation(spec: ModelSpec) -> str:
    """The layer allocation the project's use case for the model writes by default (what users get)."""
    from sparsify_mlflow.usecases import resolve

    return resolve("cv-classification" if spec.kind == "vision" else "nlp-text_classification").default_layer_allocation


def build_level(spec: ModelSpec, level: float, out_dir: Path, log_dir: Path, sampler: Any,
                target: str = "auto", allocation: str | None = None) -> dict[str, Any]:
    """Plan (with `target`'s pruning mask and the `allocation` of sparsity over the layers, by default
    the use case's), train briefly under the recipe, export; return what the report needs about the file."""
    import os

    import torch
    from sparseml.pytorch.optim import ScheduledModifierManager

    from sparsify_mlflow.export import export_onnx
    from sparsify_mlflow.levels import RecipeArgs, plan_recipe, recipe_yaml
    from sparsify_mlflow.training import scope_sparsity, with_layer_costs

    os.environ.update(NM_TEST_MODE="1", NM_TEST_LOG_DIR=str(log_dir))  # as training.train does
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(spec)
    scope = pruning_scope(spec, model)
    default = use_case_allocation(spec)
    args = RecipeArgs(layer_allocation=allocation)
    if args.allocates_layers(default):
        scope = with_layer_costs(model, scope, sample_rows(spec, 1, seed=2))
    plan = plan_recipe(level, spec.plan_epochs, scope, LR, target=target, args=args, default_allocation=default)
    recipe = recipe_yaml(plan)
    (out_dir / "recipe.yaml").write_text(recipe)

    steps = spec.plan_epochs * spec.steps_per_epoch
    data = [torch.from_numpy(a) for a in sample_rows(spec, spec.train_batch * steps, seed=1, seq_len=spec.train_seq_len)]
    labels = torch.randint(0, 2 if spec.kind == "bert" else 1000, (spec.train_batch * steps,),
                           generator=torch.Generator().manual_seed(1))
    manager = ScheduledModifierManager.from_yaml(recipe)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
                               steps_per_epoch=spec.steps_per_epoch)
    sampler.mark("train")
    model.train()
    step_seconds = []
    for step in range(steps):
        sl = slice(step * spec.train_batch, (step + 1) * spec.train_batch)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        _loss(spec, model, [d[sl] for d in data], labels[sl]).backward()
        optimizer.step()
        step_seconds.append(time.perf_counter() - t0)
    manager.finalize(model)
    model.eval()
    pruned_sparsity, _ = scope_sparsity(model, scope)

    inputs, outputs = io_names(spec)
    sample = tuple(torch.from_numpy(a) for a in sample_rows(spec, 1, seed=2))
    before = sampler.mark("export")
    t0 = time.perf_counter()
    exported = export_onnx(model, sample, out_dir, input_names=inputs, output_names=outputs)
    export_seconds = time.perf_counter() - t0
    peak = sampler.peak_by_label.get("export", before)
    sampler.mark("done")
    reference = _int8_only(spec, model, scope, out_dir / "int8_only", sample) if level == 0.0 else None
    qdq = _qdq_twin(exported.path) if exported.quantized and plan.target_sparsity > 0 else None
    return {
        "level": level,
        "target": target,
        "torch_threads": torch.get_num_threads(),
        "target_sparsity": plan.target_sparsity,
        "mask_type": plan.mask_type or "none",
        "layer_allocation": plan.layer_allocation,
        "layer_sparsity": plan.layer_sparsity,
        "quantized": plan.quantize,
        "recipe_steps": steps,
        "train_seconds": sum(step_seconds),
        "pruned_scope_sparsity": pruned_sparsity,      # PyTorch, over the pruned parameters
        "exported_sparsity": exported.weight_sparsity,  # the ONNX file, over all conv/matmul weights
        "onnx_path": str(exported.path),
        "qdq_path": qdq,  # the twin OpenVINO runs with integer kernels (pruned INT8 levels)
        "onnx_bytes": exported.size_bytes,
        "onnx_gzip_bytes": exported.gzip_size_bytes,
        "export_seconds": export_seconds,
        "export_rss_before_mb": before,
        "export_peak_rss_mb": peak,
        "export_peak_rss_delta_mb": max(0.0, peak - before),
        **({"int8_only": reference} if reference else {}),
    }


CALIBRATION_BATCHES = 4  # generated rows: a speed figure, not an accuracy one


def _int8_only(spec: ModelSpec, dense, scope, out_dir: Path, sample: tuple) -> dict[str, Any]:
    """The INT8-only reference of the experiments (post_training.calibrated_int8) on the dense build: the
    file DeepSparse runs and its QDQ twin (what OpenVINO runs with integer kernels)."""
    import torch

    from sparsify_mlflow.export import export_onnx
    from sparsify_mlflow.post_training import calibrated_int8

    rows = [[torch.from_numpy(a) for a in sample_rows(spec, spec.train_batch, seed=10 + i)]
            for i in range(CALIBRATION_BATCHES)]
    quantized = calibrated_int8(dense, scope, rows, len(rows), lambda model, batch: model(*batch))
    inputs, outputs = io_names(spec)
    exported = export_onnx(quantized, sample, out_dir, input_names=inputs, output_names=outputs)
    return {"onnx_path": str(exported.path), "qdq_path": _qdq_twin(exported.path), "quantized": exported.quantized,
            "exported_sparsity": exported.weight_sparsity, "onnx_bytes": exported.size_bytes}


def _qdq_twin(int8_file: Path) -> str:
    """The canonical QDQ form of an INT8 export (qdq.export_qdq), beside it: what OpenVINO runs in INT8."""
    from sparsify_mlflow.qdq import QDQ_FILE, export_qdq

    return str(export_qdq(int8_file, int8_file.with_name(QDQ_FILE)))
