"""NER and QA through the CLI and `mlflow run`: bad data fails the run and registers nothing; tiny
generated data runs the whole flow (dense + 70% sparse INT8, ONNX checked on DeepSparse,
benchmarks, registry) with the packaged MiniLM as the default model and, for the detailed checks,
a 2-layer BERT, and leaves the expected MLflow contents."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from helpers import REPO
from helpers.data import write_conll, write_flat_qa
from helpers.mlflow_checks import assert_failed_cleanly, family, registered_versions, run_project
from sparsify_mlflow.cli import main
from sparsify_mlflow.data.embedded_entities import generate_ner

TINY = ["--epochs", "2", "--batch-size", "16", "--benchmark-batch-size", "4", "--benchmark-iterations", "3",
        "--benchmark-rounds", "3", "--no-int8-reference"]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    errors = [line for line in err if line.startswith("error:")]
    return code, errors[-1] if errors else ""


# ---- bad input through the CLI ------------------------------------------------------------------


def test_token_tag_mismatch_fails_the_run_and_registers_nothing(capsys, store: str, tmp_path: Path) -> None:
    path = tmp_path / "ner.jsonl"
    rows = generate_ner(20)
    rows[6]["ner_tags"] = rows[6]["ner_tags"][:-1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, err = run_cli(capsys, "training-aware", "--use-case", "ner", "--data", str(path), "--tracking-uri", store,
                        "--working-dir", str(tmp_path), *TINY)
    assert code == 2 and err.startswith(f"error: {path}:7: ") and "tokens in 'tokens' but" in err
    assert_failed_cleanly(store, "every token needs exactly one tag")


def test_answer_off_its_context_fails_the_run_and_registers_nothing(capsys, store: str, tmp_path: Path) -> None:
    path = write_flat_qa(tmp_path / "qa.jsonl", 20)
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    record["answers"]["answer_start"] = [record["answers"]["answer_start"][0] + 1]
    lines[2] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    code, err = run_cli(capsys, "training-aware", "--use-case", "qa", "--data", str(path), "--tracking-uri", store,
                        "--working-dir", str(tmp_path), *TINY)
    assert code == 2 and err.startswith(f"error: {path}:3 (question id {record['id']!r}): answer ")
    assert "does not match the context" in err
    assert_failed_cleanly(store, "does not match the context")


# ---- end to end ---------------------------------------------------------------------------------


def assert_common(store: str, summary: dict, use_case: str, arch: str, metric_names: list[str],
                  onnx_tolerance: float = 0.1) -> tuple:
    """``onnx_tolerance``: how far the ONNX file's F1 on DeepSparse may sit from PyTorch's, since INT8
    kernels round differently from fake quantization and flip the odd near-tied prediction."""
    parent, children = family(store, summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and set(children) == {"dense", "sparse"}
    assert all(c.info.status == "FINISHED" for c in children.values())
    params, metrics = parent.data.params, parent.data.metrics
    assert params["config.use_case"] == use_case and params["model.arch"] == arch
    assert params["recipe.distillation"] == "True"
    for name in metric_names:
        for side in ("dense.", "sparse.", "sparse.onnx."):
            assert side + name in metrics, side + name
    for name in ("main_drop", "speedup.deepsparse.bs1", "sparse.deepsparse.bs4.items_per_second",
                 "dense.onnxruntime.bs1.latency_ms_median"):
        assert name in metrics, name
    assert metrics["sparse.deepsparse.bs1.fraction_of_supported_ops"] == 1.0
    assert abs(metrics["sparse.sparsity.pruned_layers"] - 0.7) <= 0.01
    assert metrics["sparse.size.onnx_mb"] < metrics["dense.size.onnx_mb"] / 3  # INT8 weights
    assert abs(metrics["sparse.onnx.f1"] - metrics["sparse.f1"]) <= onnx_tolerance  # the ONNX file agrees
    client = MlflowClient(tracking_uri=store)
    deployment = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "experiment/deployment")}
    assert {"model.onnx", "recipe.yaml", "config.json", "tokenizer"} <= deployment
    config = json.loads(Path(client.download_artifacts(parent.info.run_id,
                                                       "experiment/deployment/config.json")).read_text())
    version = client.get_model_version_by_alias(summary["registered_model"]["name"], "candidate")
    assert version.tags["main_metric"] == "f1" and {"f1", "sparsity", "speedup"} <= set(version.tags)
    return parent, children, config, deployment


def assert_answers_raw_questions(store: str, name: str, rows: list[dict]) -> None:
    """The registered QA model takes question + context as text and answers with a span of the context: the
    windows (--max-seq-length 64, --doc-stride 16 from its config) and answers its own file gives on ONNX
    Runtime, decoded as evaluation decodes; on OpenVINO (the QDQ twin) too."""
    import mlflow
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from sparsify_mlflow.usecases.nlp.qa_spans import best_spans, encode_windows

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    assert [i.name for i in model.metadata.get_input_schema().inputs] == ["question", "context"]
    questions, contexts = [r["question"] for r in rows], [r["context"] for r in rows]
    answered = model.predict(pd.DataFrame({"question": questions, "context": contexts}))
    assert list(answered.columns) == ["answer", "score", "start", "end"] and len(answered) == len(rows)
    for row, context in zip(answered.itertuples(), contexts):
        assert row.answer == (context[row.start:row.end] if row.start >= 0 else "") and 0.0 <= row.score <= 1.0
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@candidate")) / "artifacts"
    tokenizer = AutoTokenizer.from_pretrained(str(files / "tokenizer"))
    encoded, offsets, owner = encode_windows(tokenizer, questions, contexts, 64, 16)
    assert len(owner) > len(rows), "some contexts need several windows"
    session = ort.InferenceSession(str(files / "model.onnx"), providers=["CPUExecutionProvider"])
    start, end = session.run(None, {n: encoded[n].astype(np.int64) for n in ("input_ids", "attention_mask",
                                                                             "token_type_ids")})[:2]
    expected = best_spans(start, end, offsets, owner, contexts, max_answer_length=8)
    assert answered["answer"].tolist() == [s.text for s in expected]
    assert np.allclose(answered["score"], [s.score for s in expected], atol=1e-5)
    assert model.predict({"question": questions[0], "context": contexts[0]})["answer"][0] == expected[0].text
    on_openvino = mlflow.pyfunc.load_model(f"models:/{name}@candidate", model_config={"engine": "openvino"})
    assert on_openvino.unwrap_python_model().engine.name == "openvino"
    assert len(on_openvino.predict({"question": questions, "context": contexts})) == len(rows)


def assert_tags_raw_text(store: str, name: str, labels: list[str], validation: list[dict]) -> None:
    """The registered NER model takes raw text (or word lists) and answers per word, with the entities its
    tags spell, on ONNX Runtime and on OpenVINO (the QDQ twin); on the validation sentences its tags are
    the registered model.onnx's logits read at each word's first sub-token, decoded here independently."""
    import mlflow
    import onnxruntime as ort
    import pandas as pd
    from transformers import AutoTokenizer

    mlflow.set_tracking_uri(store)
    texts = ["Maria Lopez moved to Lisbon last spring", "the board of Acme Corp met in Oslo"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    out = model.predict({"text": texts})
    assert list(out.columns) == ["words", "tags", "scores", "entities"] and len(out) == 2
    for text, row in zip(texts, out.itertuples()):
        assert list(row.words) == text.split() and len(row.tags) == len(row.words) and set(row.tags) <= set(labels)
        assert all(0 < s <= 1 for s in row.scores)
        for entity in row.entities:  # each span is what its words' tags say
            tags = row.tags[entity["start"]:entity["end"]]
            assert tags[0][2:] == entity["type"] and all(t[2:] == entity["type"] for t in tags)
            assert entity["text"] == " ".join(row.words[entity["start"]:entity["end"]])
        assert sum(e["end"] - e["start"] for e in row.entities) == sum(t != "O" for t in row.tags)
    words = model.predict(pd.DataFrame({"tokens": [t.split() for t in texts]}))  # words already split
    assert [list(t) for t in words["tags"]] == [list(t) for t in out["tags"]]
    sentences = [r["tokens"] for r in validation]
    tagged = model.predict(pd.DataFrame({"tokens": sentences}))
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@candidate"))
    config = json.loads(next(files.rglob("config.json")).read_text())
    tokenizer = AutoTokenizer.from_pretrained(next(files.rglob("tokenizer_config.json")).parent)
    encoded = tokenizer(sentences, is_split_into_words=True, padding="max_length", truncation=True,
                        max_length=config["max_seq_length"], return_tensors="np")
    session = ort.InferenceSession(str(next(files.rglob("model.onnx"))))
    logits = session.run(None, {n: encoded[n].astype(np.int64) for n in config["input_names"]})[0]
    for i, words in enumerate(sentences):
        first = {}
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and word not in first:
                first[word] = position
        expected = [labels[int(logits[i, first[w]].argmax())] if w in first else "O" for w in range(len(words))]
        assert list(tagged["tags"][i]) == expected, (words, list(tagged["tags"][i]), expected)
    on_openvino = mlflow.pyfunc.load_model(f"models:/{name}@candidate", model_config={"engine": "openvino"})
    assert on_openvino.unwrap_python_model().engine.name == "openvino"
    assert [len(t) for t in on_openvino.predict({"text": texts})["tags"]] == [len(t.split()) for t in texts]


@pytest.mark.e2e
def test_ner_defaults_to_the_packaged_minilm_end_to_end(store: str, tmp_path: Path) -> None:
    """No --model and no hub: NER fine-tunes, prunes, quantizes, exports, benchmarks and registers the
    packaged MiniLM (one short epoch on a little generated data, in batches of 4 so that the QAT phase, its
    last third, trains; the tests below check the rest of the flow with a 2-layer BERT, several times faster)."""
    data = write_conll(tmp_path / "conll", 40)
    summary_path = tmp_path / "summary.json"
    assert main(["training-aware", "--use-case", "ner", "--data", str(data), "--max-seq-length", "32",
                 "--epochs", "1", "--batch-size", "4", "--benchmark-batch-size", "2", "--benchmark-iterations", "3",
                 "--benchmark-rounds", "3", "--no-int8-reference", "--tracking-uri", store,
                 "--working-dir", str(tmp_path), "--summary-json", str(summary_path),
                 "--registered-model-name", "minilm-ner"]) == 0
    summary = json.loads(summary_path.read_text())
    parent, children = family(store, summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and set(children) == {"dense", "sparse"}
    params, metrics = parent.data.params, parent.data.metrics
    assert params["model.source"].startswith("packaged MiniLM") and params["model.arch"] == "BertForTokenClassification"
    assert params["model.pretrained"] == "True"
    assert abs(metrics["sparse.sparsity.pruned_layers"] - 0.7) <= 0.01
    assert metrics["sparse.deepsparse.bs1.fraction_of_supported_ops"] == 1.0
    assert "sparse.onnx.f1" in metrics and "speedup.deepsparse.bs1" in metrics
    assert summary["quantized"] is True, "an INT8 file: the QAT phase saw optimizer steps"
    assert [str(v.version) for v in registered_versions(store)] == ["1"]


@pytest.mark.e2e
def test_qa_defaults_to_the_packaged_minilm_offline_qat_ready_and_exportable(tmp_path: Path) -> None:
    """QA's default model is the same packaged MiniLM with a start/end head: loaded offline, QAT-ready, and
    through the project's exporter to the two logits the QA flow (tested above with a 2-layer BERT) reads."""
    import os

    import onnxruntime as ort
    import torch

    from sparsify_mlflow import usecases
    from sparsify_mlflow.export import export_onnx
    from sparsify_mlflow.usecases.nlp.transformers_models import load_tokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    case = usecases.resolve("qa")
    model, facts = case.load_model(case.default_model, [], True)
    assert facts["source"].startswith("packaged MiniLM") and facts["arch"] == "BertForQuestionAnswering"
    assert any(type(m).__name__ == "QATMatMul" for m in model.modules())  # sparseml's BERT modification
    assert case.pruning_scope(model).prune, "the encoder's linears are pruned"
    batch = load_tokenizer(case.default_model, 64)(["who?"], ["Ada wrote it."], padding="max_length",
                                                   max_length=64, return_tensors="pt")
    inputs = tuple(batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        start, end = model.eval()(*inputs)[:2]
    exported = export_onnx(model, inputs, tmp_path, input_names=["input_ids", "attention_mask", "token_type_ids"],
                           output_names=list(case.output_names))
    session = ort.InferenceSession(str(exported.path))
    onnx_start, onnx_end = session.run(None, {k: v.numpy() for k, v in zip(
        ["input_ids", "attention_mask", "token_type_ids"], inputs)})
    np.testing.assert_allclose(onnx_start, start.numpy(), atol=1e-4)
    np.testing.assert_allclose(onnx_end, end.numpy(), atol=1e-4)


@pytest.mark.e2e
def test_ner_end_to_end_through_the_cli_on_conll(store: str, tmp_path: Path, tiny_bert: Path) -> None:
    data = write_conll(tmp_path / "conll")
    summary_path = tmp_path / "summary.json"
    assert main(["training-aware", "--use-case", "ner", "--data", str(data), "--model", str(tiny_bert),
                 "--max-seq-length", "32",
                 "--tracking-uri", store, "--working-dir", str(tmp_path), "--summary-json", str(summary_path),
                 "--registered-model-name", "tiny-ner", *TINY]) == 0
    summary = json.loads(summary_path.read_text())
    parent, children, config, deployment = assert_common(
        store, summary, "nlp-named_entity_recognition", "BertForTokenClassification",
        ["f1", "precision", "recall", "token_accuracy", "f1.PER", "f1.LOC", "f1.ORG"])
    labels = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert json.loads(parent.data.params["data.label_mapping"]) == {n: i for i, n in enumerate(labels)}
    assert parent.data.params["data.layout"] == "train.conll + validation.conll"
    assert config["labels"] == labels and config["task"] == "named-entity-recognition"
    assert "labels.json" in deployment
    client = MlflowClient(tracking_uri=store)
    table = json.loads(Path(client.download_artifacts(children["sparse"].info.run_id, "per_entity.json")).read_text())
    assert {row[0] for row in table["data"]} >= {"PER", "LOC", "ORG"}
    assert_tags_raw_text(store, "tiny-ner", labels, generate_ner(100)[80:])  # write_conll's validation.conll


@pytest.mark.e2e
def test_qa_end_to_end_through_mlflow_run_with_doc_stride(store: str, tmp_path: Path, tiny_bert: Path) -> None:
    data = write_flat_qa(tmp_path / "qa.jsonl", 60)
    summary_path = tmp_path / "summary.json"
    params = {"use_case": "qa", "data": str(data), "model": str(tiny_bert), "epochs": "2", "batch_size": "16",
              "max_seq_length": "64", "doc_stride": "16", "max_answer_length": "8", "benchmark_batch_size": "4",
              "benchmark_iterations": "3",
              "benchmark_rounds": "3",
              "int8_reference": "false", "registered_model_name": "tiny-qa", "working_dir": str(tmp_path),
              "summary_json": str(summary_path)}
    proc = run_project(REPO, params, store, tmp_path, "qa-mlflow-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    # 12 validation questions on a barely trained model: CI saw one near-tied answer flip (F1 0.11 vs 0.0),
    # so allow two questions' worth of disagreement. (On models this weak, NER's included, the check can
    # only show that the ONNX evaluation runs and lands near PyTorch's.)
    parent, children, config, deployment = assert_common(
        store, summary, "nlp-question_answering", "BertForQuestionAnswering", ["f1", "exact_match"],
        onnx_tolerance=2 / 12)
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main"
    info = parent.data.params
    assert info["data.doc_stride"] == "16" and info["data.max_answer_length"] == "8"
    assert info["data.format"].startswith("flat records") and int(info["data.questions_with_several_windows"]) > 0
    assert int(info["data.val_features"]) > int(info["data.val_questions"])
    assert config["doc_stride"] == 16 and config["max_answer_length"] == 8 and "labels.json" not in deployment
    client = MlflowClient(tracking_uri=store)
    table = json.loads(Path(client.download_artifacts(children["sparse"].info.run_id, "predictions.json")).read_text())
    assert table["columns"] == ["id", "question", "prediction", "answers"] and len(table["data"]) == 12
    assert [str(v.version) for v in registered_versions(store)] == ["1"]
    longest = sorted((json.loads(line) for line in data.read_text().splitlines()), key=lambda r: -len(r["context"]))
    assert_answers_raw_questions(store, "tiny-qa", longest[:6])
