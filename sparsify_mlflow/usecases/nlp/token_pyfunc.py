"""MLflow pyfunc for a registered token classifier (NER): raw text in, words, tags and entities out
(MLflow "models from code").

MLflow copies this file into the registered model next to its artifacts (model.onnx, the tokenizer
folder, config.json with the tags) and serving_engine.py, so the model loads without sparsify_mlflow
installed: it needs numpy, pandas, transformers (for the tokenizer) and onnxruntime (or deepsparse,
openvino).

    model = mlflow.pyfunc.load_model("models:/<name>@candidate")
    model.predict({"text": ["Maria Lopez moved to Lisbon"]})      # words: the text split on spaces
    model.predict(pd.DataFrame({"tokens": [["Maria", "Lopez", "moved", "to", "Lisbon"]]}))

One row per text: `words`, `tags` (one per word, read at its first sub-token as in training and
evaluation; words cut by --max-seq-length are "O"), `scores` (softmax probability of each tag) and
`entities` (B-/I- spans joined: [{"text", "type", "start", "end"}], word indices, end exclusive).
This file must not import sparsify_mlflow.
"""
from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class TokenTagger(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from serving_engine import ServingEngine, engine_name  # a code path of the logged model
        from transformers import AutoTokenizer

        with open(context.artifacts["config"], encoding="utf-8") as fh:
            config = json.load(fh)
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        self.labels = list(config["labels"])
        self.max_length = int(config["max_seq_length"])
        self.input_names = list(config["input_names"])
        self.engine = ServingEngine(engine_name(context), context.artifacts, self.input_names)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate by them
        from serving_engine import softmax

        sentences = _sentences(model_input)
        encoded = self.tokenizer(sentences, is_split_into_words=True, padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="np")
        logits = self.engine.run([np.ascontiguousarray(encoded[n], dtype=np.int64) for n in self.input_names])
        probs = softmax(logits)
        rows = []
        for i, words in enumerate(sentences):
            tags, scores, previous = ["O"] * len(words), [0.0] * len(words), None
            for position, word in enumerate(encoded.word_ids(i)):
                if word is not None and word != previous:  # the word's first sub-token carries its tag
                    best = int(probs[i, position].argmax())
                    tags[word], scores[word] = self.labels[best], float(probs[i, position, best])
                previous = word
            rows.append({"words": words, "tags": tags, "scores": scores, "entities": entities(words, tags)})
        return pd.DataFrame(rows)


def entities(words: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """BIO tags -> spans: a B- tag opens one, I- of the same type continues it (a stray I- opens one)."""
    spans: list[dict[str, Any]] = []
    for i, tag in enumerate(tags):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if kind is None:
            continue
        if tag.startswith("I-") and spans and spans[-1]["type"] == kind and spans[-1]["end"] == i:
            spans[-1]["end"] = i + 1
            spans[-1]["text"] = " ".join(words[spans[-1]["start"]:i + 1])
        else:
            spans.append({"text": words[i], "type": kind, "start": i, "end": i + 1})
    return spans


def _sentences(model_input: Any) -> list[list[str]]:
    """Word lists from a DataFrame / dict with `text` (split on whitespace) or `tokens` (word lists), or a
    string. MLflow may hand `{"text": ["a", "b"]}` over as one row holding the list: such cells are flattened."""
    if isinstance(model_input, str):
        return [model_input.split()]
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: v if isinstance(v, (list, tuple, np.ndarray)) else [v]
                                    for k, v in model_input.items()})
    if "tokens" in model_input.columns:
        out: list[list[str]] = []
        for cell in model_input["tokens"]:
            nested = len(cell) > 0 and isinstance(cell[0], (list, tuple, np.ndarray))
            out.extend([[str(w) for w in words] for words in cell] if nested else [[str(w) for w in cell]])
        return out
    column = "text" if "text" in model_input.columns else model_input.columns[0]
    texts: list[str] = []
    for cell in model_input[column]:
        texts.extend(map(str, cell)) if isinstance(cell, (list, tuple, np.ndarray)) else texts.append(str(cell))
    return [text.split() for text in texts]


mlflow.models.set_model(TokenTagger())
