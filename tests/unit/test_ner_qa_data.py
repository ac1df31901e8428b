"""Token classification and question answering without training: readers, every bad input named by
file and record, first-sub-token label alignment, doc-stride windows, answer post-processing and
the metric code against hand-computed figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.data import expect_error, jsonl
from sparsify_mlflow import usecases
from sparsify_mlflow.data import embedded_entities
from sparsify_mlflow.data.qa_files import NESTED, Question, load_qa_splits
from sparsify_mlflow.data.token_files import Sentence, load_token_splits, tag_order
from sparsify_mlflow.errors import ConfigError, DataError
from sparsify_mlflow.usecases.nlp.qa_answers import best_answers, squad_metrics
from sparsify_mlflow.usecases.nlp.qa_spans import NOT_CONTEXT
from sparsify_mlflow.usecases.nlp.question_answering import encode_questions
from sparsify_mlflow.usecases.nlp.token_classification import IGNORE, encode_sentences
from sparsify_mlflow.usecases.nlp.token_metrics import entity_metrics
from sparsify_mlflow.usecases.nlp.transformers_models import load_tokenizer
from sparsify_mlflow.validation import build_config

SENTENCES = [
    {"tokens": ["Maria", "Garcia", "works", "for", "Globex", "in", "Lima", "."],
     "ner_tags": ["B-PER", "I-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]},
    {"tokens": ["It", "rained", "in", "New", "York", "."], "ner_tags": ["O", "O", "O", "B-LOC", "I-LOC", "O"]},
    {"tokens": ["Jordan", "visited", "Jordan", "."], "ner_tags": ["B-PER", "O", "B-LOC", "O"]},
    {"tokens": ["Siemens", "hired", "Lena", "Weber", "."], "ner_tags": ["B-ORG", "O", "B-PER", "I-PER", "O"]},
    {"tokens": ["Oslo", "is", "cold", "."], "ner_tags": ["B-LOC", "O", "O", "O"]},
]
CONTEXT = "Maria Garcia was born in Lima in 1970. Maria works as a chemist at Globex."
QUESTIONS = [
    {"id": "a", "question": "Where was Maria Garcia born?", "context": CONTEXT,
     "answers": {"text": ["Lima"], "answer_start": [CONTEXT.index("Lima")]}},
    {"id": "b", "question": "Where does Maria Garcia work?", "context": CONTEXT,
     "answers": {"text": ["Globex"], "answer_start": [CONTEXT.index("Globex")]}},
    {"id": "c", "question": "In which year was Maria Garcia born?", "context": CONTEXT.replace("Lima", "Oslo"),
     "answers": {"text": ["1970"], "answer_start": [CONTEXT.index("1970")]}},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm", 32)


# ---- registry and options ------------------------------------------------------------------------


def test_use_cases_and_aliases_resolve() -> None:
    assert {"nlp-token_classification", "nlp-named_entity_recognition", "nlp-question_answering"} <= set(usecases.names())
    for alias in ("token_classification", "token-classification"):
        assert usecases.resolve(alias).name == "nlp-token_classification"
    for alias in ("ner", "NER", "named_entity_recognition"):
        assert usecases.resolve(alias).name == "nlp-named_entity_recognition"
    for alias in ("qa", "question_answering", "question-answering"):
        assert usecases.resolve(alias).name == "nlp-question_answering"
    assert isinstance(usecases.resolve("ner"), type(usecases.resolve("token_classification")))
    assert usecases.resolve("qa").head == "qa_outputs" and usecases.resolve("ner").head == "classifier"


def test_qa_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--doc-stride 64 must be smaller than --max-seq-length 64"):
        build_config("qa", doc_stride=64, max_seq_length=64, working_dir=tmp_path)
    with pytest.raises(ConfigError, match="--max-answer-length must be a positive integer"):
        build_config("qa", max_answer_length=0, working_dir=tmp_path)
    cfg = build_config("qa", doc_stride=16, max_seq_length=64, working_dir=tmp_path)
    assert (cfg.use_case_options.doc_stride, cfg.use_case_options.max_answer_length) == (16, 30)


# ---- token classification data -----------------------------------------------------------------


def test_jsonl_string_tags_single_file_split(tmp_path: Path) -> None:
    splits = load_token_splits(jsonl(tmp_path / "ner.jsonl", SENTENCES * 4), seed=0)
    assert splits.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "B-PER", "I-PER"]  # as found in the data
    assert (len(splits.train), len(splits.val)) == (16, 4)
    assert (splits.tokens_column, splits.tags_column) == ("tokens", "ner_tags")
    first = next(s for s in splits.train + splits.val if s.tokens[0] == "Maria")
    assert [splits.label_names[t] for t in first.tags] == SENTENCES[0]["ner_tags"]
    assert first.where.startswith(f"{tmp_path / 'ner.jsonl'}:")


def test_integer_tags_take_names_from_labels_json(tmp_path: Path) -> None:
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    rows = [{"words": s["tokens"], "tags": [names.index(t) for t in s["ner_tags"]]} for s in SENTENCES]
    folder = tmp_path / "ids"
    folder.mkdir()
    jsonl(folder / "train.jsonl", rows * 2)
    jsonl(folder / "validation.jsonl", rows[:2])
    expect_error("tags are integer ids but their names are unknown; put labels.json", load_token_splits, folder, seed=0)
    (folder / "labels.json").write_text(json.dumps(names))
    splits = load_token_splits(folder, seed=0)
    assert splits.label_names == names and (splits.tokens_column, splits.tags_column) == ("words", "tags")
    assert splits.layout == "train.jsonl + validation.jsonl" and len(splits.val) == 2


def test_conll_files_skip_docstart_and_keep_sentence_lines(tmp_path: Path) -> None:
    folder = tmp_path / "conll"
    folder.mkdir()
    (folder / "train.conll").write_text("-DOCSTART- -X- O O\n\nMaria NNP B-PER\nGarcia NNP I-PER\nsings VBZ O\n\n"
                                        "\nOslo NNP B-LOC\nis VBZ O\n", encoding="utf-8")
    (folder / "validation.txt").write_text("Lena B-PER\nWeber I-PER\n", encoding="utf-8")
    splits = load_token_splits(folder, seed=0)
    assert [s.tokens for s in splits.train] == [["Maria", "Garcia", "sings"], ["Oslo", "is"]]
    assert [s.where for s in splits.train] == [f"{folder / 'train.conll'}:3", f"{folder / 'train.conll'}:8"]
    assert splits.label_names == ["O", "B-LOC", "B-PER", "I-PER"]
    assert [splits.label_names[t] for t in splits.val[0].tags] == ["B-PER", "I-PER"]


@pytest.mark.parametrize("row, message", [
    ({"tokens": ["Maria", "sings"], "ner_tags": ["B-PER"]},
     ":3: 2 tokens in 'tokens' but 1 tags in 'ner_tags'; every token needs exactly one tag"),
    ({"tokens": ["Maria"]}, ":3: no field 'ner_tags'"),
    ({"tokens": [], "ner_tags": []}, ":3: empty sentence"),
    ({"tokens": ["Maria", " "], "ner_tags": ["B-PER", "O"]}, ":3: token 2 (' ') is not a non-empty string"),
    ({"tokens": "Maria sings", "ner_tags": ["B-PER", "O"]}, ":3: field 'tokens' holds str, expected a list"),
    ({"tokens": ["Maria", "sings"], "ner_tags": [1, 0]}, "tags mix names and integer ids"),
])
def test_bad_token_records_name_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    path = jsonl(tmp_path / "bad.jsonl", SENTENCES[:2] + [row] + SENTENCES[2:])
    text = expect_error(message, load_token_splits, path, seed=0)
    assert str(path) in text


def test_unknown_validation_tag_and_bad_conll_line(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    jsonl(folder / "train.jsonl", SENTENCES)
    jsonl(folder / "validation.jsonl", [{"tokens": ["Paris"], "ner_tags": ["B-GPE"]}])
    expect_error(f"{folder / 'validation.jsonl'}:1: tag 'B-GPE' does not occur in the training split",
                 load_token_splits, folder, seed=0)
    conll = tmp_path / "x.conll"
    conll.write_text("Maria B-PER\nsings\n")
    expect_error(f"{conll}:2: expected a token and its tag separated by whitespace, got 'sings'",
                 load_token_splits, conll, seed=0)
    expect_error("none of the columns tokens, words found", load_token_splits,
                 jsonl(tmp_path / "c.jsonl", [{"text": "Maria sings", "ner_tags": []}]), seed=0)


def test_tag_order_puts_o_first_and_groups_types() -> None:
    assert tag_order({"I-PER", "O", "B-PER", "B-LOC", "MISC"}) == ["O", "B-LOC", "MISC", "B-PER", "I-PER"]


def test_first_sub_token_carries_the_word_tag(tokenizer) -> None:
    sentence = Sentence(["Kuala", "Lumpur", "unbelievably", "rocks"], [1, 2, 0, 0], "x:1")
    data, cut = encode_sentences([sentence], tokenizer, 32)
    ids = data.arrays["input_ids"][0]
    labels = data.targets["labels"][0]
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert pieces[:7] == ["[CLS]", "kuala", "lumpur", "un", "##bel", "##ie", "##va"]
    assert labels[:9].tolist() == [IGNORE, 1, 2, 0, IGNORE, IGNORE, IGNORE, IGNORE, 0]
    assert pieces[8] == "rocks" and (labels[9:] == IGNORE).all() and cut == 0
    assert data.word_starts[0] == [(1, 0), (2, 1), (3, 2), (8, 3)]
    short, cut = encode_sentences([sentence], load_tokenizer("minilm", 6), 6)
    assert cut == 1 and short.word_starts[0] == [(1, 0), (2, 1), (3, 2)]  # "rocks" fell off the end


# ---- metrics (hand-computed) ---------------------------------------------------------------------


def test_seqeval_entity_f1_and_token_accuracy_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O"], ["B-ORG", "O", "O", "B-PER"]]
    # gold entities: PER(0-1), LOC(3), ORG(0-1), PER(3) = 4; predicted: PER(0-1), ORG(3), ORG(0), PER(3) = 4
    # exact matches: PER(0-1), PER(3) -> precision 2/4, recall 2/4, F1 0.5
    metrics = entity_metrics(gold, pred)
    assert metrics.main_name == "f1" and metrics.main == pytest.approx(0.5)
    assert metrics.values["precision"] == pytest.approx(0.5) and metrics.values["recall"] == pytest.approx(0.5)
    assert metrics.values["token_accuracy"] == pytest.approx(7 / 9)  # 2 of 9 words wrong
    assert metrics.values["f1.PER"] == pytest.approx(1.0)
    assert metrics.values["f1.LOC"] == 0.0 and metrics.values["f1.ORG"] == 0.0  # ORG: 0/2 predicted right
    rows = {r["entity"]: r for r in metrics.tables["per_entity"]}
    assert rows["PER"]["support"] == 2 and rows["ORG"]["precision"] == 0.0
    # IO tags (no prefixes) are read as I- tags: "PER PER" is one entity
    io = entity_metrics([["PER", "PER", "O", "LOC"]], [["PER", "PER", "O", "O"]])
    assert io.values["precision"] == 1.0 and io.values["recall"] == pytest.approx(0.5)
    assert io.main == pytest.approx(2 / 3)


def test_squad_exact_match_and_f1_by_hand() -> None:
    metrics = squad_metrics(
        ["the Denver Broncos", "Carolina", "in 1970", ""],
        [["Denver Broncos"], ["Carolina Panthers", "Panthers"], ["1970", "in the year 1970"], ["Lima"]],
        ["a", "b", "c", "d"])
    # a: article dropped -> exact (EM 1, F1 1); b: vs "Carolina Panthers" P 1 R 1/2 -> F1 2/3, EM 0;
    # c: vs "in the year 1970" -> tokens {in, year, 1970} after dropping "the": P 1, R 2/3 -> 0.8;
    #    vs "1970": P 1/2, R 1 -> 2/3; best 0.8, EM 0; d: empty prediction -> 0.
    assert metrics.main_name == "f1"
    assert metrics.values["exact_match"] == pytest.approx(1 / 4)
    assert metrics.values["f1"] == pytest.approx((1 + 2 / 3 + 0.8 + 0) / 4)


def test_best_answers_use_n_best_max_length_context_and_every_window() -> None:
    contexts = ["alpha beta gamma delta"]
    #             tokens: [CLS] q   alpha  beta    gamma    delta
    offsets = np.array([[[NOT_CONTEXT] * 2, [NOT_CONTEXT] * 2, [0, 5], [6, 10], [11, 16], [17, 22]]])
    start = np.array([[9.0, 8.0, 1.0, 3.0, 0.0, 0.0]])  # [CLS] and the question score high: never answers
    end = np.array([[9.0, 8.0, 0.0, 0.0, 0.5, 2.0]])
    assert best_answers(start, end, offsets, np.array([0]), contexts) == ["beta gamma delta"]
    assert best_answers(start, end, offsets, np.array([0]), contexts, max_answer_length=2) == ["beta gamma"]
    assert best_answers(start, end, offsets, np.array([0]), contexts, n_best=1) == [""]  # only [CLS] left
    second = (np.array([[0.0, 0.0, 10.0, 0.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 10.0, 0.0, 0.0, 0.0]]))
    both = best_answers(np.concatenate([start, second[0]]), np.concatenate([end, second[1]]),
                        np.concatenate([offsets, offsets]), np.array([0, 0]), contexts)
    assert both == ["alpha"]  # the second window of the same question scores higher


# ---- question answering data ---------------------------------------------------------------------


def test_squad_nested_flat_jsonl_and_csv_read_the_same(tmp_path: Path) -> None:
    nested = tmp_path / "squad.json"
    nested.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": q["context"], "qas": [{"id": q["id"], "question": q["question"],
                                          "answers": [{"text": t, "answer_start": s} for t, s in
                                                      zip(q["answers"]["text"], q["answers"]["answer_start"])]}]}
        for q in QUESTIONS]}]}, indent=1))
    flat = jsonl(tmp_path / "flat.jsonl", QUESTIONS)
    csv = tmp_path / "flat.csv"
    import csv as csv_module

    with open(csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["id", "question", "context", "answers"])
        writer.writerows([q["id"], q["question"], q["context"], json.dumps(q["answers"])] for q in QUESTIONS)
    results = [load_qa_splits(p, seed=0) for p in (nested, flat, csv)]
    assert results[0].format == NESTED and results[1].format.startswith("flat")
    for splits in results:
        assert len(splits.train) + len(splits.val) == 3
        # split by context: the two questions on one paragraph stay together
        assert {q.id for q in splits.val} in ({"a", "b"}, {"c"})
        assert {q.answers[0] for q in splits.train + splits.val} == {"Lima", "Globex", "1970"}


def bad_question(**change) -> dict:
    return {**QUESTIONS[0], "id": "bad"} | change


@pytest.mark.parametrize("row, message", [
    (bad_question(answers={"text": ["Lima"], "answer_start": [3]}),
     "answer 'Lima' at answer_start 3 does not match the context (it reads 'ia G' there)"),
    (bad_question(context="  "), "empty context"),
    (bad_question(question=""), "empty question"),
    ({k: v for k, v in QUESTIONS[0].items() if k != "context"}, "no field 'context'"),
    (bad_question(answers={"text": [], "answer_start": []}), "no answer (unanswerable questions"),
    (bad_question(answers={"text": ["Lima"]}), "answers must be"),
    (bad_question(answers={"text": ["Lima"], "answer_start": ["x"]}), "answer_start 'x' is not a character offset"),
    (bad_question(id="a"), "question id 'a' is used twice"),
])
def test_bad_questions_name_file_line_and_id(tmp_path: Path, row: dict, message: str) -> None:
    path = jsonl(tmp_path / "bad.jsonl", QUESTIONS + [row])
    text = expect_error(message, load_qa_splits, path, seed=0)
    assert f"{path}:4" in text
    if "id" in row:
        assert f"question id {row['id']!r}" in text


def test_bad_nested_squad_answer_names_the_question_id(tmp_path: Path) -> None:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "q9", "question": "Where?", "answers": [{"text": "Lima", "answer_start": 0}]}]}]}]}))
    expect_error(f"{path}:1 (question id 'q9'): answer 'Lima' at answer_start 0 does not match",
                 load_qa_splits, path, seed=0)


def test_doc_stride_windows_and_answer_token_positions(tokenizer) -> None:
    context = " ".join(f"word{i}" for i in range(40)) + " The capital is Lima. " + " ".join(f"w{i}" for i in range(30))
    question = Question("q", "What is the capital?", context, ["Lima"], [context.index("Lima")], "x:1")
    features = encode_questions([question], tokenizer, 32, 8)
    assert len(features) > 3 and (features.feature_question == 0).all()
    ids = features.arrays["input_ids"]
    with_answer = np.flatnonzero(features.targets["start_positions"])
    assert len(with_answer) >= 1
    for f in with_answer:
        s, e = features.targets["start_positions"][f], features.targets["end_positions"][f]
        assert tokenizer.decode(ids[f][s:e + 1]) == "lima"
        assert context[features.offsets[f, s, 0]:features.offsets[f, e, 1]] == "Lima"
    assert (features.offsets[:, 0] == NOT_CONTEXT).all()  # [CLS] is never part of an answer
    # consecutive windows share `stride` context tokens
    first = [o for o in features.offsets[0].tolist() if o[0] != NOT_CONTEXT]
    second = [o for o in features.offsets[1].tolist() if o[0] != NOT_CONTEXT]
    assert first[-8:] == second[:8]
    with pytest.raises(DataError, match="x:1: the question takes .* no room for the context"):
        encode_questions([question], tokenizer, 16, 8)


# ---- embedded defaults ---------------------------------------------------------------------------


def test_embedded_sets_are_deterministic_and_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSIFY_MLFLOW_CACHE", str(tmp_path))
    assert embedded_entities.generate_ner(50) == embedded_entities.generate_ner(50)
    ner = load_token_splits(embedded_entities.ner_dataset(100), seed=0)
    assert (len(ner.train), len(ner.val)) == (80, 20)
    assert set(ner.label_names) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    qa = load_qa_splits(embedded_entities.qa_dataset(100), seed=0)  # every answer checked at its offset
    assert qa.format == NESTED and len(qa.train) + len(qa.val) == 100
    assert not {q.context for q in qa.train} & {q.context for q in qa.val}
    with pytest.raises(ValueError):
        embedded_entities.ner_dataset(5)
