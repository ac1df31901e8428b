"""nlp-question_answering: extractive QA (SQuAD-style data, a QA transformer, SQuAD EM/F1).

Data are SQuAD JSON or flat JSONL/JSON/CSV records, a Hugging Face dataset name (`squad`), or (the
default) the embedded synthetic people/places set. Each question + context is tokenized to
`max_seq_length`; a context that does not fit is cut into windows overlapping by `doc_stride`
tokens, each window one row (feature) of the model. Training rows point at the answer's first
and last token (at [CLS] when the answer is not inside that window). Evaluation turns the start
and end logits of all windows into one answer per question (qa_answers.best_answers) and scores
them with SQuAD exact match and F1; the exported ONNX model goes through the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify_mlflow.config import ExperimentConfig
from sparsify_mlflow.data import qa_files, text_hub
from sparsify_mlflow.data.embedded import embedded_rows, is_embedded
from sparsify_mlflow.data.fingerprint import fingerprint_records
from sparsify_mlflow.data.splits import split_by_seed
from sparsify_mlflow.errors import ConfigError, DataError
from sparsify_mlflow.options import option, positive_int
from sparsify_mlflow.usecases.base import DataBundle, Metrics, Predictor
from sparsify_mlflow.usecases.nlp.qa_answers import best_answers, squad_metrics
from sparsify_mlflow.usecases.nlp.qa_spans import N_BEST, NOT_CONTEXT, encode_windows
from sparsify_mlflow.usecases.nlp.transformer_task import (
    EncodedDataset,
    TransformerOptions,
    TransformerTask,
    int64_arrays,
)
from sparsify_mlflow.usecases.nlp.transformers_models import load_question_answerer, load_tokenizer

PREDICTIONS_LOGGED = 100  # validation questions whose predicted answers are logged as a table
PYFUNC_FILE = Path(__file__).with_name("qa_pyfunc.py")


class QAFeatures(EncodedDataset):
    """Windows of question + context; training targets are the answer's start and end token."""

    def __init__(self, questions: list[qa_files.Question], encoded: Any, starts: np.ndarray, ends: np.ndarray,
                 offsets: np.ndarray, feature_question: np.ndarray, tokenizer: Any):
        self.questions = questions
        self.offsets = offsets                    # [features, seq, 2] character spans, NOT_CONTEXT outside
        self.feature_question = feature_question  # [features] index into `questions`
        super().__init__(int64_arrays(encoded), {"start_positions": starts, "end_positions": ends}, tokenizer)


def default_doc_stride(max_seq_length: int) -> int:
    return max(1, max_seq_length // 4)


def encode_questions(questions: list[qa_files.Question], tokenizer: Any, max_len: int, stride: int) -> QAFeatures:
    """Question + context windows with offsets into the context and the answer's token span."""
    _check_room(questions, tokenizer, max_len, stride)
    encoded, offsets, feature_question = encode_windows(tokenizer, [q.question for q in questions],
                                                        [q.context for q in questions], max_len, stride)
    n = len(encoded["input_ids"])
    starts, ends = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)  # 0: [CLS], "not in this window"
    for f in range(n):
        question = questions[feature_question[f]]
        first, last = question.starts[0], question.starts[0] + len(question.answers[0])
        positions = np.flatnonzero(offsets[f, :, 0] != NOT_CONTEXT)
        if offsets[f, positions[0], 0] <= first and offsets[f, positions[-1], 1] >= last:
            starts[f] = positions[offsets[f, positions, 0] <= first][-1]
            ends[f] = positions[offsets[f, positions, 1] >= last][0]
    return QAFeatures(questions, encoded, starts, ends, offsets, feature_question, tokenizer)


def _check_room(questions: list[qa_files.Question], tokenizer: Any, max_len: int, stride: int) -> None:
    """The tokenizer cannot window a context when the question leaves no more than `stride` tokens."""
    lengths = tokenizer([q.question.lstrip() for q in questions], add_special_tokens=False)["input_ids"]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    for question, ids in zip(questions, lengths):
        if max_len - len(ids) - special <= stride:
            raise DataError(f"{question.where}: the question takes {len(ids)} tokens, which leaves no room for "
                            f"the context with --max-seq-length {max_len} and --doc-stride {stride}; "
                            "raise --max-seq-length or lower --doc-stride")


@dataclass(frozen=True)
class QaOptions(TransformerOptions):
    doc_stride: int | None = option(None, "Question answering: tokens shared by consecutive windows of a long "
                                    "context (default: max-seq-length / 4).", check=positive_int)
    max_answer_length: int = option(30, "Question answering: longest answer in tokens.", check=positive_int)


class QuestionAnswering(TransformerTask):
    task = "question-answering"
    options = QaOptions
    default_epochs = 6
    main_metric = "f1"  # SQuAD token F1
    eval_metrics = {"f1": "f1", "exact_match": "exact_match"}
    default_batch_size = 32
    default_lr = 1e-4
    head = "qa_outputs"
    output_names = ("start_logits", "end_logits")

    def check_options(self, cfg: ExperimentConfig) -> None:
        opts = cfg.use_case_options
        if opts.doc_stride is not None and opts.doc_stride >= opts.max_seq_length:
            raise ConfigError(f"--doc-stride {opts.doc_stride} must be smaller than --max-seq-length "
                              f"{opts.max_seq_length}")

    # ---- data --------------------------------------------------------------------------------

    def load_data(self, cfg: ExperimentConfig) -> DataBundle:
        splits, source = self._splits(cfg)
        stride = cfg.use_case_options.doc_stride or default_doc_stride(cfg.use_case_options.max_seq_length)
        tokenizer = load_tokenizer(cfg.model, cfg.use_case_options.max_seq_length)
        train = encode_questions(splits.train, tokenizer, cfg.use_case_options.max_seq_length, stride)
        val = encode_questions(splits.val, tokenizer, cfg.use_case_options.max_seq_length, stride)
        windowed = sum(int((np.bincount(part.feature_question) > 1).sum()) for part in (train, val))
        outside = float(np.mean(train.targets["start_positions"] == 0))
        warnings = list(splits.notes)
        if outside > 0.5:
            warnings.append(f"{outside:.0%} of the training windows do not contain their answer (contexts much "
                            f"longer than --max-seq-length {cfg.use_case_options.max_seq_length}); consider a larger value")
        return DataBundle(
            train=train,
            val=val,
            label_names=[],
            fingerprint=fingerprint_records([cfg.use_case_options.max_seq_length, stride],
                                            ([q.id, q.question, q.context, q.answers, q.starts] for q in splits.train),
                                            ([q.id, q.question, q.context, q.answers, q.starts] for q in splits.val)),
            source=source,
            info={
                "data.layout": splits.layout,
                "data.format": splits.format,
                "data.train_questions": len(splits.train),
                "data.val_questions": len(splits.val),
                "data.train_features": len(train),
                "data.val_features": len(val),
                "data.questions_with_several_windows": windowed,
                "data.train_windows_without_answer": round(outside, 4),
                "data.doc_stride": stride,
                "data.max_answer_length": cfg.use_case_options.max_answer_length,
            },
            preprocessing={
                "tokenizer": "tokenizer/", "max_seq_length": cfg.use_case_options.max_seq_length, "padding": "max_length",
                "truncation": "only_second", "doc_stride": stride, "return_overflowing_tokens": True,
                "return_offsets_mapping": True, "max_answer_length": cfg.use_case_options.max_answer_length,
                "n_best": N_BEST,
            },
            warnings=warnings,
        )

    def _splits(self, cfg: ExperimentConfig) -> tuple[qa_files.QASplits, str]:
        spec = cfg.data
        if is_embedded(spec):
            from sparsify_mlflow.data.embedded_entities import DEFAULT_ROWS, MAX_ROWS, MIN_ROWS, qa_dataset

            rows = embedded_rows(spec, MIN_ROWS, MAX_ROWS, DEFAULT_ROWS)
            return qa_files.load_qa_splits(qa_dataset(rows), seed=cfg.seed), f"embedded synthetic QA ({rows} questions)"
        if text_hub.looks_like_hub_name(spec):
            hub = text_hub.load_hub_rows(spec, hint="--data a SQuAD JSON file, a JSONL/CSV of id, question, "
                                                   "context, answers, or a folder with train and validation files")
            train, fmt = qa_files.questions_from_rows(hub.train)
            if hub.val is None:
                train, val = split_by_seed(train, cfg.seed, group=lambda q: q.context)
            else:
                val = qa_files.questions_from_rows(hub.val)[0]
            return (qa_files.QASplits(train, val, f"hub dataset {hub.label}: train + {hub.eval_split or 'split by seed'}",
                                      fmt, []), f"hf:{spec}")
        return qa_files.load_qa_splits(Path(spec), seed=cfg.seed), str(Path(spec).expanduser())

    # ---- model -------------------------------------------------------------------------------

    def load_model(self, name: str, label_names: list[str], pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
        return load_question_answerer(name, pretrained)  # no labels: the head scores start and end

    def loss(self, outputs: tuple[torch.Tensor, ...], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        start, end = outputs[0], outputs[1]
        return (nn.functional.cross_entropy(start, targets["start_positions"])
                + nn.functional.cross_entropy(end, targets["end_positions"])) / 2

    # ---- evaluation --------------------------------------------------------------------------

    def eval_targets(self, data: DataBundle) -> np.ndarray:
        return data.val.feature_question  # each window's question: answers are picked over all its windows

    def evaluate(self, predict: Predictor, data: DataBundle, batch_size: int) -> Metrics:
        outputs = [predict(inputs)[:2] for inputs, _ in self.eval_batches(data, batch_size)]
        val, settings = data.val, data.preprocessing
        answers = best_answers(np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs]),
                               val.offsets, val.feature_question, [q.context for q in val.questions],
                               n_best=settings["n_best"], max_answer_length=settings["max_answer_length"])
        metrics = squad_metrics(answers, [q.answers for q in val.questions], [q.id for q in val.questions])
        metrics.tables["predictions"] = [
            {"id": q.id, "question": q.question, "prediction": a, "answers": " | ".join(q.answers)}
            for q, a in zip(val.questions[:PREDICTIONS_LOGGED], answers)]
        return metrics

    # ---- deployment --------------------------------------------------------------------------

    def deployment_config(self, data: DataBundle) -> dict[str, Any]:
        settings = data.preprocessing
        return {
            "task": self.task,
            "max_seq_length": settings["max_seq_length"],
            "doc_stride": settings["doc_stride"],
            "max_answer_length": settings["max_answer_length"],
            "n_best": settings["n_best"],
            "input_names": self.input_names(data),
            "inputs": self.input_specs(data),
            "tokenize": "tokenizer(question, context, truncation='only_second', max_length=max_seq_length, "
                        "stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)",
            "outputs": {name: "float32 [batch, max_seq_length]; the answer is the context span between the best "
                              "start and end tokens (n_best, max_answer_length) mapped back by offset_mapping"
                        for name in self.output_names},
            "preprocessing": settings,
        }

    def serving_model(self, data: DataBundle, folder: Path) -> dict[str, Any]:
        """What to register: a pyfunc that windows question + context as training did, runs model.onnx and
        decodes the answer span with evaluation's code (see qa_pyfunc.py)."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        from sparsify_mlflow.usecases.nlp import qa_spans

        first = data.val.questions[0]
        return self.raw_text_pyfunc(
            folder, PYFUNC_FILE, pd.DataFrame({"question": [first.question], "context": [first.context]}),
            ModelSignature(Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
                           Schema([ColSpec("string", "answer"), ColSpec("double", "score"), ColSpec("long", "start"),
                                   ColSpec("long", "end")])),
            code=(Path(qa_spans.__file__),))
