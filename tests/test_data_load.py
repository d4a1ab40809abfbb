"""nbtune.data.load: every source kind loads to canonical columns; every malformed input names where and what."""
import csv
import json
import pickle
import warnings
from pathlib import Path

import datasets
import pandas as pd
import pytest

from nbtune.data.load import DataLoadError, DataLoadWarning, LoadReport, SkippedRow, load

BAD = Path(__file__).parent / "data_fixtures" / "bad"
GOOD = Path(__file__).parent / "data_fixtures" / "good"
TEN_MB = 10 * 1024 * 1024


def _long_field_csv(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + "x" * TEN_MB + ",a\nshort,b\n", encoding="utf-8")
    return path


def _parquet_named_csv(tmp_path):
    path = tmp_path / "export.csv"
    pd.DataFrame({"text": ["a"], "label": ["x"]}).to_parquet(path)
    return path


def _dataset_dict(tmp_path):
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": ["x"]})})


# (source: fixture name or builder(tmp_path), load kwargs, substrings the message must contain)
BAD_CASES = [
    ("unclosed_quote.csv", {}, ["unclosed_quote.csv, line 4, column 'text'", "never closed"]),
    ("text_after_quote.csv", {}, ["line 3", "after a closing quote", '""']),
    ("wrong_field_count.csv", {}, ["line 4", "found 3 fields", "2 fields like the header (text, label)"]),
    ("bad_json_line.jsonl", {}, ["line 3", "Expecting ',' delimiter (column 14)"]),
    ("single_object.json", {}, ["line 1", "a single JSON object (keys: data, version)", "a list of objects"]),
    ("list_of_strings.json", {}, ["line 3", "a string in the list", "an object"]),
    ("scalar.json", {}, ["line 1", "found a string", "a list of objects"]),
    ("unclosed_list.json", {}, ["line 4", "end of the file inside the list", "closed with ']'"]),
    ("not_object_line.jsonl", {}, ["line 2", "found a list", "an object"]),
    ("missing_text_key.jsonl", {}, ["line 3, column 'text'", "no key 'text'"]),
    ("empty.csv", {}, ["empty.csv: found an empty file", "header line"]),
    ("whitespace_only.jsonl", {}, ["whitespace_only.jsonl: found an empty file"]),
    ("header_only.csv", {}, ["line 1", "only the header line (text, label)"]),
    ("missing_column.csv", {}, ["line 1, column 'text'", "the columns are: body, category", "pass text="]),
    ("misspelled_column.csv", {}, ["column 'label'", "did you mean 'lable'? pass label='lable'"]),
    ("misspelled_column.csv", {"label": "Lable"}, ["did you mean 'lable'? pass label='lable'"]),
    ("empty_label.csv", {}, ["empty_label.csv, line 5, column 'label': found an empty value, expected a label "
                             "(or pass strict=False to skip such rows)"]),
    ("empty_label_after_multiline.csv", {}, ["line 6, column 'label'", "empty value"]),  # quoted newlines counted
    ("empty_label_pretty.json", {}, ["line 10, column 'label'", "empty value"]),  # the line its object starts on
    ("null_label.jsonl", {}, ["line 2, column 'label'", "empty value"]),
    ("mixed_label_types.jsonl", {}, ["column 'label'", "1 (a number, line 1)", "'spam' (a string, line 3)"]),
    ("fraction_label.jsonl", {}, ["line 2", "0.5", "whole number"]),
    ("empty_text.csv", {}, ["line 3, column 'text'", "empty value", "expected a text"]),
    ("number_text.jsonl", {}, ["line 2, column 'text'", "a number (42)", "a string"]),
    ("latin1.csv", {}, ["line 3", "byte 0xc7 at byte offset 18", 'encoding="cp1252"']),
    ("latin1.csv", {"encoding": "utf-9"}, ["unknown encoding 'utf-9'"]),
    ("utf16_no_bom.csv", {}, ["line 1", "UTF-16", 'encoding="utf-16-le"']),
    ("duplicate_columns.csv", {}, ["line 1, column 'label'", "'label' twice (fields 2 and 3)"]),
    ("nul_byte.csv", {}, ["line 3", "NUL byte (0x00) at byte offset 21"]),
    ("binary.csv", {}, ["binary.csv, line 1", "a PNG image, not text"]),
    (_parquet_named_csv, {}, ["export.csv, line 1", 'a Parquet file (pass format="parquet")']),
    ("commas.tsv", {}, ["line 1", "comma-separated", 'format="csv"']),
    ("missing_tag.conll", {}, ["line 5", "'Paris' (the tag is missing)"]),
    ("tag_only.conll", {}, ["line 3", "a tag 'B-MISC' with no token"]),
    ("tokens_tags_mismatch.jsonl", {"tokens": "tokens"}, ["line 2, column 'tags'", "3 tokens and 2 tags"]),
    ("truncated.parquet", {}, ["truncated.parquet: found a file Parquet can't read", "truncated"]),
    ("notes.xml", {}, ["notes.xml: found the suffix '.xml'", ".csv, .tsv", ".parquet", "format="]),
    ("folder_no_labels", {}, ["folder_no_labels: found no subfolders (only: README.md)", "<label>/*.txt"]),
    ("folder_empty_label", {}, ["folder_empty_label/spam: found no .txt files (it holds: readme.md)"]),
    ("nowhere/missing.csv", {}, ["missing.csv: found no such file or folder"]),
    ("sms-spamm", {}, ["no such file or folder", "did you mean 'sms-spam'?"]),
    ("latin1.csv", {"format": "xlsx"}, ["format='xlsx'", "csv, tsv, jsonl"]),
    (_long_field_csv, {"max_chars": 100_000}, ["line 2, column 'text'", "10,485,760 characters", "max_chars=100,000"]),
    (lambda tmp: pd.DataFrame({"body": ["a"], "label": ["x"]}), {},
     ["the DataFrame, column 'text'", "the columns are: body, label"]),
    (lambda tmp: pd.DataFrame({"text": ["a", 7], "label": ["x", "y"]}), {},
     ["the DataFrame, row 1, column 'text'", "a number (7)"]),
    (lambda tmp: pd.DataFrame({"text": ["a", "b"], "label": ["x", None]}), {},
     ["the DataFrame, row 1, column 'label'", "empty value"]),
    (lambda tmp: datasets.Dataset.from_dict({"text": ["a"], "category": ["x"]}), {},
     ["the Dataset, column 'label'", "the columns are: text, category"]),
    (_dataset_dict, {"split": "test"}, ["the DatasetDict", "no split 'test' (the splits are: train)"]),
]


def _case_id(case):
    source, kwargs, _ = case
    name = source if isinstance(source, str) else getattr(source, "__name__", "in-memory")
    return name + ("-" + "-".join(kwargs) if kwargs else "")


def test_at_least_25_malformed_fixture_files():
    names = {p.name for p in BAD.iterdir()}
    used = {src for src, _, _ in BAD_CASES if isinstance(src, str) and src in names}
    assert len(used) >= 25 and used == names


@pytest.mark.parametrize("case", BAD_CASES, ids=[_case_id(c) for c in BAD_CASES])
def test_malformed_input_names_location_and_problem(case, tmp_path):
    source, kwargs, expected = case
    if callable(source):
        source = source(tmp_path)
    elif (BAD / source).exists():
        source = BAD / source
    with pytest.raises(DataLoadError) as info:
        load(source, **kwargs)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    err = info.value  # no parser traceback chained to ours
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_error_attributes():
    with pytest.raises(DataLoadError) as info:
        load(BAD / "empty_label.csv")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.row, err.column) == (str(BAD / "empty_label.csv"), 5, 3, "label")
    assert err.found == "an empty value" and err.expected.startswith("a label")
    copy = pickle.loads(pickle.dumps(err))  # e.g. raised in a worker process
    assert (str(copy), copy.line, copy.column) == (str(err), 5, "label")


# --- good paths -----------------------------------------------------------------------------------------------
TICKET_TEXTS = ["my card was declined", "I can't log in, help", 'the "reset" link is broken', "refund my order\nplease",
                "where is my parcel", "password reset"]
TICKET_LABELS = ["billing", "login", "login", "billing", "shipping", "login"]


def _assert_canonical(ds, splits=("train",), pair=False):
    assert isinstance(ds, datasets.DatasetDict) and list(ds) == list(splits)
    for split in ds.values():
        expected = ["text", "text_pair", "label"] if pair else ["text", "label"]
        assert split.column_names == expected
        assert isinstance(split.features["label"], datasets.ClassLabel)
        assert split.features["text"] == datasets.Value("string")


@pytest.mark.parametrize("name", ["tickets.csv", "tickets.tsv", "tickets.jsonl", "tickets.json"])
def test_text_files_load_the_same_rows(name):
    ds = load(GOOD / name)
    _assert_canonical(ds)
    train = ds["train"]
    assert train["text"] == TICKET_TEXTS
    assert train.features["label"].names == ["billing", "login", "shipping"]
    assert [train.features["label"].int2str(i) for i in train["label"]] == TICKET_LABELS
    report = ds.load_report
    assert isinstance(report, LoadReport)
    assert (report.rows_read, report.rows_kept, report.skipped, report.bom) == (6, 6, [], False)
    assert report.format == Path(name).suffix[1:] and report.encoding == "utf-8"
    assert report.summary() == f"read 6 rows, kept 6 from {GOOD / name}"


def test_custom_column_names_and_text_pair(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("premise,hypothesis,gold\na cat sits,an animal sits,entail\nit rains,it is dry,contra\n")
    ds = load(path, text="premise", text_pair="hypothesis", label="gold")
    _assert_canonical(ds, pair=True)
    assert ds["train"]["text_pair"] == ["an animal sits", "it is dry"]
    assert ds.load_report.columns == {"text": "premise", "text_pair": "hypothesis", "label": "gold"}


def test_unlabelled_text(tmp_path):
    path = tmp_path / "unlabelled.jsonl"
    path.write_text('{"text": "first"}\n{"text": "second"}\n')
    ds = load(path, label=None)
    assert ds["train"].column_names == ["text"] and ds["train"]["text"] == ["first", "second"]


def test_int_labels_keep_numeric_order(tmp_path):
    path = tmp_path / "stars.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate([10, 2, 1, 2])))
    ds = load(path)
    assert ds["train"].features["label"].names == ["1", "2", "10"]
    assert ds["train"]["label"] == [2, 1, 0, 1]
    csv_path = tmp_path / "stars.csv"
    csv_path.write_text("text,label\na,10\nb,2\nc,1\n")
    assert load(csv_path)["train"].features["label"].names == ["1", "2", "10"]


@pytest.mark.parametrize("name,encoding", [("utf8_bom.csv", "utf-8-sig"), ("utf16_bom.csv", "utf-16-le")])
def test_bom_files(name, encoding):
    ds = load(GOOD / name)
    assert ds["train"].column_names == ["text", "label"]  # the BOM is not glued to the first column name
    assert ds["train"]["text"] == ["café au lait", "thé vert", "croissant"]
    assert (ds.load_report.encoding, ds.load_report.bom) == (encoding, True)


def test_utf16_big_endian_bom(tmp_path):
    path = tmp_path / "be.tsv"
    path.write_bytes(b"\xfe\xff" + "text\tlabel\nÄpfel\tfood\n".encode("utf-16-be"))
    ds = load(path)
    assert ds["train"]["text"] == ["Äpfel"] and ds.load_report.encoding == "utf-16-be"


def test_explicit_encoding_reads_a_cp1252_file():
    ds = load(BAD / "latin1.csv", encoding="cp1252")
    assert ds["train"]["text"][1] == "Ça coûte très cher déjà payé" and ds.load_report.encoding == "cp1252"


def test_parquet(tmp_path):
    path = tmp_path / "tickets.parquet"
    pd.DataFrame({"utterance": TICKET_TEXTS, "intent": TICKET_LABELS}).to_parquet(path)
    ds = load(path, text="utterance", label="intent")
    _assert_canonical(ds)
    assert ds["train"]["text"] == TICKET_TEXTS and ds.load_report.format == "parquet"


def test_conll():
    ds = load(GOOD / "ner.conll")
    train = ds["train"]
    assert train.column_names == ["tokens", "tags"]
    assert train["tokens"] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    names = train.features["tags"].feature.names
    assert names == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    assert [[names[t] for t in row] for row in train["tags"]] == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]


def test_tagging_jsonl_with_custom_columns(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text('{"words": ["Ann", "sings"], "ner": ["B-PER", "O"]}\n{"words": ["Bob"], "ner": ["B-PER"]}\n')
    ds = load(path, tokens="words", tags="ner")
    assert ds["train"].column_names == ["tokens", "tags"] and ds["train"]["tags"] == [[0, 1], [0]]
    assert ds["train"].features["tags"].feature.names == ["B-PER", "O"]
    assert ds.load_report.columns == {"tokens": "words", "tags": "ner"}


def test_tagging_dataset_keeps_its_tag_names():
    tags = datasets.List(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")), "tags": tags})
    source = datasets.Dataset.from_dict({"tokens": [["Ann", "sings"]], "tags": [[1, 0]]}, features=features)
    ds = load(source)
    assert ds["train"].features["tags"].feature.names == ["O", "B-PER", "I-PER"] and ds["train"]["tags"] == [[1, 0]]


def test_folder_of_text_files():
    ds = load(GOOD / "folder_flat")
    _assert_canonical(ds)
    assert ds["train"].features["label"].names == ["ham", "spam"]
    assert sorted(ds["train"]["text"]) == sorted(["see you at 5", "on my way", "WIN a prize now", "call me later",
                                                  "free entry!!"])
    assert ds.load_report.format == "folder" and ds.load_report.rows_kept == 5


def test_folder_with_splits_maps_dev_to_validation():
    ds = load(GOOD / "folder_splits")
    _assert_canonical(ds, splits=("validation", "train"))
    assert ds["validation"]["text"] == ["call me later", "free entry!!"]
    assert ds["train"].features["label"].names == ds["validation"].features["label"].names == ["ham", "spam"]
    assert list(load(GOOD / "folder_splits", split="validation")) == ["validation"]


def test_dataframe_with_nullable_ints():
    frame = pd.DataFrame({"body": ["a", "b", "c"], "stars": pd.array([5, 1, 5], dtype="Int64")})
    ds = load(frame, text="body", label="stars")
    assert ds["train"].features["label"].names == ["1", "5"] and ds["train"]["label"] == [1, 0, 1]


def test_dataset_and_datasetdict_keep_splits_and_class_labels():
    labels = datasets.ClassLabel(names=["neg", "pos"])
    features = datasets.Features({"sentence": datasets.Value("string"), "y": labels, "idx": datasets.Value("int32")})
    train = datasets.Dataset.from_dict({"sentence": ["bad", "good"], "y": [0, 1], "idx": [0, 1]}, features=features)
    test = datasets.Dataset.from_dict({"sentence": ["fine"], "y": [1], "idx": [2]}, features=features)
    ds = load(datasets.DatasetDict({"train": train, "test": test}), text="sentence", label="y")
    _assert_canonical(ds, splits=("train", "test"))
    assert ds["test"].features["label"].names == ["neg", "pos"] and ds["test"]["label"] == [1]
    assert load(train, text="sentence", label="y", split="validation")["validation"]["text"] == ["bad", "good"]


def test_bundled_name():
    ds = load("sms-spam")
    _assert_canonical(ds, splits=("train", "validation", "test"))
    assert ds["train"].features["label"].names == ["ham", "spam"] and ds.load_report.format == "bundled"


def test_ten_megabyte_field_loads_and_csv_limit_is_restored(tmp_path):
    before = csv.field_size_limit()
    ds = load(_long_field_csv(tmp_path))
    assert len(ds["train"]["text"][0]) == TEN_MB and ds["train"]["text"][1] == "short"
    assert csv.field_size_limit() == before


def test_jsonl_saved_as_json(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text((GOOD / "tickets.jsonl").read_text())
    assert load(path)["train"]["text"] == TICKET_TEXTS


# --- strict=False ---------------------------------------------------------------------------------------------
def test_lenient_load_skips_and_reports_every_row(tmp_path):
    path = tmp_path / "tickets.jsonl"
    lines = ['{"text": "ok one", "label": "a"}', '{"text": "no label", "label": ""}', "{broken",
             '{"text": "<b>ok</b> two", "label": "b"}', '{"text": "null label", "label": null}', "",
             '{"text": "<script>x</script>", "label": "a"}']
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(DataLoadWarning, match=r"read 6 rows, kept 3, skipped 3 \(2 empty label, 1 bad JSON\)"):
        ds = load(path, strict=False)
    report = ds.load_report
    assert ds["train"]["text"] == ["ok one", "<b>ok</b> two", "<script>x</script>"]
    assert (report.rows_read, report.rows_kept) == (6, 3)
    assert [(s.line, s.row, s.reason) for s in report.skipped] == [
        (3, 2, "bad JSON"), (2, 1, "empty label"), (5, 4, "empty label")]
    assert all(isinstance(s, SkippedRow) and str(path) in s.detail for s in report.skipped)
    assert report.summary() == f"read 6 rows, kept 3, skipped 3 (2 empty label, 1 bad JSON) from {path}"
    page = report._repr_html_()
    assert "<table>" in page and page.count("<tr>") == 4 and "empty label" in page


def test_report_html_escapes_user_text(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n["<script>alert(1)</script>"]\n')
    with pytest.warns(DataLoadWarning):
        page = load(path, strict=False).load_report._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_lenient_csv_and_conll(tmp_path):
    with pytest.warns(DataLoadWarning, match="1 wrong field count"):
        ds = load(BAD / "wrong_field_count.csv", strict=False)
    assert ds["train"]["text"] == ["one", "two", "five"]
    with pytest.warns(DataLoadWarning, match="1 bad CoNLL line"):
        ds = load(BAD / "missing_tag.conll", strict=False)
    assert ds["train"]["tokens"] == [["EU", "rejects"]]
    with pytest.warns(DataLoadWarning, match="1 mixed label types"):
        ds = load(BAD / "mixed_label_types.jsonl", strict=False)
    assert ds["train"].features["label"].names == ["1", "2"]


def test_clean_load_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(GOOD / "tickets.csv")


def test_all_rows_skipped_is_an_error(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\na,\nb,\n")
    with pytest.raises(DataLoadError, match=r"no usable rows \(read 2 rows, kept 0, skipped 2 \(2 empty label\)"):
        load(path, strict=False)
