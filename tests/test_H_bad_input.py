"""Catalogue group H: bad input to data loaders (docs/reliability.md, shared/notes/reliability-catalogue.md §2 H).

H1/H2 generate their 1,000-line files in tmp_path; every error must be a DataLoadError naming the file, the exact
1-based physical line, the reason and a fix, with no parser exception chained to it. H3/H4 build a Run (tiny-bert
on synthetic rows) and check that bad labels fail before the model exists: `tasks.load_model` is wrapped by a
recorder that counts calls and then calls the real function.
The catalogue's run R is 512 rows with 3 labels; H3 uses 512 synthetic rows ("example i about ...") like it.
"""
import math
import warnings
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from nbtune.config import RunConfig
from nbtune.data.load import DataLoadError, DataLoadWarning, load
from nbtune.engine import checkpoint as ckpt
from nbtune.engine import tasks
from nbtune.engine.run import Run
from nbtune.engine.tasks import DataError, DataWarning

ROWS = 1000
BASE = ["model.name=tiny-bert", "data.max_length=16", "train.batch_size=8", "train.progress_bar=false",
        "train.tensorboard=false", "train.precision=fp32", "train.save_total_limit=null"]


# ---------------------------------------------------------------------------------------------- helpers
def _write(path: Path, lines: list[str], *, newline: str = "\n", end: bool = True, encoding="utf-8") -> Path:
    path.write_bytes((newline.join(lines) + (newline if end else "")).encode(encoding))
    return path


def _csv_rows(n: int = ROWS, sep: str = ",") -> list[str]:
    """Header + n rows; row k (1-based) is on physical line k + 1."""
    return [f"text{sep}label"] + [f"row {k} text{sep}{'ab'[k % 2]}" for k in range(1, n + 1)]


def _jsonl_rows(n: int = ROWS) -> list[str]:
    return [f'{{"text": "row {k} text", "label": "{"ab"[k % 2]}"}}' for k in range(1, n + 1)]


def _load_error(path: Path, **kwargs) -> DataLoadError:
    """The DataLoadError of loading `path`; asserts the message names the file and nothing generic is chained."""
    with pytest.raises(DataLoadError) as info:
        load(path, **kwargs)
    err = info.value
    assert str(path) in str(err) and err.path == str(path)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert "DatasetGenerationError" not in str(err) and "Traceback" not in str(err)
    return err


def _lenient(path: Path, **kwargs):
    with pytest.warns(DataLoadWarning) as record:
        ds = load(path, strict=False, **kwargs)
    return ds, " ".join(str(w.message) for w in record)


# ------------------------------------------------------------------------------------------ H1 CSV matrix
def test_H1a_ragged_row_names_line_4_and_skip_reports_it(tmp_path):
    lines = _csv_rows()
    lines[3] = "row 3 text,b,extra"  # physical line 4: 3 fields under a 2-field header
    path = _write(tmp_path / "ragged.csv", lines)
    err = _load_error(path)
    assert (err.line, err.row) == (4, 2)
    assert "line 4" in str(err) and "found 3 fields" in str(err)
    assert "2 fields like the header (text, label)" in str(err) and "must be quoted" in str(err)
    assert "strict=False" in str(err)  # the fix for a file you can't edit
    ds, warned = _lenient(path)
    report = ds.load_report
    assert (report.rows_read, report.rows_kept, len(ds["train"])) == (ROWS, ROWS - 1, ROWS - 1)
    assert report.skipped_rows() == "skipped 1 of 1000 rows (line 4)"
    assert "skipped 1 of 1000 rows (line 4)" in warned and "skipped 1 of 1000 rows (line 4)" in report._repr_html_()


def test_H1b_unclosed_quote_names_line_7(tmp_path):
    lines = _csv_rows(20)
    lines[6] = '"row 6 never closed,b'  # line 7
    err = _load_error(_write(tmp_path / "quote.csv", lines))
    assert (err.line, err.column) == (7, "text")
    assert "never closed" in str(err) and 'written twice ("")' in str(err)


def test_H1c_empty_file_is_named(tmp_path):
    # A 0-byte file has no line to name: the error names the file and says what a CSV must start with.
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    err = _load_error(path)
    assert err.line is None and str(err) == f"{path}: found an empty file, expected a header line naming the " \
                                            "columns, then one row per line"


def test_H1d_header_only_names_line_1(tmp_path):
    err = _load_error(_write(tmp_path / "header.csv", ["text,label"]))
    assert err.line == 1 and "only the header line (text, label) and no data rows" in str(err)
    assert "at least one row under the header" in str(err)


def test_H1e_byte_0xE9_names_line_12_and_the_encoding_to_pass(tmp_path):
    data = "\n".join(_csv_rows(20)).encode() + b"\n"
    lines = data.split(b"\n")
    lines[11] = b"caf\xe9 cr\xe8me,a"  # line 12: cp1252 bytes in a file read as UTF-8
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\n".join(lines))
    err = _load_error(path)
    assert err.line == 12 and "byte 0xe9" in str(err) and "not valid UTF-8" in str(err)
    assert 'pass encoding="cp1252"' in str(err)
    fixed = load(path, encoding="cp1252")  # the fix the message gives works
    assert fixed["train"]["text"][10] == "café crème" and len(fixed["train"]) == 20


@pytest.mark.parametrize("header", ["text,label", "label,text"])
def test_H1f_utf8_bom_gives_a_column_named_exactly_label(tmp_path, header):
    rows = ["row one,a", "row two,b"] if header.startswith("text") else ["a,row one", "b,row two"]
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join([header, *rows]) + "\n").encode())
    ds = load(path)
    train = ds["train"]
    assert train.column_names == ["text", "label"] and train["text"] == ["row one", "row two"]
    assert train.features["label"].names == ["a", "b"]
    assert ds.load_report.columns == {"text": "text", "label": "label"}  # found under its own name
    assert sum("\ufeff" in c for c in train.column_names) == 0 and "\ufeff" not in train["text"][0]
    assert (ds.load_report.encoding, ds.load_report.bom) == ("utf-8-sig", True)


def test_H1g_nul_byte_names_line_9(tmp_path):
    lines = _csv_rows(20)
    lines[8] = "row\x00 8 text,a"
    err = _load_error(_write(tmp_path / "nul.csv", lines))
    assert err.line == 9 and "NUL byte (0x00)" in str(err) and "remove it" in str(err)


def test_H1h_one_megabyte_field(tmp_path):
    # nbtune lifts csv's 128 KiB field limit (the catalogue's failure), so a 1 MB field loads intact; a user
    # who wants a bound passes max_chars and gets the line.
    lines = _csv_rows(20)
    lines[4] = "y" * (1 << 20) + ",a"  # line 5
    path = _write(tmp_path / "long.csv", lines)
    assert len(load(path)["train"]["text"][3]) == 1 << 20
    err = _load_error(path, max_chars=100_000)
    assert (err.line, err.column) == (5, "text") and "1,048,576 characters" in str(err)
    assert "at most max_chars=100,000" in str(err)


def test_H1i_mixed_crlf_lf_loads_with_the_right_shape(tmp_path):
    lines = _csv_rows()
    text = "".join(line + ("\r\n" if k % 2 else "\n") for k, line in enumerate(lines))
    path = tmp_path / "mixed.csv"
    path.write_bytes(text.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing to warn about
        ds = load(path)
    train = ds["train"]
    assert (len(train), train.column_names) == (ROWS, ["text", "label"])
    assert train.features["label"].names == ["a", "b"]
    assert not any("\r" in t for t in train["text"]) and train["text"][-1] == "row 1000 text"
    # Physical line numbers stay exact across the mixed endings.
    broken = text.replace("row 599 text,b", "row 599 text,b,extra")
    path.write_bytes(broken.encode())
    assert _load_error(path).line == 600


@pytest.mark.parametrize("sep,name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_H1j_delimiter_detected_from_a_header_without_commas(tmp_path, sep, name):
    lines = _csv_rows(sep=sep)
    lines[10] = f"a text, with commas{sep}a"  # commas are text once the delimiter is ';'
    path = _write(tmp_path / f"{name}.csv", lines)
    ds = load(path)
    assert (len(ds["train"]), ds["train"].column_names) == (ROWS, ["text", "label"])
    assert ds["train"]["text"][9] == "a text, with commas"
    report = ds.load_report
    assert report.delimiter == sep and f"detected the delimiter {sep!r}: the header line has no comma" in report.notes
    assert report.format == "csv" and "detected the delimiter" in report._repr_html_()
    lines[3] = f"x{sep}a{sep}b"  # and errors still name the line and the delimiter that was used
    err = _load_error(_write(tmp_path / f"{name}.csv", lines))
    assert err.line == 4 and f"a field containing {'a tab' if sep == chr(9) else repr(sep)} must be quoted" in str(err)


# ------------------------------------------------------------------------------------------ H2 JSON Lines
def test_H2a_trailing_comma_names_line_719_and_the_key(tmp_path):
    lines = _jsonl_rows()
    lines[718] = '{"text": "row 719 text", "label": "b",}'
    path = _write(tmp_path / "comma.jsonl", lines)
    err = _load_error(path)
    assert (err.line, err.column) == (719, "label") and "line 719, column 'label'" in str(err)
    assert "after the key 'label'" in str(err) and "trailing comma" in str(err) and "remove it" in str(err)
    ds, _ = _lenient(path)
    assert ds.load_report.skipped_rows() == "skipped 1 of 1000 rows (line 719)" and len(ds["train"]) == 999


def test_H2b_blank_lines_5_and_6_are_skipped_and_counted(tmp_path):
    lines = _jsonl_rows(998)
    lines[4:4] = ["", "   "]  # physical lines 5 and 6
    path = _write(tmp_path / "blank.jsonl", lines)
    assert len(lines) == ROWS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # blank lines are not a problem to warn about
        ds = load(path)
    report = ds.load_report
    assert (report.rows_read, report.blank_lines, len(ds["train"])) == (998, 2, 998)
    assert "skipped 2 blank lines" in report.notes and "skipped 2 blank lines" in report._repr_html_()
    lines[6] = '{"text": "row 5 text", "label": ""}'  # line numbers stay file-level after the blank lines
    err = _load_error(_write(path, lines))
    assert (err.line, err.column) == (7, "label")


def test_H2c_label_type_change_names_line_101(tmp_path):
    lines = [f'{{"text": "row {k}", "label": {k % 2}}}' for k in range(1, 101)]
    lines += [f'{{"text": "row {k}", "label": "{("pos", "neg")[k % 2]}"}}' for k in range(101, ROWS + 1)]
    path = _write(tmp_path / "types.jsonl", lines)
    err = _load_error(path)
    assert (err.line, err.column) == (101, "label")  # where the file changes, though strings are the majority
    assert "labels of mixed types: 1 (a number, line 1) and 'neg' (a string, line 101)" in str(err)
    assert "all strings or all whole numbers" in str(err)
    ds, _ = _lenient(path)  # lenient: the minority type (100 int rows) is skipped
    assert len(ds["train"]) == 900 and ds["train"].features["label"].names == ["neg", "pos"]
    assert ds.load_report.skipped_rows() == "skipped 100 of 1000 rows (lines 1, 2, 3, 4, 5, ...)"


def test_H2d_top_level_array_is_read_as_json_and_reported(tmp_path):
    objects = _jsonl_rows(998)
    lines = ["["] + [o + ("," if k < 997 else "") for k, o in enumerate(objects)] + ["]"]
    path = _write(tmp_path / "array.jsonl", lines)
    assert len(lines) == ROWS
    ds = load(path)
    report = ds.load_report
    assert report.format == "json" and len(ds["train"]) == 998 and ds["train"]["text"][0] == "row 1 text"
    assert "read as JSON: the file holds a top-level array, not one object per line" in report.notes
    err = _load_error(_write(path, lines[:-1]))  # the same array without its closing bracket
    assert "expected one JSON object per line, found a top-level array" in str(err)
    assert err.line == 1000 and "end of the file inside the list" in str(err)  # where the ']' is missing


def test_H2e_truncated_last_line_names_line_1000(tmp_path):
    lines = _jsonl_rows()
    lines[-1] = '{"text": "row 1000 text", "label": "a'  # cut mid-value, no newline: a copy still being written
    path = _write(tmp_path / "cut.jsonl", lines, end=False)
    err = _load_error(path)
    assert (err.line, err.column) == (1000, "label") and "Unterminated string" in str(err)
    assert "is the file truncated, or still being written?" in str(err)
    ds, _ = _lenient(path)
    assert ds.load_report.skipped_rows() == "skipped 1 of 1000 rows (line 1000)" and len(ds["train"]) == 999


# ------------------------------------------------------------------------------------------ H3 labels
def _texts(n: int = 512) -> list[str]:
    return [f"example {i} about {('cards', 'login', 'parcel')[i % 3]}" for i in range(n)]


def _split(labels: list, feature=None, column: str = "label") -> datasets.Dataset:
    texts = _texts(len(labels))
    if feature is None:
        return datasets.Dataset.from_dict({"text": texts, column: labels})
    plain = datasets.Dataset.from_dict({"text": texts, column: labels})
    return plain.cast(datasets.Features({"text": datasets.Value("string"), column: feature}))  # no range check


def _dsd(train: datasets.Dataset, heldout: datasets.Dataset | None = None) -> datasets.DatasetDict:
    heldout = heldout if heldout is not None else train.select(range(6))
    return datasets.DatasetDict({"train": train, "validation": heldout, "test": heldout})


@pytest.fixture
def model_calls(monkeypatch) -> list:
    """Records every model load (then loads for real): bad labels must fail while this is still empty."""
    calls, real = [], tasks.load_model
    monkeypatch.setattr(tasks, "load_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def _run(tmp_path: Path, data, *extra: str) -> Run:
    cfg = RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}", *extra])
    return Run(cfg, data, run_dir=tmp_path / "run")


def _run_error(tmp_path, data, calls: list, *extra: str) -> str:
    with pytest.raises(DataError) as info:
        _run(tmp_path, data, *extra)
    assert calls == [], "the model was built before the labels were checked"
    message = str(info.value)
    assert "did not return a loss" not in message and "Traceback" not in message
    return message


def test_H3a_column_Label_suggests_it_before_the_model_exists(tmp_path, model_calls):
    message = _run_error(tmp_path, _dsd(_split([i % 3 for i in range(512)], column="Label")), model_calls)
    assert "column 'label' not found; the columns are ['text', 'Label']" in message
    assert "Did you mean 'Label'?" in message and "data.label_column" in message
    path = _write(tmp_path / "r.csv", ["text,Label", "a,x", "b,y"])
    assert "did you mean 'Label'? pass label='Label'" in str(_load_error(path))


def test_H3b_no_label_column_lists_the_columns(tmp_path, model_calls):
    data = _dsd(datasets.Dataset.from_dict({"text": _texts(), "category": [i % 3 for i in range(512)]}))
    message = _run_error(tmp_path, data, model_calls)
    assert "the columns are ['text', 'category']" in message and "data.label_column" in message


def test_H3c_ids_outside_a_three_name_ClassLabel(tmp_path, model_calls):
    labels = [3 if i % 100 == 7 else i % 3 for i in range(512)]  # {0, 1, 3}: rows 7, 107, 207, 307, 407, 507
    feature = datasets.ClassLabel(names=["neg", "neu", "pos"])
    train = _split(labels, feature)
    message = _run_error(tmp_path, _dsd(train, train.select(range(3))), model_calls)
    assert "holds 6 labels outside the class ids 0..2 (num_labels=3): values [3]" in message
    assert "6 rows (first row indices: [7, 107, 207, 307, 407])" in message and "nothing reached the model" in message
    err = _load_error_in_memory(train)  # nbtune.data.load checks the same range, naming the rows
    assert "the class id 3 in 6 rows (row 7, row 107, row 207, row 307, row 407, ...)" in err
    assert "a class id from 0 to 2 (the column's ClassLabel has 3 names)" in err


def _load_error_in_memory(source) -> str:
    with pytest.raises(DataLoadError) as info:
        load(source)
    return str(info.value)


def test_H3c_ids_outside_config_num_labels(tmp_path, model_calls):
    labels = [3 if i in (4, 9) else i % 2 for i in range(512)]  # {0, 1, 3} with model.config_overrides.num_labels=3
    message = _run_error(tmp_path, _dsd(_split(labels)), model_calls, "model.config_overrides={num_labels: 3}")
    assert "holds 2 labels outside the class ids 0..2 (num_labels=3): values [3] in 2 rows (first row indices: " \
           "[4, 9])" in message
    # In range, num_labels makes the integers class ids and sizes the head (before: a duplicate-keyword TypeError).
    run = _run(tmp_path, _dsd(_split([i % 2 for i in range(16)])), "model.config_overrides={num_labels: 3}")
    assert run.data.label_names == ["0", "1", "2"] and run.raw_model.config.num_labels == 3


def test_H3d_id_minus_one_is_refused_with_count_and_rows(tmp_path, model_calls):
    labels = [-1 if i in (0, 5, 6, 30, 31, 32, 500) else i % 3 for i in range(512)]
    train = datasets.Dataset.from_dict({"text": _texts(), "label": labels}, features=datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "neu", "pos"])}))
    message = _run_error(tmp_path, _dsd(train, train.select(range(1, 4))), model_calls)
    assert "holds 7 labels outside the class ids 0..2 (num_labels=3): values [-1]" in message
    assert "7 rows (first row indices: [0, 5, 6, 30, 31])" in message and "-1 is datasets' 'no label'" in message


def test_H3e_whole_float_labels_become_ids_with_a_warning(tmp_path):
    labels = [float(i % 3) for i in range(64)]
    with pytest.warns(DataWarning, match=r"whole-number floats \(e\.g\. 0\.0\); read as the integers"):
        run = _run(tmp_path, _dsd(_split(labels)), "train.max_steps=1")
    assert run.data.label_names == ["0", "1", "2"]
    assert run.data.rows["train"][2]["labels"] == 2 and isinstance(run.data.rows["train"][2]["labels"], int)
    run.start()
    assert run.state.status == "finished" and math.isfinite(run.last_step_record["loss"])
    assert run.raw_model.config.problem_type == "single_label_classification"
    with pytest.raises(DataError, match=r"fractional numbers \(e\.g\. 0\.5\) in 1 row \(first row indices: \[2\]\)"):
        _run(tmp_path, _dsd(_split([0.0, 1.0, 0.5] + labels[3:])))
    with pytest.warns(DataLoadWarning, match=r"whole-number floats \(0\.0, 1\.0, 2\.0\): read as the classes "
                                             r"'0', '1', '2'"):
        ds = load(pd.DataFrame({"text": _texts(64), "label": labels}))
    assert ds["train"].features["label"].names == ["0", "1", "2"] and ds["train"]["label"][:3] == [0, 1, 2]


def test_H3f_string_labels_get_a_sorted_stable_mapping_saved_in_the_checkpoint(tmp_path):
    labels = [("pos", "neg", "neu")[i % 3] for i in range(48)]
    run = _run(tmp_path, _dsd(_split(labels)), "train.max_steps=1", "train.save_every_n_steps=1")
    assert run.data.label_names == ["neg", "neu", "pos"]
    assert [r["labels"] for r in run.data.rows["train"][:3]] == [2, 0, 1]
    shuffled = _run(tmp_path / "other", _dsd(_split(labels[::-1])))  # another row order, the same mapping
    assert shuffled.data.label_names == ["neg", "neu", "pos"]
    run.start()
    saved = ckpt.verify(ckpt.latest(run.run_dir))
    assert saved["label_names"] == ["neg", "neu", "pos"]
    assert run.raw_model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert load(_split(labels))["train"].features["label"].names == ["neg", "neu", "pos"]


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_H3g_nan_labels_are_listed(tmp_path, model_calls, missing):
    numeric = missing is not None
    labels = [missing if i in (2, 5, 9) else (i % 3 if numeric else ("a", "b", "c")[i % 3]) for i in range(512)]
    message = _run_error(tmp_path, _dsd(_split(labels)), model_calls)
    assert "column 'label' has no label (None/NaN) in 3 rows (first row indices: [2, 5, 9])" in message
    frame = pd.DataFrame({"text": _texts(), "label": labels})
    err = _load_error_in_memory(frame)
    assert "the DataFrame, row 2, column 'label': found an empty value in 3 rows (row 2, row 5, row 9)" in err
    with pytest.warns(DataLoadWarning):
        ds = load(frame, strict=False)
    assert ds.load_report.skipped_rows() == "skipped 3 of 512 rows (rows 2, 5, 9)"


def test_H3h_a_single_class_warns(tmp_path):
    with pytest.warns(DataWarning, match=r"the train split has a single class \('pos' in all 512 rows\)"):
        run = _run(tmp_path, _dsd(_split(["pos"] * 512)))
    assert run.data.label_names == ["pos"]
    assert run.raw_model.config.problem_type == "single_label_classification"  # not regression for 1 label


def test_H3i_zero_examples_after_filtering_empty_text():
    frame = pd.DataFrame({"text": [""] * 256 + ["   "] * 256, "label": ["a", "b"] * 256})
    with pytest.raises(DataLoadError) as info:
        load(frame, strict=False)
    assert "0 examples after filtering (removed 512 rows: empty text)" in str(info.value)


@pytest.mark.gpu
def test_H3_gpu_bad_labels_never_reach_cuda(tmp_path, model_calls):
    feature = datasets.ClassLabel(names=["neg", "neu", "pos"])
    train = _split([3 if i % 100 == 7 else i % 3 for i in range(512)], feature)
    _run_error(tmp_path, _dsd(train, train.select(range(3))), model_calls, "train.precision=auto")
    assert torch.ones(1, device="cuda").item() == 1.0  # no device-side assert poisoned the context
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ H4 tiny data
class _Steps:
    def __init__(self):
        self.records = []

    def write(self, record):
        if record.get("kind") == "step":
            self.records.append(record)

    def close(self):
        pass


def test_H4_three_rows_batch_8_ten_epochs_is_ten_steps(tmp_path):
    train = _split(["a", "b", "a"])
    cfg = RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}", "train.num_train_epochs=10",
                                             "train.warmup_ratio=0.1", "train.scheduler=linear"])
    sink = _Steps()
    run = Run(cfg, _dsd(train, train), sinks=[sink], run_dir=tmp_path / "run")
    assert (run.steps_per_epoch, run.total_steps) == (1, 10)  # the schedule's total
    run.start()
    assert run.error is None and run.state.status == "finished"
    assert run.state.step == 10 and run.scheduler.last_epoch == 10
    assert [r["step"] for r in sink.records] == list(range(1, 11))
    assert run.optimizer.param_groups[0]["lr"] == 0.0  # the linear decay ended exactly at step 10


def test_H4_zero_rows_are_refused_before_training(tmp_path, model_calls):
    empty = datasets.Dataset.from_dict({"text": [], "label": []})
    message = _run_error(tmp_path, _dsd(empty, _split(["a"])), model_calls)
    assert "the 'train' split is empty" in message
    one = _run_error(tmp_path, datasets.Dataset.from_dict({"text": ["only"], "label": ["a"]}), model_calls)
    assert "has 1 row and there is no 'validation' split" in one  # not datasets' n_samples ValueError
    with pytest.raises(DataError, match="the 'validation' split is empty"):
        _run(tmp_path, _dsd(_split(["a", "b"]), empty))
