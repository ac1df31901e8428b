"""What the NLP use cases (text/token classification, question answering) share around a transformer.

The model's inputs are tokenizer arrays of a fixed `max_seq_length` (the exported ONNX has that
length); the optimizer, the pruning scope, the input names in forward order, the tokenizer beside
model.onnx and the embedded-data row count work the same for every task. A task subclasses
`TransformerTask` and adds its data, model head, loss, evaluation and deployment config.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.errors import DataError
from sparsify_mlflow.levels import PruningScope
from sparsify_mlflow.options import option, positive_int
from sparsify_mlflow.qdq import QDQ_FILE
from sparsify_mlflow.registry import pinned_requirements
from sparsify_mlflow.usecases import serving_engine
from sparsify_mlflow.usecases.base import DataBundle, UseCase
from sparsify_mlflow.usecases.nlp.transformers_models import encoder_scope, forward_input_names

TOKENIZER_ORDER = ("input_ids", "attention_mask", "token_type_ids")  # BERT's forward order
TRUNCATION_WARNING = 0.05  # warn when more than this share of examples is cut at max_seq_length


class EncodedDataset(torch.utils.data.Dataset):
    """Fixed-length tokenizer arrays plus per-row training targets: items are dicts of tensors."""

    def __init__(self, arrays: dict[str, np.ndarray], targets: dict[str, np.ndarray], tokenizer: Any):
        self.arrays = arrays
        self.targets = targets
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(v[i])) for k, v in (self.arrays | self.targets).items()}


def _short(names: list[str], shown: int = 4) -> str:
    return "[" + ", ".join(names[:shown]) + (", ..." if len(names) > shown else "") + "]"


def int64_arrays(encoded: Any) -> dict[str, np.ndarray]:
    """The tokenizer's model inputs as contiguous int64 arrays (what the ONNX graph takes)."""
    return {k: np.ascontiguousarray(encoded[k], dtype=np.int64) for k in TOKENIZER_ORDER if k in encoded}


@dataclass(frozen=True)
class TransformerOptions:
    """What every NLP use case takes beside the common options."""

    max_seq_length: int = option(128, "NLP: tokens per example; the exported ONNX has this fixed length.",
                                 check=positive_int)


class TransformerTask(UseCase):
    """Defaults and methods shared by the NLP use cases; subclasses set `task`, `head` and `output_names`."""

    task: ClassVar[str]          # the pipeline task name written into the deployment config
    options = TransformerOptions
    default_model = "minilm"
    default_pretrained = True    # a transformer is always fine-tuned from its weights unless told otherwise
    default_distill = True       # the dense baseline teaches the sparse model
    distills = True
    head = "classifier"          # the task head: kept dense and FP32
    output_names: tuple[str, ...] = ("logits",)
    trim_targets: tuple[str, ...] = ()  # per-token targets cut with the inputs when a batch is trimmed

    # ---- model -------------------------------------------------------------------------------

    def load_model(self, name: str, label_names: list[str], pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        """The task's AutoModelFor... with its head sized to `label_names`, plus facts to log."""
        raise NotImplementedError

    def load_teacher(self, name: str, data: DataBundle) -> tuple[nn.Module, dict[str, Any]]:
        """An external distillation teacher, checked before any training: the student's label names in the
        same order (a head with other labels would teach the wrong classes) and the same tokenizer
        vocabulary (the same ids must mean the same tokens); ModelError, one line, otherwise."""
        from transformers import AutoConfig

        from sparsify_mlflow.errors import ModelError
        from sparsify_mlflow.usecases.nlp.transformers_models import (
            _from_pretrained,
            load_tokenizer,
            resolve_model_source,
        )

        source, how = resolve_model_source(name)
        config = _from_pretrained(AutoConfig.from_pretrained, name, source, how, "teacher's config")
        if data.label_names:
            labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
            if labels != list(data.label_names):
                raise ModelError(f"--teacher {name} predicts {len(labels)} labels {_short(labels)}, the data has "
                                 f"{len(data.label_names)} {_short(list(data.label_names))}: a teacher must be trained "
                                 f"on the same labels in the same order")
        student = data.train.tokenizer.get_vocab()
        teacher = load_tokenizer(name, data.train.tokenizer.model_max_length).get_vocab()
        if teacher != student:
            raise ModelError(f"--teacher {name}'s tokenizer has another vocabulary ({len(teacher)} tokens vs the "
                             f"student's {len(student)}{', same size, other ids' if len(teacher) == len(student) else ''}): "
                             f"its inputs would not mean the same tokens")
        return self.load_model(name, list(data.label_names), pretrained=True)  # its own head: the sizes match

    def create_model(self, cfg: ExperimentConfig, num_labels: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return self.load_model(cfg.model, [f"LABEL_{i}" for i in range(num_labels)], pretrained)

    def build_model(self, cfg: ExperimentConfig, data: DataBundle) -> nn.Module:
        model, facts = self.load_model(cfg.model, data.label_names, bool(cfg.pretrained))
        self.check_model(cfg, data, model, facts)
        return model

    def check_model(self, cfg: ExperimentConfig, data: DataBundle, model: nn.Module, facts: dict[str, Any]) -> None:
        """Reject a sequence length the model cannot embed; log the model facts and input names."""
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and cfg.use_case_options.max_seq_length > limit:
            raise DataError(f"--max-seq-length {cfg.use_case_options.max_seq_length} exceeds {cfg.model}'s "
                            f"{limit} positions")
        data.info.update({f"model.{k}": v for k, v in facts.items()})
        names = forward_input_names(model, list(data.train.arrays))
        data.preprocessing["input_names"] = names  # remembered with the preprocessing (and exported)
        data.info["model.input_names"] = ",".join(names)

    def make_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """AdamW, no weight decay on biases and LayerNorm (the usual BERT fine-tuning setup)."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.dim() <= 1 or "LayerNorm" in name else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        return self.distillation_step(model, batch, device)[0]

    def distillation_step(self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
                          ) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        """(task loss, student outputs, student inputs): what sparseml's DistillationModifier needs.

        The batch is trimmed to its longest row (the rest is padding), so short texts train fast.
        """
        length = int(batch["attention_mask"].sum(dim=1).max())
        inputs = {k: batch[k][:, :length].to(device) for k in TOKENIZER_ORDER if k in batch}
        targets = {k: (v[:, :length] if k in self.trim_targets else v).to(device)
                   for k, v in batch.items() if k not in inputs}
        outputs = model(**inputs)
        return self.loss(outputs, targets), outputs, inputs

    def loss(self, outputs: tuple[torch.Tensor, ...], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def pruning_scope(self, model: nn.Module) -> PruningScope:
        return encoder_scope(model, self.head)

    # ---- inputs and outputs ------------------------------------------------------------------

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        names, targets = self.input_names(data), self.eval_targets(data)
        for start in range(0, len(data.val), batch_size):
            stop = start + batch_size
            yield [data.val.arrays[n][start:stop] for n in names], targets[start:stop]

    def eval_targets(self, data: DataBundle) -> np.ndarray:
        """Per validation row, what its prediction is scored against (class id, tag ids)."""
        return data.val.targets["labels"]

    def sample_inputs(self, data: DataBundle, n: int) -> list[np.ndarray]:
        idx = np.arange(n) % len(data.val)
        return [np.ascontiguousarray(data.val.arrays[name][idx]) for name in self.input_names(data)]

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        return self.input_names(data), list(self.output_names)

    @staticmethod
    def input_names(data: DataBundle) -> list[str]:
        """The model's inputs in forward order (before build_model: the tokenizer's, BERT's order)."""
        names = data.preprocessing.get("input_names")
        if names is None:
            names = [n for n in TOKENIZER_ORDER if n in data.val.arrays]
        return list(names)

    # ---- deployment --------------------------------------------------------------------------

    def deployment_files(self, data: DataBundle, folder: Path) -> None:
        """The tokenizer (set to max_seq_length) and, for labelled tasks, labels.json beside model.onnx."""
        tokenizer_dir = folder / "tokenizer"
        if tokenizer_dir.exists():
            shutil.rmtree(tokenizer_dir)
        data.val.tokenizer.save_pretrained(str(tokenizer_dir))
        if data.label_names:
            (folder / "labels.json").write_text(json.dumps(data.label_names, indent=2, ensure_ascii=False))

    @staticmethod
    def raw_text_pyfunc(folder: Path, python_model: Path, input_example: Any, signature: Any,
                        code: tuple[Path, ...] = ()) -> dict[str, Any]:
        """What to register for a task served on raw text: `python_model` (a pyfunc file beside this one)
        with model.onnx, its QDQ twin where the export was INT8, the tokenizer and config.json, and the
        engine switch it imports (serving_engine.py) beside the other modules it imports (`code`)."""
        return {
            "python_model": python_model,
            "code_paths": [Path(serving_engine.__file__), *code],
            "artifacts": {"model": str(folder / "model.onnx"), "tokenizer": str(folder / "tokenizer"),
                          "config": str(folder / "config.json"),
                          **({"qdq_model": str(folder / QDQ_FILE)} if (folder / QDQ_FILE).is_file() else {})},
            "input_example": input_example,
            "signature": signature,
            "model_config": {"engine": "onnxruntime"},  # load_model(..., model_config={"engine": "openvino"})
            "pip_requirements": pinned_requirements("numpy", "pandas", "transformers", "tokenizers", "onnxruntime"),
        }

    def input_specs(self, data: DataBundle) -> dict[str, str]:
        length = data.preprocessing["max_seq_length"]
        return {n: f"int64 [batch, {length}] from the tokenizer (padding='max_length', truncation)"
                for n in self.input_names(data)}
