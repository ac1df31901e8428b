"""nlp-text_classification and nlp-sentiment_analysis: HF-style text data, transformers, accuracy + F1.

One implementation, registered under two names (Sparsify lists them as two use cases). Data are
JSON lines / JSON / CSV files, a folder of splits, a Hugging Face dataset name, or (default) the
embedded synthetic sentiment set; the model is a Hugging Face sequence classifier (default: the
packaged MiniLM). Rows are tokenized once to `max_seq_length` (the exported ONNX has that fixed
length); training trims each batch to its longest row, which gives the same result faster.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.data import text_files, text_hub
from sparsify_mlflow.errors import DataError
from sparsify_mlflow.levels import PruningScope
from sparsify_mlflow.usecases import register
from sparsify_mlflow.usecases.base import (
    CLASSIFICATION_EVAL_METRICS,
    DataBundle,
    Metrics,
    Predictor,
    classification_metrics,
    collect_predictions,
)
from sparsify_mlflow.usecases.transformers_models import (
    encoder_scope,
    forward_input_names,
    load_sequence_classifier,
    load_tokenizer,
)

HEAD = "classifier"
PYFUNC_FILE = Path(__file__).with_name("text_pyfunc.py")
TRUNCATION_WARNING = 0.05  # warn when more than this share of rows is cut at max_seq_length


class TokenizedText(torch.utils.data.Dataset):
    """Examples tokenized to a fixed length: items are dicts of int64 tensors plus `labels`."""

    def __init__(self, examples: list[text_files.Example], encoded: dict[str, np.ndarray], tokenizer: Any):
        self.examples = examples
        self.arrays = encoded
        self.labels = np.array([e.label for e in examples], dtype=np.int64)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {k: torch.from_numpy(v[i]) for k, v in self.arrays.items()}
        item["labels"] = torch.tensor(self.labels[i], dtype=torch.long)
        return item


class TextClassification:
    aliases: tuple[str, ...]
    default_model = "minilm"
    default_epochs = 6
    default_batch_size = 32
    default_lr = 1e-4
    default_pretrained = True    # a transformer is always fine-tuned from its weights unless told otherwise
    default_distill = True       # the dense baseline teaches the sparse model
    main_metric = "accuracy"
    eval_metrics = CLASSIFICATION_EVAL_METRICS

    def __init__(self, name: str, aliases: tuple[str, ...], task: str):
        self.name = name
        self.aliases = aliases
        self.task = task

    # ---- data --------------------------------------------------------------------------------

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        splits, source = self._splits(cfg)
        tokenizer = load_tokenizer(cfg.model, cfg.max_seq_length)
        train, train_cut = self._tokenize(splits.train, tokenizer, cfg.max_seq_length)
        val, val_cut = self._tokenize(splits.val, tokenizer, cfg.max_seq_length)
        cut = (train_cut + val_cut) / (len(train) + len(val))
        warnings = list(splits.notes)
        if cut > TRUNCATION_WARNING:
            warnings.append(f"{cut:.0%} of the examples are longer than --max-seq-length {cfg.max_seq_length} "
                            "tokens and were truncated; consider a larger value")
        counts = np.bincount(train.labels, minlength=len(splits.label_names))
        missing_val = [n for i, n in enumerate(splits.label_names) if i not in set(val.labels.tolist())]
        if missing_val:
            warnings.append(f"label(s) {', '.join(missing_val)} have no validation example")
        mapping = {name: i for i, name in enumerate(splits.label_names)}
        return DataBundle(
            train=train,
            val=val,
            label_names=splits.label_names,
            fingerprint=_fingerprint(splits, cfg.max_seq_length),
            source=source,
            info={
                "data.layout": splits.layout,
                "data.num_classes": len(splits.label_names),
                "data.train_samples": len(train),
                "data.val_samples": len(val),
                "data.text_column": splits.text_column,
                "data.text_pair_column": splits.pair_column or "",
                "data.label_column": splits.label_column,
                "data.label_mapping": json.dumps(mapping),
                "data.train_class_counts": json.dumps(dict(zip(splits.label_names, counts.tolist()))),
                "data.truncated_fraction": round(cut, 4),
            },
            preprocessing={
                "tokenizer": "tokenizer/", "max_seq_length": cfg.max_seq_length, "padding": "max_length",
                "truncation": True, "text_column": splits.text_column, "text_pair_column": splits.pair_column,
            },
            warnings=warnings,
        )

    def _splits(self, cfg: ExperimentConfig) -> tuple[text_files.TextSplits, str]:
        columns = {"text_column": cfg.text_column, "pair_column": cfg.text_pair_column,
                   "label_column": cfg.label_column}
        spec = cfg.data
        if spec is None or spec == "embedded" or spec.startswith("embedded:"):
            from sparsify_mlflow.data.embedded_text import DEFAULT_ROWS, sentiment_dataset

            rows = DEFAULT_ROWS if spec in (None, "embedded") else _embedded_rows(spec)
            folder = sentiment_dataset(rows)
            return (text_files.load_text_splits(folder, seed=cfg.seed, **columns),
                    f"embedded synthetic sentiment ({rows} rows)")
        if text_hub.looks_like_hub_name(spec):
            return text_hub.load_hub_splits(spec, seed=cfg.seed, **columns), f"hf:{spec}"
        return text_files.load_text_splits(Path(spec), seed=cfg.seed, **columns), str(Path(spec).expanduser())

    @staticmethod
    def _tokenize(examples: list[text_files.Example], tokenizer: Any, max_len: int) -> tuple[TokenizedText, int]:
        texts = [e.text for e in examples]
        pairs = [e.pair or "" for e in examples] if examples and examples[0].pair is not None else None
        encoded = tokenizer(texts, pairs, padding="max_length", truncation=True, max_length=max_len,
                            return_tensors="np")
        full = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)["input_ids"]
        cut = sum(len(ids) > max_len for ids in full)
        arrays = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in encoded.items()}
        return TokenizedText(examples, arrays, tokenizer), cut

    # ---- model -------------------------------------------------------------------------------

    def create_model(self, cfg: ExperimentConfig, num_labels: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return load_sequence_classifier(cfg.model, [f"LABEL_{i}" for i in range(num_labels)], pretrained)

    def build_model(self, cfg: ExperimentConfig, data: DataBundle) -> nn.Module:
        model, facts = load_sequence_classifier(cfg.model, data.label_names, bool(cfg.pretrained))
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and cfg.max_seq_length > limit:
            raise DataError(f"--max-seq-length {cfg.max_seq_length} exceeds {cfg.model}'s {limit} positions")
        data.info.update({f"model.{k}": v for k, v in facts.items()})
        data.info["model.input_names"] = ",".join(self._input_names(model, data))
        return model

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
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        length = int(inputs["attention_mask"].sum(dim=1).max())
        inputs = {k: v[:, :length].to(device) for k, v in inputs.items()}
        outputs = model(**inputs)
        loss = nn.functional.cross_entropy(outputs[0], batch["labels"].to(device))
        return loss, outputs, inputs

    # ---- evaluation --------------------------------------------------------------------------

    def eval_batches(self, data: DataBundle, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        names = self._names(data)
        for start in range(0, len(data.val), batch_size):
            stop = start + batch_size
            yield [data.val.arrays[n][start:stop] for n in names], data.val.labels[start:stop]

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        from torchmetrics.functional.classification import multiclass_f1_score

        preds, target = collect_predictions(predict, self.eval_batches(data, batch_size))
        n = len(data.label_names)
        values = classification_metrics(preds, target, n)
        per_class = multiclass_f1_score(preds, target, num_classes=n, average="none")
        counts = torch.bincount(target, minlength=n)
        predicted = torch.bincount(preds.argmax(dim=1), minlength=n)
        table = [{"class": name, "f1": round(float(f1), 4), "samples": int(c), "predicted": int(p)}
                 for name, f1, c, p in zip(data.label_names, per_class, counts, predicted)]
        return Metrics(self.main_metric, values, {"per_class_f1": table})

    def sample_inputs(self, data: DataBundle, n: int) -> list[np.ndarray]:
        idx = np.arange(n) % len(data.val)
        return [np.ascontiguousarray(data.val.arrays[name][idx]) for name in self._names(data)]

    def io_names(self, data: DataBundle) -> tuple[list[str], list[str]]:
        return self._names(data), ["logits"]

    def pruning_scope(self, model: nn.Module) -> PruningScope:
        return encoder_scope(model, HEAD)

    # ---- deployment --------------------------------------------------------------------------

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        names = self._names(data)
        length = data.preprocessing["max_seq_length"]
        return {
            "task": self.task,
            "labels": data.label_names,
            "label2id": {n: i for i, n in enumerate(data.label_names)},
            "id2label": {str(i): n for i, n in enumerate(data.label_names)},
            "max_seq_length": length,
            "input_names": names,
            "inputs": {n: f"int64 [batch, {length}] from the tokenizer (padding='max_length', truncation)"
                       for n in names},
            "outputs": {"logits": "float32 [batch, num_labels]; argmax is the label id"},
            "preprocessing": data.preprocessing,
        }

    def deployment_files(self, data: DataBundle, folder: Path) -> None:
        """The tokenizer (set to max_seq_length) and labels.json beside model.onnx."""
        tokenizer_dir = folder / "tokenizer"
        if tokenizer_dir.exists():
            shutil.rmtree(tokenizer_dir)
        data.val.tokenizer.save_pretrained(str(tokenizer_dir))
        (folder / "labels.json").write_text(json.dumps(data.label_names, indent=2, ensure_ascii=False))

    def serving_model(self, data: DataBundle, folder: Path) -> dict[str, Any]:
        """What to register: a pyfunc that tokenizes raw text and runs model.onnx (see text_pyfunc.py)."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        example = {"text": [data.val.examples[0].text]}
        inputs = [ColSpec("string", "text")]
        if data.preprocessing.get("text_pair_column"):
            example["text_pair"] = [data.val.examples[0].pair or ""]
            inputs.append(ColSpec("string", "text_pair"))
        outputs = [ColSpec("string", "label"), ColSpec("double", "score"), ColSpec("long", "label_id")]
        return {
            "python_model": PYFUNC_FILE,
            "artifacts": {"model": str(folder / "model.onnx"), "tokenizer": str(folder / "tokenizer"),
                          "config": str(folder / "config.json")},
            "input_example": pd.DataFrame(example),
            "signature": ModelSignature(Schema(inputs), Schema(outputs)),
            "model_config": {"engine": "onnxruntime"},  # load_model(..., model_config={"engine": "deepsparse"})
            "pip_requirements": _serving_requirements(),
        }

    # ---- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _input_names(model: nn.Module, data: DataBundle) -> list[str]:
        """The model's inputs in forward order, remembered with the preprocessing (and exported)."""
        names = forward_input_names(model, list(data.train.arrays))
        data.preprocessing["input_names"] = names
        return names

    @staticmethod
    def _names(data: DataBundle) -> list[str]:
        names = data.preprocessing.get("input_names")
        if names is None:  # before build_model: the tokenizer's outputs in BERT's forward order
            order = ("input_ids", "attention_mask", "token_type_ids")
            names = [n for n in order if n in data.val.arrays]
        return list(names)


def _embedded_rows(spec: str) -> int:
    from sparsify_mlflow.data.embedded_text import MAX_ROWS, MIN_ROWS

    value = spec.split(":", 1)[1]
    if not value.strip().isdigit() or not MIN_ROWS <= int(value) <= MAX_ROWS:
        raise DataError(f"--data {spec!r}: expected embedded:<rows> with {MIN_ROWS} to {MAX_ROWS} rows, "
                        "e.g. embedded:3000")
    return int(value)


def _fingerprint(splits: text_files.TextSplits, max_seq_length: int) -> str:
    """Hash of what the model sees: examples, labels, columns and sequence length."""
    digest = hashlib.sha256()
    digest.update(json.dumps([splits.label_names, splits.text_column, splits.pair_column,
                              splits.label_column, max_seq_length]).encode())
    for part in (splits.train, splits.val):
        for e in part:
            digest.update(f"{e.label}\0{e.text}\0{e.pair or ''}\n".encode())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def _serving_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("numpy", "pandas", "transformers", "tokenizers", "onnxruntime"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            out.append(package)
    return out


register(TextClassification(
    "nlp-text_classification",
    ("text_classification", "text-classification", "nlp_text_classification", "nlp-text-classification"),
    task="text-classification",
))
register(TextClassification(
    "nlp-sentiment_analysis",
    ("sentiment_analysis", "sentiment-analysis", "sentiment", "nlp_sentiment_analysis", "nlp-sentiment-analysis"),
    task="sentiment-analysis",
))
