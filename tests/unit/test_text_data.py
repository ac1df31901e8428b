"""Text data readers: JSONL / JSON / CSV / TSV, folder layouts, seed splits, and every bad input
named by file and line. No model, no network."""
from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest

from helpers.data import csv_file, expect_error, jsonl
from sparsify_mlflow.data import text_hub
from sparsify_mlflow.data.embedded_text import generate, sentiment_dataset
from sparsify_mlflow.data.text_files import load_text_splits, read_rows

ROWS = [
    {"text": "a wonderful film", "label": "positive"},
    {"text": "dull and far too long", "label": "negative"},
    {"text": "the cast is superb", "label": "positive"},
    {"text": "I almost walked out", "label": "negative"},
    {"text": "charming, clever and moving", "label": "positive"},
    {"text": "a waste of an evening", "label": "negative"},
    {"text": "great soundtrack", "label": "positive"},
    {"text": "tedious plot", "label": "negative"},
    {"text": "heartfelt", "label": "positive"},
    {"text": "bland", "label": "negative"},
]


# ---- readers -----------------------------------------------------------------------------------


def test_jsonl_rows_keep_line_numbers_and_skip_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    rows = read_rows(path)
    assert [r.line for r in rows] == [1, 3]
    assert rows[1].fields == ROWS[1]
    assert rows[1].where == f"{path}:3"


def test_json_list_and_hf_data_document_report_element_lines(tmp_path: Path) -> None:
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps(ROWS[:3], indent=2), encoding="utf-8")
    rows = read_rows(listing)
    assert [r.fields["text"] for r in rows] == [r["text"] for r in ROWS[:3]]
    assert [r.line for r in rows] == [2, 6, 10]  # each object opens on its own line with indent=2

    wrapped = tmp_path / "hf.json"
    wrapped.write_text(json.dumps({"version": "1.0", "meta": {"data": 1}, "data": ROWS[:2]}, indent=1),
                       encoding="utf-8")
    rows = read_rows(wrapped)
    assert [r.fields for r in rows] == ROWS[:2]
    text = wrapped.read_text().splitlines()
    assert all('"text"' in text[r.line] for r in rows)  # the line after "{" holds the first field


def test_json_file_holding_json_lines_is_accepted(tmp_path: Path) -> None:
    rows = read_rows(jsonl(tmp_path / "lines.json", ROWS[:3]))
    assert [r.line for r in rows] == [1, 2, 3]


def test_csv_with_quotes_multiline_fields_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes('\ufefftext,label\n"a film, with a comma",positive\n"two\nlines",negative\nplain,positive\n'
                     .encode("utf-8"))
    rows = read_rows(path)
    assert [r.fields["text"] for r in rows] == ["a film, with a comma", "two\nlines", "plain"]
    assert [r.line for r in rows] == [2, 3, 5]
    assert list(rows[0].fields) == ["text", "label"]  # the BOM is not part of the first column name


def test_tsv(tmp_path: Path) -> None:
    rows = read_rows(csv_file(tmp_path / "d.tsv", "sentence\tlabel", ["good film\t1", "bad film\t0"]))
    assert rows[0].fields == {"sentence": "good film", "label": "1"}


# ---- labels, columns, layouts -------------------------------------------------------------------


def test_string_labels_map_to_ids_in_sorted_order(tmp_path: Path) -> None:
    rows = ROWS + [{"text": "so so", "label": "neutral"}, {"text": "meh", "label": "neutral"}]
    splits = load_text_splits(jsonl(tmp_path / "d.jsonl", rows), seed=0)
    assert splits.label_names == ["negative", "neutral", "positive"]
    by_text = {e.text: e.label for e in splits.train + splits.val}
    assert by_text["a wonderful film"] == 2 and by_text["bland"] == 0 and by_text["meh"] == 1


def test_integer_labels_sort_numerically_and_csv_digits_are_integers(tmp_path: Path) -> None:
    lines = [f"review {i},{label}" for i, label in enumerate([2, 10, 2, 10, 2, 10, 2, 10])]
    splits = load_text_splits(csv_file(tmp_path / "d.csv", "text,label", lines), seed=0)
    assert splits.label_names == ["2", "10"]
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(12)]
    assert load_text_splits(jsonl(tmp_path / "i.jsonl", rows), seed=0).label_names == ["0", "1", "2"]


def test_single_file_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": "a" if i % 4 else "b"} for i in range(40)]
    path = jsonl(tmp_path / "d.jsonl", rows)
    first, again, other = (load_text_splits(path, seed=s) for s in (0, 0, 1))
    assert first.layout == "single file split by seed"
    assert len(first.val) == 8 and len(first.train) == 32
    assert sorted(e.label for e in first.val) == [0] * 6 + [1] * 2  # 20% of each class
    assert [e.text for e in first.val] == [e.text for e in again.val]
    assert {e.text for e in first.val} != {e.text for e in other.val}
    assert not {e.text for e in first.val} & {e.text for e in first.train}


@pytest.mark.parametrize("train,val", [("train.jsonl", "validation.jsonl"), ("train.csv", "val.csv"),
                                       ("train.json", "dev.json"), ("train.jsonl", "test.jsonl")])
def test_folder_layouts(tmp_path: Path, train: str, val: str) -> None:
    for name, rows in ((train, ROWS[:6]), (val, ROWS[6:])):
        path = tmp_path / name
        if name.endswith(".csv"):
            csv_file(path, "text,label", [f'"{r["text"]}",{r["label"]}' for r in rows])
        elif name.endswith(".json"):
            path.write_text(json.dumps(rows), encoding="utf-8")
        else:
            jsonl(path, rows)
    splits = load_text_splits(tmp_path, seed=0)
    assert len(splits.train) == 6 and len(splits.val) == 4
    assert splits.layout == f"{train} + {val}"
    assert splits.text_column == "text" and splits.label_column == "label"


def test_validation_wins_over_test_and_the_note_says_so(tmp_path: Path) -> None:
    jsonl(tmp_path / "train.jsonl", ROWS[:6])
    jsonl(tmp_path / "validation.jsonl", ROWS[6:])
    jsonl(tmp_path / "test.jsonl", ROWS[6:])
    splits = load_text_splits(tmp_path, seed=0)
    assert splits.notes == ["test.jsonl is not used (validation is validation.jsonl)"]


def test_column_auto_detection_and_explicit_columns(tmp_path: Path) -> None:
    pairs = [{"sentence1": f"s{i}", "sentence2": f"t{i}", "label": i % 2} for i in range(10)]
    splits = load_text_splits(jsonl(tmp_path / "p.jsonl", pairs), seed=0)
    assert (splits.text_column, splits.pair_column) == ("sentence1", "sentence2")
    assert all(e.pair and e.pair.startswith("t") for e in splits.train)
    sst = [{"idx": i, "sentence": f"s{i}", "label": i % 2} for i in range(10)]
    assert load_text_splits(jsonl(tmp_path / "s.jsonl", sst), seed=0).text_column == "sentence"
    custom = [{"review": f"r{i}", "stars": "good" if i % 2 else "bad"} for i in range(10)]
    splits = load_text_splits(jsonl(tmp_path / "c.jsonl", custom), seed=0, text_column="review",
                              label_column="stars")
    assert splits.label_names == ["bad", "good"]


# ---- bad input: each error names the file and the line ------------------------------------------


def test_row_that_is_not_json(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", ROWS[:2], extra="{not json}\n")
    expect_error(f"{path}:3: not valid JSON", read_rows, path)


def test_json_document_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a", "label": 1},\n  {"text": "b" "label": 0}\n]\n', encoding="utf-8")
    expect_error(f"{path}:3: not valid JSON", read_rows, path)


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", ROWS[:2], extra='["a", 1]\n')
    expect_error(f"{path}:3: expected a JSON object", read_rows, path)


def test_missing_label_column_in_a_row(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", ROWS[:4] + [{"text": "no label here"}] + ROWS[4:])
    expect_error(f"{path}:5: no column 'label'", load_text_splits, path, seed=0)


def test_missing_column_in_the_csv_header(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "d.csv", "text,sentiment", ["good,positive", "bad,negative"])
    expect_error(f"{path}:1: no column 'label' in the header (columns: text, sentiment)", load_text_splits, path, seed=0)


def test_no_text_column_found(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"body": "x", "label": 1}, {"body": "y", "label": 0}])
    expect_error(f"{path}:1: no text column found", load_text_splits, path, seed=0)


def test_named_text_column_absent(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", ROWS)
    expect_error(f"{path}:1: no column 'review'", load_text_splits, path, seed=0, text_column="review")


def test_empty_text(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", ROWS[:6] + [{"text": "   ", "label": "positive"}] + ROWS[6:])
    expect_error(f"{path}:7: empty text in column 'text'", load_text_splits, path, seed=0)


def test_empty_text_in_csv(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "d.csv", "text,label", ["good,1", "bad,0", ",1", "fine,1"])
    expect_error(f"{path}:4: empty text", load_text_splits, path, seed=0)


def test_validation_label_unseen_in_training(tmp_path: Path) -> None:
    jsonl(tmp_path / "train.jsonl", ROWS)
    val = jsonl(tmp_path / "validation.jsonl", ROWS[:2] + [{"text": "so so", "label": "neutral"}])
    message = expect_error(f"{val}:3: label 'neutral' does not occur in the training split",
                           load_text_splits, tmp_path, seed=0)
    assert "known labels: negative, positive" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ngood,1\n" + "caf\u00e9 cr\u00e8me,0\n".encode("latin-1"))
    expect_error(f"{path}:3: not UTF-8 (byte 0xe9 at column 4)", read_rows, path)


def test_only_one_class(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": "positive"} for i in range(8)])
    expect_error(f"{path}: only one class ('positive' in column 'label', lines 1-8)",
                 load_text_splits, path, seed=0)


def test_regression_labels_are_rejected(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1.0}, {"text": "b", "label": 3.8}])
    expect_error(f"{path}:2: label 3.8 is not a class", load_text_splits, path, seed=0)


def test_csv_row_with_too_many_fields(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "d.csv", "text,label", ["good,1", "a, b and c,0"])
    expect_error(f"{path}:3: 3 field(s) but the header has 2", read_rows, path)


def test_folder_without_train_or_validation_file(tmp_path: Path) -> None:
    expect_error("has no train file", load_text_splits, tmp_path, seed=0)
    jsonl(tmp_path / "train.jsonl", ROWS)
    expect_error("no validation file", load_text_splits, tmp_path, seed=0)


def test_unsupported_suffix_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("x")
    expect_error("unsupported file type .txt", read_rows, tmp_path / "d.txt")
    expect_error("does not exist", load_text_splits, tmp_path / "absent.jsonl", seed=0)


# ---- hub names and the embedded default ---------------------------------------------------------


def test_hub_names_and_offline_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert text_hub.looks_like_hub_name("sst2") and text_hub.looks_like_hub_name("stanfordnlp/imdb")
    assert not text_hub.looks_like_hub_name("train.jsonl")
    assert not text_hub.looks_like_hub_name(str(jsonl(tmp_path / "x", ROWS)))
    assert text_hub.resolve_hub_name("SST2") == ("glue", "sst2")
    assert text_hub.resolve_hub_name("glue/mrpc") == ("glue", "mrpc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    message = expect_error("cannot load the Hugging Face dataset 'glue/sst2'", text_hub.load_hub_splits,
                           "sst2", seed=0)
    assert "pass local files instead" in message


def test_embedded_sentiment_is_deterministic_balanced_and_cached(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    rows = generate(200)
    assert rows == generate(200)
    assert len({r["text"] for r in rows}) == 200
    assert sum(r["label"] == "positive" for r in rows) == 100
    monkeypatch.setenv("SPARSIFY_MLFLOW_CACHE", str(tmp_path / "cache"))
    folder = sentiment_dataset(100)
    assert folder.is_relative_to(tmp_path / "cache")
    splits = load_text_splits(folder, seed=0)
    assert (len(splits.train), len(splits.val)) == (80, 20)
    assert splits.label_names == ["negative", "positive"]
    mtime = (folder / "train.jsonl").stat().st_mtime_ns
    assert sentiment_dataset(100) == folder and (folder / "train.jsonl").stat().st_mtime_ns == mtime


def test_embedded_row_count_is_checked() -> None:
    from sparsify_mlflow.usecases.nlp.text_classification import _embedded_rows

    assert _embedded_rows("embedded:3000") == 3000
    for bad in ("embedded:lots", "embedded:5", "embedded:10000000"):
        expect_error("expected embedded:<rows> with 40 to 20000 rows", _embedded_rows, bad)


# ---- the real offline set: docstrings labelled by library ---------------------------------------

SMALL_LIBRARIES = {"click": ("click", "click", ("click",)), "jinja2": ("jinja2", "Jinja2", ("jinja2", "jinja"))}


def test_docstring_set_is_balanced_masked_deterministic_and_split_per_label(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    from sparsify_mlflow.data import docstring_text

    monkeypatch.setattr(docstring_text, "LIBRARIES", SMALL_LIBRARIES)
    rows = docstring_text.build_rows(20)
    assert rows == docstring_text.build_rows(20)
    assert len(rows) == 40 and len({r["text"] for r in rows}) == 40
    validation = rows[:8]  # the fifth cached_splits cuts off first: 4 of each library
    assert sorted(r["label"] for r in validation) == ["click"] * 4 + ["jinja2"] * 4
    assert sorted(r["label"] for r in rows[8:]) == ["click"] * 16 + ["jinja2"] * 16
    for row in rows:  # the answer is not in the text
        assert not {"click", "jinja", "jinja2"} & set(re.findall(r"\w+", row["text"].lower())), row
    monkeypatch.setenv("SPARSIFY_MLFLOW_CACHE", str(tmp_path / "cache"))
    splits = load_text_splits(docstring_text.docstring_dataset(20), seed=0)
    assert (len(splits.train), len(splits.val), splits.label_names) == (32, 8, ["click", "jinja2"])


def test_docstring_summary_keeps_the_first_prose_paragraph() -> None:
    from sparsify_mlflow.data.docstring_text import mask, summary

    assert summary("Return the sum of the\n    values along an axis.\n\n    Parameters\n    ----------\n") == \
        "Return the sum of the values along an axis."
    assert summary("Too short.") is None
    assert summary(">>> import numpy as np\n>>> np.zeros(3)  # a doctest is not prose") is None
    assert summary("x" * 500) is None
    assert mask("Wraps numpy.ndarray; see NumPy's np.sum and numpyro.", ("numpy", "np")) == \
        "Wraps lib.ndarray; see lib's lib.sum and numpyro."


def test_docstring_set_names_the_library_that_cannot_fill_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsify_mlflow.data import docstring_text

    monkeypatch.setattr(docstring_text, "LIBRARIES", SMALL_LIBRARIES)
    expect_error("embedded:docstrings: click (click ", docstring_text.build_rows, 100000)
    # two labels reading the same sources share every text: none has an answer, so none is usable
    monkeypatch.setattr(docstring_text, "LIBRARIES", {"a": SMALL_LIBRARIES["click"], "b": SMALL_LIBRARIES["click"]})
    click = f"click {importlib.metadata.version('click')}"
    expect_error(f"embedded:docstrings: a ({click}) has 0 usable docstrings", docstring_text.build_rows, 1)
    monkeypatch.setattr(docstring_text, "LIBRARIES", {"nope": ("no_such_library_here", "nope", ("nope",))})
    expect_error("the library 'no_such_library_here' is not installed", docstring_text.build_rows, 10)


def test_text_classification_reads_the_docstring_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sparsify_mlflow.config import ExperimentConfig
    from sparsify_mlflow.data import docstring_text
    from sparsify_mlflow.usecases import resolve
    from sparsify_mlflow.usecases.nlp.text_classification import TextOptions

    monkeypatch.setattr(docstring_text, "LIBRARIES", SMALL_LIBRARIES)
    monkeypatch.setattr(docstring_text, "ROWS_PER_LABEL", 20)
    monkeypatch.setenv("SPARSIFY_MLFLOW_CACHE", str(tmp_path / "cache"))
    cfg = ExperimentConfig(use_case="text_classification", data="embedded:docstrings", use_case_options=TextOptions())
    splits, source = resolve("text_classification")._splits(cfg)
    assert source.startswith("embedded:docstrings: docstrings of 2 installed libraries")
    assert (len(splits.train), len(splits.val), splits.label_names) == (32, 8, ["click", "jinja2"])
