"""nlp-text_classification and nlp-sentiment_analysis: HF-style text data, transformers, accuracy + F1.

One implementation, registered under two names (Sparsify lists them as two use cases). Data are
JSON lines / JSON / CSV files, a folder of splits, a Hugging Face dataset name, the real offline
docstring set (`embedded:docstrings`), or (default) the embedded synthetic sentiment set; the model
is a Hugging Face sequence classifier (default: the packaged MiniLM). Rows are tokenized once to
`max_seq_length` (the exported ONNX has that fixed length); training trims each batch to its
longest row, which gives the same result faster.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.data import docstring_text, text_files, text_hub
from sparsify_mlflow.data.embedded import embedded_rows, is_embedded
from sparsify_mlflow.options import option
from sparsify_mlflow.usecases.base import (
    CLASSIFICATION_EVAL_METRICS,
    DataBundle,
    Metrics,
    Predictor,
    classification_metrics,
    collect_predictions,
)
from sparsify_mlflow.usecases.nlp.transformer_task import (
    TRUNCATION_WARNING,
    EncodedDataset,
    TransformerOptions,
    TransformerTask,
    int64_arrays,
)
from sparsify_mlflow.usecases.nlp.transformers_models import load_sequence_classifier, load_tokenizer

PYFUNC_FILE = Path(__file__).with_name("text_pyfunc.py")


class TokenizedText(EncodedDataset):
    """Examples tokenized to a fixed length, with their class ids as the `labels` target."""

    def __init__(self, examples: list[text_files.Example], encoded: dict[str, np.ndarray], tokenizer: Any):
        self.examples = examples
        self.labels = np.array([e.label for e in examples], dtype=np.int64)
        super().__init__(encoded, {"labels": self.labels}, tokenizer)


@dataclass(frozen=True)
class TextOptions(TransformerOptions):
    text_column: str | None = option(None, "NLP text: column with the text (default: auto-detected, e.g. text "
                                     "or sentence).")
    text_pair_column: str | None = option(None, "NLP text: second text column, for sentence pairs.")
    label_column: str | None = option(None, "NLP text: column with the label (default: label).")


class TextClassification(TransformerTask):
    task = "text-classification"
    options = TextOptions
    default_epochs = 6
    default_batch_size = 32
    default_lr = 1e-4
    # On real text (the docstring set, level 0.5, 6 epochs) the pruned MiniLM ended 2.1 points below dense
    # on average at twice the rate (0.0-4.5 over seven runs: five seeds, two CPUs) and 3.9 at --lr (1.3-6.4;
    # docs/benchmarks/recipe_accuracy.md): at --lr it was still recovering from the ramp when QAT began
    pruned_lr_scale = 2.0
    main_metric = "accuracy"
    eval_metrics = CLASSIFICATION_EVAL_METRICS

    # ---- data --------------------------------------------------------------------------------

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        splits, source = self._splits(cfg)
        tokenizer = load_tokenizer(cfg.model, cfg.use_case_options.max_seq_length)
        train, train_cut = self._tokenize(splits.train, tokenizer, cfg.use_case_options.max_seq_length)
        val, val_cut = self._tokenize(splits.val, tokenizer, cfg.use_case_options.max_seq_length)
        cut = (train_cut + val_cut) / (len(train) + len(val))
        warnings = list(splits.notes)
        if cut > TRUNCATION_WARNING:
            warnings.append(f"{cut:.0%} of the examples are longer than --max-seq-length "
                            f"{cfg.use_case_options.max_seq_length} tokens and were truncated; consider a larger value")
        counts = np.bincount(train.labels, minlength=len(splits.label_names))
        missing_val = [n for i, n in enumerate(splits.label_names) if i not in set(val.labels.tolist())]
        if missing_val:
            warnings.append(f"label(s) {', '.join(missing_val)} have no validation example")
        mapping = {name: i for i, name in enumerate(splits.label_names)}
        return DataBundle(
            train=train,
            val=val,
            label_names=splits.label_names,
            fingerprint=_fingerprint(splits, cfg.use_case_options.max_seq_length),
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
                "tokenizer": "tokenizer/", "max_seq_length": cfg.use_case_options.max_seq_length, "padding": "max_length",
                "truncation": True, "text_column": splits.text_column, "text_pair_column": splits.pair_column,
            },
            warnings=warnings,
        )

    def _splits(self, cfg: ExperimentConfig) -> tuple[text_files.TextSplits, str]:
        columns = {"text_column": cfg.use_case_options.text_column, "pair_column": cfg.use_case_options.text_pair_column,
                   "label_column": cfg.use_case_options.label_column}
        spec = cfg.data
        if spec == docstring_text.SPEC:
            folder = docstring_text.docstring_dataset()
            return (text_files.load_text_splits(folder, seed=cfg.seed, **columns),
                    f"{docstring_text.SPEC}: docstrings of {len(docstring_text.LIBRARIES)} installed libraries, "
                    f"labelled by library")
        if is_embedded(spec):
            from sparsify_mlflow.data.embedded_text import sentiment_dataset

            rows = _embedded_rows(spec)
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
        return TokenizedText(examples, int64_arrays(encoded), tokenizer), cut

    # ---- model -------------------------------------------------------------------------------

    def load_model(self, name: str, label_names: list[str], pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return load_sequence_classifier(name, label_names, pretrained)

    def loss(self, outputs: tuple[torch.Tensor, ...], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs[0], targets["labels"])

    # ---- evaluation --------------------------------------------------------------------------

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

    # ---- deployment --------------------------------------------------------------------------

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        names = self.input_names(data)
        length = data.preprocessing["max_seq_length"]
        return {
            "task": self.task,
            "labels": data.label_names,
            "label2id": {n: i for i, n in enumerate(data.label_names)},
            "id2label": {str(i): n for i, n in enumerate(data.label_names)},
            "max_seq_length": length,
            "input_names": names,
            "inputs": self.input_specs(data),
            "outputs": {"logits": "float32 [batch, num_labels]; argmax is the label id"},
            "preprocessing": data.preprocessing,
        }

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
        return self.raw_text_pyfunc(folder, PYFUNC_FILE, pd.DataFrame(example),
                                    ModelSignature(Schema(inputs), Schema(outputs)))


def _embedded_rows(spec: str | None) -> int:
    from sparsify_mlflow.data.embedded_text import DEFAULT_ROWS, MAX_ROWS, MIN_ROWS

    return embedded_rows(spec, MIN_ROWS, MAX_ROWS, DEFAULT_ROWS)


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


class SentimentAnalysis(TextClassification):
    task = "sentiment-analysis"
