"""nlp-token_classification and nlp-named_entity_recognition: tagged words, a token-classification
transformer, seqeval entity F1.

One implementation, registered under two names (Sparsify lists them as two use cases). Data are
JSON lines / JSON (tokens + ner_tags/tags) or CoNLL files, a Hugging Face dataset name, or (the
default) the embedded synthetic PER/LOC/ORG set. Words are split into sub-tokens to
`max_seq_length`; the first sub-token of each word carries the word's tag, the others (and
special tokens, padding) are ignored by the loss (-100). Evaluation reads the prediction at each
word's first sub-token, so metrics are per word, and words cut by truncation count as "O".
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.data import text_hub, token_files
from sparsify_mlflow.data.embedded import embedded_rows, is_embedded
from sparsify_mlflow.data.fingerprint import fingerprint_records
from sparsify_mlflow.options import option
from sparsify_mlflow.usecases.base import DataBundle, Metrics, Predictor
from sparsify_mlflow.usecases.nlp.token_metrics import entity_metrics
from sparsify_mlflow.usecases.nlp.transformer_task import (
    TRUNCATION_WARNING,
    EncodedDataset,
    TransformerOptions,
    TransformerTask,
    int64_arrays,
)
from sparsify_mlflow.usecases.nlp.transformers_models import load_token_classifier, load_tokenizer

IGNORE = -100  # label of sub-tokens after the first, special tokens and padding
PYFUNC_FILE = Path(__file__).with_name("token_pyfunc.py")


class TaggedSentences(EncodedDataset):
    """Sentences tokenized to a fixed length with per-position tag ids (`labels`, IGNORE elsewhere)."""

    def __init__(self, sentences: list[token_files.Sentence], encoded: Any, labels: np.ndarray,
                 word_starts: list[list[tuple[int, int]]], tokenizer: Any):
        self.sentences = sentences
        self.word_starts = word_starts       # per sentence: (position, word index) of each first sub-token
        super().__init__(int64_arrays(encoded), {"labels": labels}, tokenizer)


def encode_sentences(sentences: list[token_files.Sentence], tokenizer: Any, max_len: int) -> tuple[TaggedSentences, int]:
    """Tokenize words and align tags to first sub-tokens; also return how many sentences lost words."""
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True, padding="max_length",
                        truncation=True, max_length=max_len, return_tensors="np")
    labels = np.full((len(sentences), max_len), IGNORE, dtype=np.int64)
    word_starts: list[list[tuple[int, int]]] = []
    cut = 0
    for i, sentence in enumerate(sentences):
        starts, previous = [], None
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and word != previous:
                labels[i, position] = sentence.tags[word]
                starts.append((position, word))
            previous = word
        word_starts.append(starts)
        cut += len(starts) < len(sentence.tokens)
    return TaggedSentences(sentences, encoded, labels, word_starts, tokenizer), cut


@dataclass(frozen=True)
class TokenOptions(TransformerOptions):
    tokens_column: str | None = option(None, "Token classification: field with the word list (default: "
                                       "auto-detected, tokens or words).")
    tags_column: str | None = option(None, "Token classification: field with the tag list (default: "
                                     "auto-detected, ner_tags, tags or labels).")


class TokenClassification(TransformerTask):
    task = "token-classification"
    options = TokenOptions
    default_epochs = 6
    main_metric = "f1"  # seqeval entity F1
    eval_metrics = {"f1": "f1", "precision": "precision", "recall": "recall", "accuracy": "token_accuracy"}
    default_batch_size = 32
    default_lr = 1e-4
    trim_targets = ("labels",)

    # ---- data --------------------------------------------------------------------------------

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        splits, source = self._splits(cfg)
        tokenizer = load_tokenizer(cfg.model, cfg.use_case_options.max_seq_length)
        train, train_cut = encode_sentences(splits.train, tokenizer, cfg.use_case_options.max_seq_length)
        val, val_cut = encode_sentences(splits.val, tokenizer, cfg.use_case_options.max_seq_length)
        cut = (train_cut + val_cut) / (len(train) + len(val))
        warnings = list(splits.notes)
        if cut > TRUNCATION_WARNING:
            warnings.append(f"{cut:.0%} of the sentences are longer than --max-seq-length "
                            f"{cfg.use_case_options.max_seq_length} sub-word tokens and lost their last words; "
                            "consider a larger value")
        entities = Counter(splits.label_names[t][2:] for s in splits.train for t in s.tags
                           if splits.label_names[t].startswith("B-"))
        return DataBundle(
            train=train,
            val=val,
            label_names=splits.label_names,
            fingerprint=fingerprint_records([splits.label_names, cfg.use_case_options.max_seq_length],
                                            ([s.tokens, s.tags] for s in splits.train),
                                            ([s.tokens, s.tags] for s in splits.val)),
            source=source,
            info={
                "data.layout": splits.layout,
                "data.num_tags": len(splits.label_names),
                "data.train_sentences": len(train),
                "data.val_sentences": len(val),
                "data.tokens_column": splits.tokens_column,
                "data.tags_column": splits.tags_column,
                "data.label_mapping": json.dumps({n: i for i, n in enumerate(splits.label_names)}),
                "data.train_entity_counts": json.dumps(dict(sorted(entities.items()))),
                "data.truncated_fraction": round(cut, 4),
            },
            preprocessing={
                "tokenizer": "tokenizer/", "max_seq_length": cfg.use_case_options.max_seq_length, "padding": "max_length",
                "truncation": True, "is_split_into_words": True, "label_alignment": "first sub-token of each word",
            },
            warnings=warnings,
        )

    def _splits(self, cfg: ExperimentConfig) -> tuple[token_files.TokenSplits, str]:
        columns = {"tokens_column": cfg.use_case_options.tokens_column, "tags_column": cfg.use_case_options.tags_column}
        spec = cfg.data
        if is_embedded(spec):
            from sparsify_mlflow.data.embedded_entities import DEFAULT_ROWS, MAX_ROWS, MIN_ROWS, ner_dataset

            rows = embedded_rows(spec, MIN_ROWS, MAX_ROWS, DEFAULT_ROWS)
            return (token_files.load_token_splits(ner_dataset(rows), seed=cfg.seed, **columns),
                    f"embedded synthetic NER ({rows} sentences)")
        if text_hub.looks_like_hub_name(spec) and Path(spec).suffix.lower() not in token_files.SUFFIXES:
            hub = text_hub.load_hub_rows(spec, hint="--data train.jsonl (tokens + ner_tags), a CoNLL file, "
                                                   "or a folder with train and validation files")
            train, columns_ = token_files.sentences_from_rows(hub.train, **columns)
            val = token_files.sentences_from_rows(hub.val, *columns_)[0] if hub.val else None
            splits = token_files.build_token_splits(
                train, val, columns_, seed=cfg.seed, files=[], label_names=token_files.hub_tag_names(
                    hub.features, columns_[1]),
                layout=f"hub dataset {hub.label}: train + {hub.eval_split or 'split by seed'}")
            return splits, f"hf:{spec}"
        return token_files.load_token_splits(Path(spec), seed=cfg.seed, **columns), str(Path(spec).expanduser())

    # ---- model -------------------------------------------------------------------------------

    def load_model(self, name: str, label_names: list[str], pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return load_token_classifier(name, label_names, pretrained)

    def loss(self, outputs: tuple[torch.Tensor, ...], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = outputs[0]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets["labels"].reshape(-1),
                                           ignore_index=IGNORE)

    # ---- evaluation --------------------------------------------------------------------------

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        predicted = np.concatenate([predict(inputs)[0].argmax(axis=-1) for inputs, _ in
                                    self.eval_batches(data, batch_size)])
        names = data.label_names
        gold, pred = [], []
        for sentence, starts, ids in zip(data.val.sentences, data.val.word_starts, predicted):
            tags = ["O"] * len(sentence.tokens)  # words cut by truncation are predicted "outside"
            for position, word in starts:
                tags[word] = names[ids[position]]
            gold.append([names[t] for t in sentence.tags])
            pred.append(tags)
        return entity_metrics(gold, pred)

    # ---- deployment --------------------------------------------------------------------------

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        return {
            "task": self.task,
            "labels": data.label_names,
            "label2id": {n: i for i, n in enumerate(data.label_names)},
            "id2label": {str(i): n for i, n in enumerate(data.label_names)},
            "max_seq_length": data.preprocessing["max_seq_length"],
            "input_names": self.input_names(data),
            "inputs": self.input_specs(data),
            "outputs": {"logits": "float32 [batch, max_seq_length, num_labels]; a word's tag is the argmax at "
                                  "its first sub-token (tokenizer(words, is_split_into_words=True).word_ids())"},
            "preprocessing": data.preprocessing,
        }

    def serving_model(self, data: DataBundle, folder: Path) -> dict[str, Any]:
        """What to register: a pyfunc that splits raw text into words, tags them and joins the entities
        (see token_pyfunc.py)."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, DataType, Schema
        from mlflow.types.schema import Array

        example = pd.DataFrame({"text": [" ".join(data.val.sentences[0].tokens)]})
        inputs = Schema([ColSpec("string", "text", required=False),  # or words already split:
                         ColSpec(Array(DataType.string), "tokens", required=False)])
        return self.raw_text_pyfunc(folder, PYFUNC_FILE, example, ModelSignature(inputs))


class NamedEntityRecognition(TokenClassification):
    task = "named-entity-recognition"
