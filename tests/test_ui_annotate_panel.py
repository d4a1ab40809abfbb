"""AnnotatePanel without a browser: key presses -> store lines and position, resume, escaping of every HTML
value, one text at a time, errors shown in the panel. Widgets run comm-less, so traits are read directly."""
from __future__ import annotations

import json

import ipywidgets as widgets
import pytest

from nbtune.ui.panels.annotate import AnnotatePanel
from nbtune.ui.widgets.keys import KeyCapture

TEXTS = [f"message number {i}" for i in range(6)]
LABELS = ["ham", "spam", "other"]
HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "</script>"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tree(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _tree(child)


def _html_values(panel) -> list[str]:
    return [w.value for w in _tree(panel.widget) if isinstance(w, (widgets.HTML, widgets.HTMLMath))]


def _frontend_key(keys: KeyCapture, key: str) -> None:
    """Deliver a key the way the browser does: a custom comm message handled by ipywidgets."""
    keys._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "key", "key": key}}},
                      "buffers": []})


def test_keys_1_2_s_u_1_write_the_right_lines_and_move_the_position(tmp_path):
    path = tmp_path / "labels.jsonl"
    panel = AnnotatePanel(TEXTS, LABELS, path, annotator="ana")
    assert panel.position == 0 and "0 / 6 labelled" in panel.progress_html.value
    assert [panel.press(k) for k in ("1", "2", "s")] == ["label", "label", "skip"]
    assert panel.position == 3
    assert panel.press("u") == "undo"
    assert panel.position == 2                         # back on the skipped item
    assert panel.press("1") == "label"
    assert panel.position == 3
    got = [(l["item_id"], l["action"], l["label"], l["annotator"]) for l in _lines(path)]
    assert got == [("0", "label", "ham", "ana"), ("1", "label", "spam", "ana"), ("2", "skip", None, "ana"),
                   ("2", "undo", None, "ana"), ("2", "label", "ham", "ana")]
    assert panel.store.current_labels() == {"0": "ham", "1": "spam", "2": "ham"}
    assert "3 / 6 labelled" in panel.progress_html.value and "item 4 of 6" in panel.progress_html.value
    assert "message number 3" in panel.text_html.value


def test_browser_key_messages_and_arrow_backspace_aliases(tmp_path):
    panel = AnnotatePanel(TEXTS, LABELS, tmp_path / "labels.jsonl")
    assert set(panel.keys.capture_keys) == {"1", "2", "3", "s", "S", "ArrowRight", "u", "U", "Backspace"}
    _frontend_key(panel.keys, "3")
    _frontend_key(panel.keys, "ArrowRight")
    _frontend_key(panel.keys, "Backspace")
    _frontend_key(panel.keys, "x")                     # not a captured key: ignored
    assert [(l["action"], l["label"]) for l in _lines(panel.store.path)] == [
        ("label", "other"), ("skip", None), ("undo", None)]
    assert panel.position == 1
    assert panel.press("9") is None and "does nothing" in panel.message_html.value  # only 3 labels


def test_buttons_do_what_the_keys_do(tmp_path):
    panel = AnnotatePanel(TEXTS, LABELS, tmp_path / "labels.jsonl")
    assert panel.undo_button.disabled
    panel.label_buttons[1].click()
    panel.skip_button.click()
    panel.undo_button.click()
    assert [l["action"] for l in _lines(panel.store.path)] == ["label", "skip", "undo"]
    assert panel.position == 1 and panel.label_buttons[1].description == "2  spam"
    assert panel.label_buttons[1]._dom_classes == ("nbtune-label-1",)


def test_resume_starts_at_the_first_item_without_an_action(tmp_path):
    path = tmp_path / "labels.jsonl"
    first = AnnotatePanel(TEXTS, LABELS, path, annotator="ana")
    for key in ("1", "s", "2"):
        first.press(key)
    again = AnnotatePanel(TEXTS, LABELS, path, annotator="ana")
    assert again.position == 3 and again.n_labelled == 2 and again.n_skipped == 1
    other = AnnotatePanel(TEXTS, LABELS, path, annotator="ben")   # same file, another annotator
    assert other.position == 0 and other.n_labelled == 0
    assert again.press("u") == "undo" and again.position == 2     # undo reaches into the earlier session


def test_done_state_writes_nothing_more(tmp_path):
    panel = AnnotatePanel(TEXTS[:2], LABELS, tmp_path / "labels.jsonl")
    panel.press("1")
    panel.press("2")
    assert panel.done and "2 / 2 labelled" in panel.progress_html.value
    assert all(b.disabled for b in panel.label_buttons + [panel.skip_button])
    assert panel.press("1") is None and panel.press("s") is None
    assert len(_lines(panel.store.path)) == 2
    assert "All items have an action" in panel.text_html.value
    assert panel.press("u") == "undo" and panel.position == 1 and not panel.done


def test_hostile_texts_labels_and_guideline_are_escaped_everywhere(tmp_path):
    texts = HOSTILE + ["a & b"]
    labels = HOSTILE
    panel = AnnotatePanel(texts, labels, tmp_path / "labels.jsonl", guideline="\n".join(HOSTILE),
                          item_ids=HOSTILE + ["<b>id</b>"])
    seen = []
    for key in ("1", "2", "u", "3", "s", "9"):          # every text; label names in the messages
        seen += _html_values(panel)
        panel.press(key)
    seen += _html_values(panel)
    panel.show_error("boom " + HOSTILE[1])
    seen += _html_values(panel)
    joined = "\n".join(seen)
    for raw in HOSTILE + ["<b>id</b>"]:
        assert raw not in joined, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in joined      # the text itself is shown, escaped
    assert "&lt;img src=x onerror=alert(1)&gt;" in joined           # guideline / label names, escaped
    assert "labelled item 2 as &#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;" in joined  # a label name
    assert "&lt;b&gt;id&lt;/b&gt;" in joined
    # buttons are text nodes in the browser (ipywidgets sets createTextNode); the name is kept verbatim
    assert panel.label_buttons[0].description == "1  <script>alert(1)</script>"


def test_only_the_current_text_reaches_the_widgets(tmp_path):
    texts = [f"secret text {i}" for i in range(5)]
    panel = AnnotatePanel(texts, LABELS, tmp_path / "labels.jsonl")
    panel.press("1")
    state = json.dumps([w.get_state() for w in _tree(panel.widget)], default=str)
    assert "secret text 1" in state
    assert [t for t in texts if t in state] == ["secret text 1"]


def test_keycapture_loads_its_es_module_from_a_file():
    keys = KeyCapture(keys=["1"], hint="1 label")
    esm = keys.get_state()["_esm"]
    assert "export default" in esm and "data-lm-suppress-shortcuts" in esm
    assert ".nbtune-keys-area" in keys.get_state()["_css"]


def test_classes_for_tests_and_styling(tmp_path):
    panel = AnnotatePanel(TEXTS, LABELS, tmp_path / "labels.jsonl", guideline="be kind")
    assert "nbtune-annotate" in panel.widget._dom_classes
    assert "nbtune-annotate-text" in panel.text_html._dom_classes
    assert "nbtune-annotate-keys" in panel.keys._dom_classes
    assert [b._dom_classes for b in panel.label_buttons] == [("nbtune-label-0",), ("nbtune-label-1",),
                                                             ("nbtune-label-2",)]
    assert "be kind" in panel.guideline_html.value and panel.guideline_html in list(_tree(panel.widget))


def test_a_failing_write_is_shown_in_the_panel(tmp_path, monkeypatch):
    panel = AnnotatePanel(TEXTS, LABELS, tmp_path / "labels.jsonl")

    def full(*_a, **_k):
        raise OSError("No space left on device <disk>")
    monkeypatch.setattr(panel.store, "label", full)
    _frontend_key(panel.keys, "1")
    assert panel.error == "OSError: No space left on device <disk>"
    assert "No space left on device &lt;disk&gt;" in panel.message_html.value
    assert panel.position == 0
    panel.label_buttons[0].click()
    assert "No space left" in panel.message_html.value


def test_changed_text_under_a_labelled_id_is_reported(tmp_path):
    path = tmp_path / "labels.jsonl"
    AnnotatePanel(TEXTS, LABELS, path).press("1")
    panel = AnnotatePanel(["a different text"] + TEXTS[1:], LABELS, path)
    assert "labelled with a different text under the same id (first: id &#x27;0&#x27;)" in panel.message_html.value


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(labels=["a", "a"]), ValueError, r"labels must be distinct and non-empty; found \['a', 'a'\]"),
    (dict(labels="ab"), TypeError, r"labels must be a list of names; found the string 'ab'"),
    (dict(labels=["a", ""]), ValueError, r"labels\[1\] is ''; expected a non-empty string"),
    (dict(texts=["ok", 3]), TypeError, r"texts\[1\] is a int \(3\); expected a string"),
    (dict(texts=[]), ValueError, r"texts is empty"),
    (dict(item_ids=["a"]), ValueError, r"item_ids has 1 entries but texts has 6"),
    (dict(item_ids=["a", "b", "a", "c", "d", "e"]), ValueError, r"item_ids\[2\] is 'a', already used by item_ids\[0\]"),
    (dict(annotator=" "), ValueError, r"annotator must be a non-empty string"),
])
def test_bad_arguments_say_what_was_found(tmp_path, kwargs, error, match):
    args = dict(texts=TEXTS, labels=LABELS, store_path=tmp_path / "labels.jsonl") | kwargs
    with pytest.raises(error, match=match):
        AnnotatePanel(**args)


def test_labelled_pairs_feed_a_run(tmp_path):
    from nbtune.ui.panels.annotate import AnnotatePanel
    panel = AnnotatePanel(["a text", "b text", "c text"], labels=["ham", "spam"], store_path=tmp_path / "s.jsonl")
    panel.press("2")
    panel.press("s")
    panel.press("1")
    assert panel.labelled_pairs() == [("a text", "spam"), ("c text", "ham")]
    panel.undo()
    assert panel.labelled_pairs() == [("a text", "spam")]
