"""Label store (append-only JSONL, torn lines, undo, several annotators, merge), agreement against hand
computation, and the mislabel queue on toy data with a flipped label."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from nbtune.data.annotate import (LabelStore, LabelStoreError, TornLineWarning, agreement, kappa_band,
                                  likely_mislabelled, read_records)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the store ----
def test_each_action_is_one_complete_json_line(tmp_path):
    store = LabelStore(tmp_path / "sub" / "labels.jsonl", annotator="ana")
    store.label("a", "héllo", "spam")
    store.skip("b", "world")
    lines = _lines(store.path)
    assert [set(line) for line in lines] == [{"item_id", "text_sha1", "label", "annotator", "time", "action"}] * 2
    assert [(l["item_id"], l["label"], l["action"], l["annotator"]) for l in lines] == [
        ("a", "spam", "label", "ana"), ("b", None, "skip", "ana")]
    assert lines[0]["text_sha1"] == hashlib.sha1("héllo".encode()).hexdigest()
    assert store.path.read_bytes().endswith(b"\n")


def test_append_uses_o_append_and_fsync(tmp_path, monkeypatch):
    flags, synced = [], []
    real_open, real_fsync = os.open, os.fsync
    monkeypatch.setattr(os, "open", lambda p, f, *a: (flags.append((str(p), f)), real_open(p, f, *a))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = LabelStore(tmp_path / "labels.jsonl", annotator="ana")
    store.label("a", "x", "spam")
    file_flags = [f for p, f in flags if p.endswith("labels.jsonl")]
    assert len(file_flags) == 1 and file_flags[0] & os.O_APPEND and file_flags[0] & os.O_CREAT
    assert len(synced) >= 1


def test_torn_last_line_is_skipped_with_a_warning_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path, annotator="ana")
    store.label("a", "x", "spam")
    store.label("b", "y", "ham")
    with open(path, "ab") as f:
        f.write(b'{"item_id": "c", "text_sha1": "ab')          # a crash mid-write
    with pytest.warns(TornLineWarning, match=r"line 3: incomplete last line"):
        log = read_records(path)
    assert [r.item_id for r in log] == ["a", "b"]
    assert len(log.notes) == 1 and "labels.jsonl, line 3" in log.notes[0]

    with pytest.warns(TornLineWarning):
        resumed = LabelStore(path, annotator="ana")
        assert resumed.current_labels() == {"a": "spam", "b": "ham"}
    resumed.label("c", "z", "spam")                          # must not glue onto the torn fragment
    assert [l["item_id"] for l in _lines(path)] == ["a", "b", "c"]
    assert any("removed an incomplete last line" in n for n in resumed.notes)


def test_a_bad_line_in_the_middle_is_an_error_naming_file_line_and_field(tmp_path):
    path = tmp_path / "labels.jsonl"
    good = {"item_id": "a", "text_sha1": "0", "label": "x", "annotator": "ana", "time": "t", "action": "label"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, action="relabel")) + "\n")
    with pytest.raises(LabelStoreError, match=r"labels\.jsonl, line 2, field 'action': found 'relabel'; "
                                              r"expected one of label, skip, undo"):
        read_records(path)
    path.write_text("not json\n" + json.dumps(good) + "\n")
    with pytest.raises(LabelStoreError, match=r"line 1: found 'not json'"):
        read_records(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "annotator"}) + "\n")
    with pytest.raises(LabelStoreError, match=r"line 1: missing field\(s\) annotator"):
        read_records(path)


def test_undo_reverts_the_latest_action_in_force(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl", annotator="ana")
    assert store.undo() is None and not store.path.exists()   # nothing to undo writes nothing
    store.label("a", "x", "spam")
    store.label("b", "y", "ham")
    store.skip("c", "z")
    assert store.undo().item_id == "c"
    undone = store.undo()
    assert (undone.item_id, undone.label) == ("b", "ham")
    assert store.current_labels() == {"a": "spam"}
    store.label("b", "y", "spam")
    store.label("b", "y", "ham")                              # relabel: the latest wins, undo restores
    assert store.current_labels() == {"a": "spam", "b": "ham"}
    store.undo()
    assert store.current_labels() == {"a": "spam", "b": "spam"}
    assert [l["action"] for l in _lines(store.path)] == ["label", "label", "skip", "undo", "undo", "label",
                                                         "label", "undo"]
    # a fresh store on the same file resolves to the same state (and can keep undoing)
    again = LabelStore(store.path, annotator="ana")
    assert again.state.labels() == {"a": "spam", "b": "spam"}
    assert again.undo().item_id == "b" and again.current_labels() == {"a": "spam"}


def test_two_annotators_share_one_file(tmp_path):
    path = tmp_path / "shared.jsonl"
    ana, ben = LabelStore(path, "ana"), LabelStore(path, "ben")
    ana.label("1", "t1", "x")
    ben.label("1", "t1", "y")
    ben.label("2", "t2", "x")
    ana.undo()                                                # ana's undo leaves ben's labels alone
    assert ana.current_labels() == {}
    assert ben.current_labels() == {"1": "y", "2": "x"}
    assert ana.current_labels("ben") == {"1": "y", "2": "x"}
    assert read_records(path).current_labels() == {"ana": {}, "ben": {"1": "y", "2": "x"}}


def test_merge_reads_one_file_per_annotator(tmp_path):
    LabelStore(tmp_path / "ana.jsonl", "ana").label("1", "t1", "x")
    ben = LabelStore(tmp_path / "ben.jsonl", "ben")
    ben.label("1", "t1", "x")
    ben.label("2", "t2", "y")
    log = LabelStore.merge([tmp_path / "ana.jsonl", tmp_path / "ben.jsonl"])
    assert log.annotators == ("ana", "ben") and len(log) == 3 and log.notes == ()
    assert log.current_labels() == {"ana": {"1": "x"}, "ben": {"1": "x", "2": "y"}}
    LabelStore(tmp_path / "more.jsonl", "ben").label("3", "t3", "x")
    log = LabelStore.merge([tmp_path / "ben.jsonl", tmp_path / "more.jsonl"])
    assert log.current_labels()["ben"] == {"1": "x", "2": "y", "3": "x"}
    assert any("'ben' appears in" in n for n in log.notes)
    with pytest.raises(ValueError, match="at least one"):
        LabelStore.merge([])


# ---- agreement ----
def test_cohen_kappa_matches_hand_computation():
    # ana/ben on 10 shared items: both yes 5, ana yes & ben no 1, ana no & ben yes 1, both no 3.
    # p_o = 8/10; p_e = (6/10)(6/10) + (4/10)(4/10) = 0.52; kappa = (0.8 - 0.52) / 0.48 = 7/12
    ana = list("yyyyyynnnn")
    ben = list("yyyyynynnn")
    data = {"ana": {str(i): l for i, l in enumerate(ana)} | {"extra": "y"},   # only ana: left out
            "ben": {str(i): l for i, l in enumerate(ben)}}
    res = agreement(data, ["y", "n"])
    pair = res.pair("ana", "ben")
    assert pair.n_items == 10
    assert pair.observed_agreement == pytest.approx(0.8)
    assert pair.kappa == pytest.approx(7 / 12)
    assert pair.band == "moderate"
    assert res.fleiss_kappa is None and res.items_per_annotator == {"ana": 11, "ben": 10}
    assert "kappa 0.583 (moderate) on 10 shared items" in res.summary()


def test_fleiss_and_pairs_on_store_records_match_hand_computation(tmp_path):
    # Items 1-4 by all three; item 5 by ana and ben only. ana relabels item 2 after an undo.
    path = tmp_path / "shared.jsonl"
    stores = {a: LabelStore(path, a) for a in ("ana", "ben", "cat")}
    rows = {"ana": "xxyxx", "ben": "xxyyx", "cat": "xyyy"}
    for who, labels in rows.items():
        for i, label in enumerate(labels, start=1):
            if who == "ana" and i == 2:
                stores[who].label("2", "t2", "y")
                stores[who].undo()
            stores[who].label(str(i), f"t{i}", label)
    res = agreement(stores["ana"], ["x", "y"])
    # Fleiss on items 1-4 (3 raters): per-item agreement P_i = 1, 1/3, 1, 1/3 -> P_bar = 2/3;
    # category shares p_x = p_y = 6/12 -> P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert res.fleiss_n_items == 4
    assert res.fleiss_kappa == pytest.approx(1 / 3)
    assert res.fleiss_band == "fair"
    # ana vs ben on items 1-5: p_o = 4/5; p_e = (4/5)(3/5) + (1/5)(2/5) = 14/25; kappa = (0.8 - 0.56)/0.44 = 6/11
    ab = res.pair("ana", "ben")
    assert (ab.n_items, ab.kappa) == (5, pytest.approx(6 / 11))
    # ana vs cat on items 1-4: ana xxyx, cat xyyy: p_o = 2/4; p_e = (3/4)(1/4) + (1/4)(3/4) = 3/8;
    # kappa = (1/2 - 3/8) / (5/8) = 1/5
    ac = res.pair("ana", "cat")
    assert (ac.n_items, ac.kappa, ac.band) == (4, pytest.approx(0.2), "slight")
    assert res.annotators == ("ana", "ben", "cat")


def test_agreement_reports_undefined_and_bad_labels():
    res = agreement({"a": {"1": "x", "2": "x"}, "b": {"1": "x", "2": "x"}, "c": {"9": "y"}}, ["x", "y"])
    assert res.pair("a", "b").kappa is None and res.pair("a", "b").band == "undefined"
    assert res.pair("a", "b").observed_agreement == 1.0
    assert res.pair("a", "c").n_items == 0
    assert any("a vs c: kappa undefined (no items labelled by both)" == n for n in res.notes)
    assert any("no item was labelled by every annotator" in n for n in res.notes)
    with pytest.raises(ValueError, match=r"annotator 'b' used label\(s\) \['z'\] that are not in labels"):
        agreement({"a": {"1": "x"}, "b": {"1": "z"}}, ["x", "y"])


@pytest.mark.parametrize("kappa,band", [(-0.2, "poor"), (0.0, "slight"), (0.1, "slight"), (0.3, "fair"),
                                        (0.5, "moderate"), (0.7, "substantial"), (0.95, "almost perfect")])
def test_landis_koch_bands(kappa, band):
    assert kappa_band(kappa) == band


# ---- the mislabel queue ----
def _toy(n=20, flipped=7):
    """n texts of two well-separated classes; the 'model' is confident and right; label `flipped` is wrong."""
    true = np.array([i % 2 for i in range(n)])
    probs = np.where(true[:, None] == np.arange(2)[None, :], 0.9, 0.1)
    probs[3] = [0.6, 0.4]             # item 3 (class 1) is right but uncertain: suspicion 1 - 0.4 = 0.6
    labels = true.copy()
    labels[flipped] = 1 - labels[flipped]
    return [f"text {i}" for i in range(n)], labels, probs, true


def test_cleanlab_puts_the_flipped_label_first_and_suggests_the_true_one():
    texts, labels, probs, true = _toy()
    q = likely_mislabelled(texts, labels, pred_probs=probs, k=3)
    assert q.method == "cleanlab self-confidence"
    assert q.indices[0] == 7 and q.indices[1] == 3
    assert q.scores[0] == pytest.approx(0.9) and q.scores[1] == pytest.approx(0.6)
    assert q.given[0] == labels[7] and q.suggested[0] == true[7]
    assert q.flagged[0] is True
    assert q.texts[0] == "text 7" and len(q) == 3
    named = likely_mislabelled(texts, [["ham", "spam"][l] for l in labels], pred_probs=probs, k=1,
                               label_names=["ham", "spam"])
    assert named.rows()[0] | {"score": None, "flagged": None} == {
        "index": 7, "score": None, "given": "ham", "suggested": "spam", "flagged": None, "text": "text 7"}


def test_losses_rank_when_there_are_no_probabilities():
    texts, labels, _, _ = _toy()
    losses = np.full(20, 0.1)
    losses[7], losses[12] = 3.0, 1.0
    q = likely_mislabelled(texts, labels, losses=losses, k=2)
    assert q.method == "loss" and q.indices == (7, 12) and q.scores == (3.0, 1.0)
    assert q.suggested == (None, None) and q.flagged == (None, None)


def test_queue_errors_name_the_problem():
    texts, labels, probs, _ = _toy()
    with pytest.raises(ValueError, match=r"needs pred_probs \(n, K\) or losses"):
        likely_mislabelled(texts, labels)
    with pytest.raises(ValueError, match=r"labels has 19 entries but texts has 20"):
        likely_mislabelled(texts, labels[:19], losses=np.ones(20))
    with pytest.raises(ValueError, match=r"pred_probs has shape \(19, 2\); expected \(20, K\)"):
        likely_mislabelled(texts, labels, pred_probs=probs[:19])
    bad = probs.copy()
    bad[5] = [0.9, 0.9]
    with pytest.raises(ValueError, match=r"pred_probs, row 5: found \[0.9, 0.9\]"):
        likely_mislabelled(texts, labels, pred_probs=bad)
    with pytest.raises(ValueError, match=r"losses, row 2: found nan"):
        likely_mislabelled(texts, labels, losses=[0.1, 0.2, float("nan")] + [0.1] * 17)
    with pytest.raises(ValueError, match=r"labels, row 0: found 'eggs'; expected one of \['ham', 'spam'\]"):
        likely_mislabelled(texts, ["eggs"] * 20, losses=np.ones(20), label_names=["ham", "spam"])
    with pytest.raises(ValueError, match=r"expected class indices 0..K-1, or pass label_names"):
        likely_mislabelled(texts, ["ham"] * 20, losses=np.ones(20))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        likely_mislabelled(texts, labels, losses=np.ones(20), k=0)
