"""nbtune.data.inspect: every pure summary against hand-made rows with hand-computed answers."""
from __future__ import annotations

import math
import re

import datasets
import numpy as np
import pytest

from nbtune import assets
from nbtune.data import dedup
from nbtune.data.inspect import (CONTROL, DUPLICATE, EMAIL, EMPTY, FLAG_NAMES, HTML, LEAKED, NEAR_DUPLICATE, NUMBER,
                                 RARE_CHAR, TRUNCATED, URL, InspectError, duplicates, inspect, join_tokens,
                                 label_distribution, leakage, script_mix, supervision_view, text_flags,
                                 token_lengths)

LONG = " ".join(f"word{i}" for i in range(40))            # 38 word 3-shingles
LONG_NEAR = " ".join(f"word{i}" for i in range(39)) + " other"   # last shingle differs: Jaccard 37/39
SEVEN = ["The cat sat on the mat today", "the  CAT sat on the mat   TODAY", LONG,
         "Completely unrelated words about dogs", "The cat sat on the mat today", LONG_NEAR, "Something else entirely"]
SEVEN_LABELS = ["a", "a", "a", "a", "b", "a", "c"]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(assets.resolve_model("minilm").tokenizer_path)


def test_flag_bits_are_distinct_powers_of_two():
    bits = list(FLAG_NAMES.values())
    assert sorted(bits) == [1 << i for i in range(11)]
    assert FLAG_NAMES["duplicate"] == DUPLICATE == 1 and FLAG_NAMES["empty"] == EMPTY == 1 << 10
    assert FLAG_NAMES["leaked"] == LEAKED and FLAG_NAMES["truncated"] == TRUNCATED


# ------------------------------------------------------------------------------------------------- labels
def test_label_distribution_counts_ratio_and_zeros_kept():
    ds = {"train": {"text": SEVEN, "label": SEVEN_LABELS}, "validation": {"text": ["x", "y"], "label": ["a", "a"]}}
    d = label_distribution(ds)
    assert d.label_names == ["a", "b", "c"]
    assert d.counts == {"train": {"a": 5, "b": 1, "c": 1}, "validation": {"a": 2, "b": 0, "c": 0}}
    assert d.imbalance_ratio == 5.0 and d.majority == "a" and d.minority == "b"


def test_label_distribution_class_label_names_and_missing_column():
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "neu", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [2, 2, 2, 0]}, features=features)
    d = label_distribution(ds)
    assert d.counts == {"train": {"neg": 1, "neu": 0, "pos": 3}}      # neu has no rows: kept, not the minority
    assert d.imbalance_ratio == 3.0 and d.minority == "neg"
    with pytest.raises(InspectError, match=r"column 'labels' not found; the columns are \['text', 'label'\]. "
                                           r"Did you mean 'label'\?"):
        label_distribution(ds, label="labels")


def test_bundled_sms_spam_imbalance_matches_its_label_column():
    ds = assets.load_dataset("sms-spam")
    counts = np.bincount(np.asarray(ds["train"]["label"]))
    report = inspect(ds)
    assert report.label_distribution.imbalance_ratio == pytest.approx(counts.max() / counts.min())
    assert report.label_distribution.majority == "ham" and report.label_distribution.minority == "spam"
    assert report.label_distribution.counts["train"] == {"ham": int(counts[0]), "spam": int(counts[1])}
    assert len(report.texts) == sum(len(s) for s in ds.values()) == len(report.flags)


# ------------------------------------------------------------------------------------------------ lengths
def test_token_lengths_match_the_tokenizer_and_truncation_rate(minilm):
    texts = ["Hello world", "The quick brown fox jumps over the lazy dog.", "Tokenization splits unbelievably words"]
    own = [len(minilm(t)["input_ids"]) for t in texts]
    stats = token_lengths(texts, minilm, max_length=6)
    assert stats.lengths.tolist() == own and stats.lengths.dtype == np.int32
    assert own[0] == 4                                   # [CLS] hello world [SEP]
    assert stats.truncation_rate == pytest.approx(sum(n > 6 for n in own) / 3) and stats.unit == "tokens"
    assert stats.percentiles[100] == max(own)
    assert token_lengths(["word " * 600], minilm, max_length=512).lengths.tolist() == [602]   # never truncated


def test_token_lengths_of_word_lists_follow_the_engines_split_words(minilm):
    rows = [["EU", "rejects", "German", "call"], ["本报", "北京"]]
    own = [len(minilm(r, is_split_into_words=True)["input_ids"]) for r in rows]
    assert token_lengths(rows, minilm).lengths.tolist() == own


def test_character_lengths_percentiles_and_histogram():
    stats = token_lengths(["ab", "", "你好吗"], max_length=2)
    assert stats.lengths.tolist() == [2, 0, 3] and stats.unit == "characters"
    assert stats.truncation_rate == pytest.approx(1 / 3)
    edges, counts = stats.histogram
    assert edges.tolist() == [0, 1, 2, 3, 4] and counts.tolist() == [1, 0, 1, 1]
    wide = token_lengths(["x" * n for n in range(1, 101)])
    assert wide.percentiles[50] == 50.5 and wide.percentiles[100] == 100.0 and wide.truncation_rate == 0.0
    edges, counts = token_lengths(["x" * n for n in range(200)]).histogram
    assert len(counts) == 50 and counts.sum() == 200 and edges[0] == 0 and edges[-1] == 199
    empty = token_lengths([])
    assert len(empty.lengths) == 0 and math.isnan(empty.percentiles[50])


# --------------------------------------------------------------------------------------------- duplicates
def test_duplicates_exact_near_conflicts_and_mask():
    r = duplicates(SEVEN, labels=SEVEN_LABELS)
    assert r.exact_groups == [[0, 1, 4]] and r.conflicting_labels == [[0, 1, 4]]
    assert [(i, j) for i, j, _ in r.near_pairs] == [(2, 5)]
    assert r.near_pairs[0][2] >= 0.85 and abs(r.near_pairs[0][2] - 37 / 39) < 0.1
    assert r.mask.tolist() == [0, DUPLICATE, 0, 0, DUPLICATE, NEAR_DUPLICATE, 0]
    assert r.near_checked_rows == 7 and not r.near_capped and r.n_exact_duplicates == 2


def test_duplicates_cap_on_near_rows_is_reported():
    r = duplicates(SEVEN, max_near_rows=5)
    assert r.near_pairs == [] and r.near_checked_rows == 5 and r.near_capped
    assert r.exact_groups == [[0, 1, 4]] and r.conflicting_labels == []   # exact search still covers every row


def test_duplicates_normalise_unicode_and_use_char_grams_for_chinese():
    base = "今天天气很好我们一起去公园散步然后去吃午饭再回家休息一下吧"   # 30 characters: 26 character 5-grams
    r = duplicates([base, base[:-1] + "呢", "ｆｕｌｌ　ＷＩＤＴＨ", "full width", "", ""])
    assert r.exact_groups == [[2, 3]]                    # NFKC + casefold; empty rows are not duplicates
    assert [(i, j) for i, j, _ in r.near_pairs] == [(0, 1)] and abs(r.near_pairs[0][2] - 25 / 27) < 0.1
    assert dedup.shingles("今天天气很好") == ["今天天气很".encode(), "天天气很好".encode()]
    assert dedup.shingles("a b c d") == [b"a b c", b"b c d"] and dedup.shingles("hi") == [b"hi"]


# ------------------------------------------------------------------------------------------------ leakage
def test_leakage_exact_and_near_between_hand_made_splits():
    long80 = " ".join(f"tok{i}" for i in range(80))
    ds = {"train": {"text": ["Hello there", "buy now", "a unique train row", long80]},
          "validation": {"text": ["hello   THERE", "only in validation"]},
          "test": {"text": ["Buy now", "hello there", long80.replace("tok79", "end")]}}
    r = leakage(ds)
    assert r.overlaps == {("train", "validation"): [(0, 0)], ("train", "test"): [(1, 0), (0, 1)],
                          ("validation", "test"): [(0, 1)]}
    assert [(a, b) for a, b, _ in r.near_overlaps[("train", "test")]] == [(3, 2)]
    assert r.near_overlaps[("train", "test")][0][2] >= 0.9
    assert r.near_overlaps[("train", "validation")] == [] == r.near_overlaps[("validation", "test")]
    assert r.counts == {"train/validation": 1, "train/test": 3, "validation/test": 1}
    assert {s: m.tolist() for s, m in r.leaked_rows.items()} == {
        "train": [True, True, False, True], "validation": [True, False], "test": [True, True, True]}


def test_near_quota_shares_the_cap_over_splits():
    assert dedup.near_quota([800, 100, 100], 1000) == [800, 100, 100]
    assert dedup.near_quota([800, 100, 100], 300) == [100, 100, 100]
    assert dedup.near_quota([800, 30, 20], 300) == [250, 30, 20]


# ------------------------------------------------------------------------------------------- text flags
FLAG_ROWS = ["a < b and c > d", "<p>Hello</p>", "Tom &amp; Jerry", "AT&T and x<y and y>z",
             "see https://example.org/x now", "write to jane.doe@example.com", "共三百二十个", "一个人十分开心",
             "room 42", "bad\x00byte", "tab\there\nnewline", "zero\u200bwidth", "private \ue000 use",
             "broken \ufffd text", "", "   \n", "二〇二四年", "万一下雨", "go to www.example.com"]


def test_text_flags_counts_mask_and_examples():
    f = text_flags(FLAG_ROWS)
    assert f.counts == {"html": 2, "url": 2, "email": 1, "number": 3, "control": 2, "rare-char": 2, "empty": 2}
    expected = [0, HTML, HTML, 0, URL, EMAIL, NUMBER, 0, NUMBER, CONTROL, 0, CONTROL, RARE_CHAR, RARE_CHAR,
                EMPTY, EMPTY, NUMBER, 0, URL]
    assert f.mask.tolist() == expected
    assert f.examples["html"] == [(1, "<p>Hello</p>"), (2, "Tom &amp; Jerry")]
    assert f.examples["control"][0] == (9, "bad\\x00byte")           # invisible characters shown escaped
    assert f.examples["rare-char"][0] == (12, "private \\ue000 use")
    assert f.examples["empty"] == [(14, ""), (15, "   \\n")]
    assert f.rare_char_max_count == 0                                  # small corpus: nothing is rare by count


def test_rare_characters_by_corpus_count():
    explicit = text_flags(["é", "é", "ü", "abc", "Q"], rare_char_max_count=1)
    assert explicit.mask.tolist() == [0, 0, RARE_CHAR, 0, 0] and explicit.rare_chars == "ü"   # ASCII never rare
    derived = text_flags(["a" * 100_000, "ü"])                         # 100,001 chars: under 1e-5 means once
    assert derived.rare_char_max_count == 1 and derived.mask.tolist() == [0, RARE_CHAR]


# -------------------------------------------------------------------------------------------- script mix
def test_script_mix_dominant_script_per_row():
    rows = ["hello 你好", "hi 你好", "你好", "Привет", "123 !", "こんにちは", "안녕", "مرحبا", "Γεια", ""]
    m = script_mix(rows)
    # "hello 你好": 5 of 7 letters Latin (71% > 70%); "hi 你好": 2 of 4 (50%): Mixed
    assert [m.names[c] for c in m.per_row] == ["Latin", "Mixed", "Han", "Cyrillic", "None", "Kana", "Hangul",
                                               "Arabic", "Other", "None"]
    assert m.counts == {"Latin": 1, "Han": 1, "Cyrillic": 1, "Arabic": 1, "Hangul": 1, "Kana": 1, "Other": 1,
                        "Mixed": 1, "None": 2}


# ------------------------------------------------------------------------------------------- supervision
@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(assets.resolve_model("smollm2").tokenizer_path)


def test_supervision_view_masks_the_prompt_and_supervises_the_answer(smollm2):
    row = assets.load_dataset("chatterbot-sft")["train"][0]
    messages = row["messages"]
    prompt = smollm2.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    full = smollm2.apply_chat_template(messages, tokenize=True)["input_ids"]
    v = supervision_view(row, smollm2)
    assert v.token_ids == list(full) and v.n_masked == len(prompt) and v.n_supervised == len(full) - len(prompt)
    assert v.supervised == [False] * len(prompt) + [True] * (len(full) - len(prompt))
    answer = "".join(t for t, s in zip(v.tokens, v.supervised) if s)
    assert answer.startswith(messages[-1]["content"])
    assert messages[0]["content"] in "".join(t for t, s in zip(v.tokens, v.supervised) if not s)


def test_supervision_view_html_is_escaped_and_plain_text_is_all_supervised(smollm2):
    v = supervision_view({"messages": [{"role": "user", "content": "<script>x</script>"},
                                       {"role": "assistant", "content": "a & b"}]}, smollm2)
    page = v._repr_html_()
    assert re.search(r"<(?!/?(div|span|b|br)\b)", page) is None       # every "<" opens one of the view's tags
    assert "&lt;" in page and "&amp;" in page and "<script" not in page
    assert page.count('class="nbtune-tok sup"') == v.n_supervised
    plain = supervision_view({"text": "hello world"}, smollm2, max_length=2)
    assert plain.n_masked == 0 and plain.n_supervised == 2 == len(plain.tokens)


# ---------------------------------------------------------------------------------------------- inspect
def test_inspect_rows_flags_and_layout():
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["ham", "spam"])})

    def split(texts, labels):
        return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)

    ds = datasets.DatasetDict({
        "train": split(["Win a prize now", "win a  PRIZE now", "<b>hello</b>", "plain row here"], [1, 1, 0, 0]),
        "validation": split(["Win a prize now", "ok"], [1, 0]),
        "test": split(["something else", "x" * 20], [0, 1])})
    r = inspect(ds, max_length=14)
    assert r.splits == ["train", "validation", "test"]
    assert r.split_codes.tolist() == [0, 0, 0, 0, 1, 1, 2, 2] and r.split_codes.dtype == np.int8
    assert r.row_in_split.tolist() == [0, 1, 2, 3, 0, 1, 0, 1] and r.row_in_split.dtype == np.int32
    assert r.labels.tolist() == [1, 1, 0, 0, 1, 0, 0, 1] and r.label_names == ["ham", "spam"]
    assert r.lengths.lengths.tolist() == [15, 16, 12, 14, 15, 2, 14, 20] and r.lengths.unit == "characters"
    assert r.rows_with("duplicate").tolist() == [1] and r.duplicates.exact_groups == [[0, 1]]
    assert r.rows_with("leaked").tolist() == [0, 1, 4] and r.leakage.counts["train/validation"] == 1
    assert r.rows_with("html").tolist() == [2]
    assert r.rows_with(TRUNCATED).tolist() == [0, 1, 4, 7]
    assert r.flags.dtype == np.int32 and r.flags[1] == DUPLICATE | LEAKED | TRUNCATED
    assert r.label_distribution.counts["validation"] == {"ham": 1, "spam": 1}
    assert r.texts[4] == "Win a prize now" and set(r.stage_seconds) >= {"lengths", "near", "text_flags"}


def test_inspect_duplicates_stay_within_a_split():
    r = inspect({"train": {"text": ["same text", "other"]}, "test": {"text": ["same text", "same text"]}})
    assert r.duplicates.exact_groups == [[2, 3]]          # global rows; the train copy is leakage, not a duplicate
    assert r.leakage.overlaps[("train", "test")] == [(0, 0), (0, 1)]
    assert r.rows_with("leaked").tolist() == [0, 2, 3]
    assert r.labels.tolist() == [-1, -1, -1, -1] and math.isnan(r.label_distribution.imbalance_ratio)


def test_inspect_tagging_rows_join_words_and_count_tags(minilm):
    ds = {"tokens": [["EU", "rejects", "it"], ["本报", "北京", "讯"]], "tags": [[1, 0, 0], [0, 2, 0]]}
    r = inspect(ds, tokenizer=minilm)
    assert r.texts == ["EU rejects it", "本报北京讯"] and r.labels.tolist() == [-1, -1]
    assert r.label_distribution.per_token and r.label_distribution.counts["train"] == {"0": 4, "1": 1, "2": 1}
    assert r.lengths.lengths.tolist() == [len(minilm(w, is_split_into_words=True)["input_ids"]) for w in ds["tokens"]]
    assert join_tokens(["iPhone", "手机", "和", "Mac"]) == "iPhone手机和Mac"


def test_inspect_errors_name_the_split_row_and_column():
    with pytest.raises(InspectError, match=r"split 'train' row 1 column 'text': found NoneType None, expected text"):
        inspect({"text": ["fine", None]})
    with pytest.raises(InspectError, match=r"split 'test': column 'text' not found; the columns are \['txt'\]. "
                                           r"Did you mean 'txt'\?"):
        inspect({"train": {"text": ["a"]}, "test": {"txt": ["b"]}})
    with pytest.raises(InspectError, match="expected a datasets.DatasetDict, a datasets.Dataset or a dict"):
        inspect(["just", "a", "list"])
