"""AttentionView and TokenHeatmap (anywidgets) built from the trigger classifier's real attention and
attributions: payload shapes and row sums, the payload cap on a long text, selection validation, heatmap traits,
and hostile strings carried verbatim (escaping is the ES module's job: textContent)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import traitlets

from nbtune.explain.attention import NOT_AN_EXPLANATION, attention_maps, explain_attention
from nbtune.explain.model import ExplainModel
from nbtune.explain.types import Attribution, Target, Words
from nbtune.ui.widgets.attention import CAPTION, MAX_TOKENS, STATIC, AttentionView, attention_payload
from nbtune.ui.widgets.heatmap import TokenHeatmap
from tests.support.trigger import FILLER, TRIGGER, load_trigger

TEXT = "the lamp zebra is on today"
SPLIT = "the unbelievably quiet lamp zebra"        # "unbelievably" is several word pieces
HOSTILE = ["<img src=x onerror=window.__xss=1>", "<script>window.__xss=2</script>"]


@pytest.fixture(scope="module")
def em(trigger):
    model, tokenizer = load_trigger(trigger.model_dir)
    return ExplainModel(model, tokenizer, "classification", ["alarm", "calm"])


@pytest.fixture(scope="module")
def info(em):
    return attention_maps(em, SPLIT)


def test_piece_level_payload_has_the_maps_shapes_and_rows_sum_to_one(info):
    view = AttentionView.from_info(info, level="piece")
    L, H, T, _ = info.weights.shape
    weights = np.asarray(view.weights)
    assert weights.shape == (L, H, T, T) == (2, 2, T, T) and T > len(info.words) + 2   # a word split in pieces
    assert view.tokens == info.tokens and view.layers == [0, 1] and view.n_heads == 2
    assert np.abs(weights.sum(axis=-1) - 1).max() <= T * 5e-4 + 1e-9          # 3 decimals per value
    assert np.abs(weights - info.weights).max() <= 5e-4 + 1e-7
    assert view.rollout == pytest.approx(info.rollout.tolist(), abs=5e-4)
    assert view.source == "[CLS]" and view.level == "piece" and view.title == SPLIT
    assert view.caption == CAPTION and NOT_AN_EXPLANATION in view.notes
    assert (view.layer, view.head) == (-1, -1)
    assert view.selected() == pytest.approx(weights.mean(axis=(0, 1)))


def test_word_level_merges_pieces_like_merged_words_and_keeps_specials(info):
    view = AttentionView.from_info(info, level="word")
    W = len(info.words)
    assert view.tokens == ["[CLS]", *info.words.words, "[SEP]"]
    weights = np.asarray(view.weights)
    assert weights.shape == (2, 2, W + 2, W + 2)
    assert np.abs(weights.sum(axis=-1) - 1).max() <= (W + 2) * 5e-4 + 1e-9    # specials kept: rows sum to 1
    for layer in info.layers:
        for head in range(2):
            words = weights[layer, head, 1:-1, 1:-1]                           # the word x word block
            assert words == pytest.approx(info.merged_words(layer, head), abs=6e-4)
    assert view.rollout[1:-1] == pytest.approx(info.word_rollout.tolist(), abs=5e-4)
    assert sum(view.rollout) == pytest.approx(1.0, abs=(W + 2) * 5e-4)


def test_the_payload_cap_truncates_a_long_text_and_says_so(em):
    long_text = " ".join(FILLER * 3)                                           # 105 words, > 64 pieces
    info = attention_maps(em, long_text)
    T = len(info.tokens)
    assert T > MAX_TOKENS
    view = AttentionView.from_info(info, level="piece")
    assert np.asarray(view.weights).shape == (2, 2, MAX_TOKENS, MAX_TOKENS) and len(view.tokens) == MAX_TOKENS
    assert view.tokens == info.tokens[:MAX_TOKENS] and len(view.rollout) == MAX_TOKENS
    (note,) = [n for n in view.notes if n.startswith("showing the first")]
    assert f"showing the first {MAX_TOKENS} of {T} pieces" in note
    # the value budget binds too: 2 x 2 maps within 400 values leave 10 x 10
    small = attention_payload(info, "word", max_values=400)
    assert np.asarray(small["weights"]).shape == (2, 2, 10, 10)
    assert any(f"showing the first 10 of {len(info.words) + 2} words" in n for n in small["notes"])
    assert len(json.dumps(view.weights)) < 7.5 * 2 * 2 * MAX_TOKENS ** 2      # ~7 bytes of JSON per value
    short = AttentionView.from_info(attention_maps(em, TEXT))
    assert not [n for n in short.notes if n.startswith("showing")]


def test_selection_traits_validate_their_range(info):
    view = AttentionView.from_info(info, level="word")
    view.layer, view.head = 1, 0
    assert view.selected() == pytest.approx(np.asarray(view.weights)[1, 0])
    with pytest.raises(traitlets.TraitError, match=r"layer=2 is not shown: pick one of the model layers \[0, 1\]"):
        view.layer = 2
    with pytest.raises(traitlets.TraitError, match=r"head=5 is outside 0\.\.1"):
        view.head = 5
    with pytest.raises(traitlets.TraitError, match="head=-3"):
        view.head = -3
    assert (view.layer, view.head) == (1, 0)                                   # a refused value changes nothing
    view.layer = -1
    assert view.selected() == pytest.approx(np.asarray(view.weights)[:, 0].mean(axis=0))
    with pytest.raises(traitlets.TraitError, match="layer=4"):
        AttentionView.from_info(info, layer=4)
    with pytest.raises(ValueError, match=r"level='pieces': expected one of \('word', 'piece'\)"):
        AttentionView.from_info(info, level="pieces")


def test_update_from_keeps_a_valid_selection_and_resets_a_gone_one(em, info):
    view = AttentionView.from_info(info, level="word")
    view.layer, view.head = 1, 1
    last_only = attention_maps(em, TEXT, layers=[-1])
    view.update_from(last_only)
    assert view.layers == [1] and (view.layer, view.head) == (1, 1) and view.title == TEXT
    first_only = attention_maps(em, TEXT, layers=[0])
    view.update_from(first_only, level="piece")
    assert view.layers == [0] and (view.layer, view.head) == (-1, 1) and view.tokens == first_only.tokens


def test_heatmap_traits_match_the_attribution(em):
    att = explain_attention(em, TEXT)
    heat = TokenHeatmap.from_attribution(att)
    assert heat.words == TEXT.split() and heat.scores == pytest.approx(att.scores.tolist())
    assert heat.method == "attention" and heat.target == att.target.describe() == "alarm"
    assert heat.notes == att.notes and heat.words[int(np.argmax(heat.scores))] == TRIGGER
    other = Attribution("lime", att.words, -att.scores, att.target, model_score=0.9, notes=["budget 100"])
    heat.update_from(other)
    assert heat.method == "lime" and heat.notes == ["budget 100"]
    assert heat.scores == pytest.approx((-att.scores).tolist())
    with pytest.raises(traitlets.TraitError, match="2 scores for 6 words"):
        heat.scores = [0.1, 0.2]


def test_heatmap_shows_non_finite_scores_as_zero_with_a_note(em):
    att = explain_attention(em, TEXT)
    scores = att.scores.copy()
    scores[[0, 3]] = [np.nan, np.inf]
    heat = TokenHeatmap.from_attribution(Attribution("ig", att.words, scores, att.target, model_score=0.5))
    assert heat.scores[0] == 0.0 and heat.scores[3] == 0.0 and heat.scores[2] == pytest.approx(scores[2])
    assert heat.notes == ["2 score(s) were not finite (NaN/inf) and are shown as 0"]


def test_hostile_strings_are_carried_verbatim(em):
    text = " ".join(["the", HOSTILE[0], "zebra", HOSTILE[1]])
    spans, at = [], 0
    for word in ["the", *HOSTILE[:1], "zebra", *HOSTILE[1:]]:
        at = text.index(word, at)
        spans.append((at, at + len(word)))
        at += len(word)
    words = Words(text, ["the", HOSTILE[0], "zebra", HOSTILE[1]], spans)
    heat = TokenHeatmap.from_attribution(Attribution("shap", words, [0.0, -0.2, 0.9, 0.1],
                                                     Target("classification", 0, "<b>alarm</b>"), 0.99))
    assert heat.words == words.words and heat.target == "<b>alarm</b>"
    view = AttentionView.from_info(attention_maps(em, text), level="piece")
    assert view.title == text and "<" in view.tokens and "script" in view.tokens
    state = heat.get_state()
    assert state["words"][1] == HOSTILE[0] and state["words"][3] == HOSTILE[1]


def test_es_modules_write_text_only_and_load_nothing_remote():
    for name in ("attention.js", "heatmap.js"):
        source = (STATIC / name).read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source and "eval(" not in source
        assert "import " not in source and "http" not in source.replace("http://www.w3.org/2000/svg", "")
        assert "textContent" in source and "export default { render }" in source
