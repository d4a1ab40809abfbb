"""Attention maps, rollout and their word-level views, on random tiny BERT (classification, token
classification) and Llama (causal, grouped-query attention) models built from the bundled presets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from nbtune.explain.attention import NOT_AN_EXPLANATION, attention_maps, explain_attention, rollout
from nbtune.explain.model import ExplainModel
from nbtune.explain.types import ExplainError
from tests.support.tiny_explain import tiny_explain_model as _tiny

TEXT = "turn on the kitchen lights"
SPLIT = "the unbelievably quiet lamp"      # "unbelievably" is several word pieces


@pytest.fixture(scope="module")
def bert():
    return _tiny("classification")


@pytest.fixture(scope="module")
def llama():
    return _tiny("causal-lm")


def test_maps_rollout_and_specials(bert):
    info = attention_maps(bert, TEXT)
    cfg = bert.model.config
    assert info.tokens == ["[CLS]", "turn", "on", "the", "kitchen", "lights", "[SEP]"]
    assert info.weights.shape == (cfg.num_hidden_layers, cfg.num_attention_heads, 7, 7) and info.layers == [0, 1]
    assert np.allclose(info.weights.sum(axis=-1), 1.0, atol=1e-5) and (info.weights >= 0).all()
    assert info.special.tolist() == [True, False, False, False, False, False, True]
    assert info.word_of_piece == [None, 0, 1, 2, 3, 4, None] and info.source == 0
    assert info.rollout.shape == (7,) and info.rollout.sum() == pytest.approx(1.0) and (info.rollout > 0).all()
    assert len(info.word_rollout) == len(info.words) == 5
    assert info.word_rollout.sum() == pytest.approx(1.0 - info.rollout[info.special].sum())
    assert info.word_rollout.tolist() == pytest.approx(info.rollout[1:6].tolist())
    assert NOT_AN_EXPLANATION in info.notes and any("rests on special tokens" in n for n in info.notes)


def test_rollout_is_the_product_of_the_averaged_layers(bert):
    info = attention_maps(bert, TEXT)
    first, second = (w.mean(axis=0) + np.eye(7) for w in info.weights)      # heads averaged, residual added
    first, second = first / first.sum(1, keepdims=True), second / second.sum(1, keepdims=True)
    assert info.rollout == pytest.approx((second @ first)[0])
    keep = np.ones(7, dtype=bool)
    keep[5] = False                                                          # as if "lights" were padding
    flow = rollout(info.weights, keep)
    assert np.allclose(flow.sum(axis=1), 1.0) and flow[0, 5] == 0.0 and flow[5, 5] > 0


def test_attention_mode_and_implementation_are_restored(bert):
    model = bert.model
    assert model.config._attn_implementation == "sdpa"      # transformers' default: returns no weights
    model.train()
    try:
        info = attention_maps(bert, TEXT)
        assert model.training and model.config._attn_implementation == "sdpa"
    finally:
        model.eval()
    assert np.isfinite(info.weights).all() and all(p.grad is None for p in model.parameters())


def test_merged_words_sum_pieces_into_targets_and_average_sources(bert):
    info = attention_maps(bert, SPLIT)
    pieces = [t for t, w in enumerate(info.word_of_piece) if w == 1]
    assert len(pieces) > 1, info.tokens
    grid = info.merged_words(1, 0)
    assert grid.shape == (4, 4)
    head = info.weights[1, 0]                                                # (T, T)
    lamp = info.word_of_piece.index(3)
    assert grid[1, 3] == pytest.approx(head[pieces, lamp].mean())           # from a split word: mean of its pieces
    assert grid[3, 1] == pytest.approx(head[lamp, pieces].sum())            # to a split word: sum of its pieces
    to_specials = head[:, info.special].sum(axis=1)                          # (T,)
    assert grid[1].sum() == pytest.approx(1.0 - to_specials[pieces].mean())
    assert info.merged_words(0).shape == (4, 4)                              # head None: mean over heads
    with pytest.raises(ExplainError, match="head=5 is outside 0..1"):
        info.merged_words(0, 5)


def test_layers_select_maps_but_rollout_uses_all(bert):
    full = attention_maps(bert, TEXT)
    last = attention_maps(bert, TEXT, layers=[-1])
    assert last.layers == [1] and last.weights.shape == (1, 2, 7, 7)
    assert np.array_equal(last.weights[0], full.weights[1]) and np.allclose(last.rollout, full.rollout)
    with pytest.raises(ExplainError, match="layer 0 is not in this AttentionInfo"):
        last.merged_words(0)
    with pytest.raises(ExplainError, match="layers=\\[2\\]: the model has layers 0..1"):
        attention_maps(bert, TEXT, layers=[2])


def test_long_texts_are_truncated_with_a_note(bert):
    short = ExplainModel(bert.model, bert.tokenizer, "classification", bert.label_names, max_length=6)
    info = attention_maps(short, TEXT)
    assert info.truncated and info.tokens == ["[CLS]", "turn", "on", "the", "kitchen", "[SEP]"]
    assert info.weights.shape == (2, 2, 6, 6) and info.word_rollout[4] == 0 and len(info.word_rollout) == 5
    assert "truncated at max_length 6: words past it have no attention" in info.notes
    long_text = " ".join(["lights"] * 300)                  # tiny-bert has 128 positions, em.max_length is 512
    assert attention_maps(bert, long_text).weights.shape[-1] == 128


def test_causal_model_rolls_out_from_the_last_piece(llama):
    info = attention_maps(llama, TEXT)
    cfg = llama.model.config
    assert info.weights.shape == (cfg.num_hidden_layers, cfg.num_attention_heads, 7, 7)   # 4 query heads (GQA)
    assert np.allclose(info.weights.sum(axis=-1), 1.0, atol=1e-5)
    assert np.allclose(np.triu(info.weights, k=1), 0.0)                     # causal: nothing after the query
    assert info.source == 6 and info.rollout.sum() == pytest.approx(1.0)
    assert info.rollout == pytest.approx(rollout(info.weights)[6])
    assert llama.model.config._attn_implementation == "sdpa"


def test_explain_attention_returns_the_word_rollout(bert, llama):
    att = explain_attention(bert, TEXT)
    info = att.extras["info"]
    assert att.method == "attention" and att.evaluations == 1 and len(att.scores) == 5
    assert att.scores.tolist() == pytest.approx(info.word_rollout.tolist())
    assert NOT_AN_EXPLANATION in att.notes and "the scores do not depend on the target" in att.notes
    other = explain_attention(bert, TEXT, target=(att.target.index + 1) % 3)
    assert np.array_equal(other.scores, att.scores) and other.model_score != att.model_score
    lm = explain_attention(llama, TEXT, continuation=" now")
    assert lm.model_score == pytest.approx(float(llama.score_texts([TEXT], lm.target)[0]), abs=1e-5)
    assert len(lm.scores) == 5 and np.isfinite(lm.scores).all()


def test_token_classification_rolls_out_from_the_word():
    em = _tiny("token-classification")
    att = explain_attention(em, TEXT, target="B-LOC", word=3)
    info = att.extras["info"]
    assert info.source == 4 and info.tokens[4] == "kitchen"
    assert att.scores.tolist() == pytest.approx(info.word_rollout.tolist()) and len(att.scores) == 5


class _BagOfWords(torch.nn.Module):
    """A real (if simple) classifier with no attention at all."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(30522, 4)

    def forward(self, input_ids, attention_mask=None, **_):
        return SequenceClassifierOutput(logits=self.embed(input_ids))


def test_errors_say_what_to_change(bert):
    with pytest.raises(ExplainError, match="no words"):
        attention_maps(bert, "")
    with pytest.raises(ExplainError, match="no words"):
        explain_attention(bert, " ")
    with pytest.raises(ExplainError, match="source=9 is outside the text's 7 pieces"):
        attention_maps(bert, TEXT, source=9)
    plain = ExplainModel(_BagOfWords(), bert.tokenizer, "classification", ["a", "b", "c", "d"])
    with pytest.raises(ExplainError, match="_BagOfWords returned no attention weights.*attn_implementation='eager'"):
        explain_attention(plain, TEXT)
