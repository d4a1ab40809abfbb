"""Integrated gradients and gradient x input on a classifier whose right answer is known (the trigger model:
"zebra" decides class "alarm"), plus random tiny causal-lm and token-classification models for the other tasks.

The trigger model is a hard case for gradients, and the tests say so: its probability jumps from 0.01 to 0.99
within 1% of the path from the [PAD] baseline (IG needs ~1000 steps to converge), and around the text itself it
is flat (gradient x input sees only noise there, which its note reports)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from nbtune.explain.gradients import WINDOW_OVERLAP, explain_grad_x_input, explain_ig
from nbtune.explain.model import ExplainModel
from nbtune.explain.types import ExplainError
from tests.support.trigger import TRIGGER, load_trigger
from tests.support.tiny_explain import tiny_explain_model as _tiny

pytest.importorskip("captum")

SENTENCES = ["the lamp zebra is on today",                          # trigger in the middle
             "zebra the lamp in kitchen is on",                     # first
             "we read a book near window while music plays zebra"]  # last


@pytest.fixture(scope="module")
def em(trigger):
    model, tokenizer = load_trigger(trigger.model_dir)
    model.zero_grad(set_to_none=True)
    return ExplainModel(model, tokenizer, "classification", ["alarm", "calm"])


@pytest.mark.parametrize("text", SENTENCES)
def test_ig_ranks_the_trigger_first(em, text):
    att = explain_ig(em, text, target="alarm")
    words = text.split()
    assert att.method == "ig" and att.words.words == words and att.evaluations == 50
    assert att.words.words[att.ranking()[0]] == TRIGGER, att.top(3)
    others = np.delete(att.scores, words.index(TRIGGER))
    assert att.scores[words.index(TRIGGER)] > 10 * np.abs(others).max()
    assert att.model_score == pytest.approx(float(em.score_texts([text], att.target)[0]), abs=1e-6)


def test_ig_converges_with_enough_steps_and_is_complete(em):
    text = SENTENCES[0]
    coarse = explain_ig(em, text, target="alarm")          # 50 Gauss-Legendre steps miss the jump along the path
    assert abs(coarse.extras["delta"]) > 0.1 and any("raise n_steps" in n for n in coarse.notes)
    att = explain_ig(em, text, target="alarm", n_steps=1000, method="riemann_trapezoid", internal_batch_size=250)
    delta = att.extras["delta"]
    assert abs(delta) < 0.02 and not any("raise n_steps" in n for n in att.notes)
    assert att.model_score > 0.95 and att.base_score < 0.05      # f(text) and f(all [PAD]) for class alarm
    assert att.extras["f_text"] == [pytest.approx(att.model_score, abs=1e-6)]
    # completeness: the word scores add up to f(text) - f(baseline), short of captum's delta
    assert att.scores.sum() == pytest.approx(att.model_score - att.base_score, abs=abs(delta) + 1e-4)
    assert att.scores.sum() - (att.model_score - att.base_score) == pytest.approx(delta, abs=1e-4)
    assert att.top(1)[0][0] == TRIGGER and att.top(1)[0][1] > 0.9


@pytest.mark.parametrize("text", SENTENCES)
def test_grad_x_input_is_blind_where_the_trigger_model_saturates(em, text):
    # At p = 0.99 the trigger model's output is flat: any one word's first-order effect is ~1e-6, so gradient x
    # input cannot find the trigger (measured: it ranks "is", "plays", "read" first). The note must say so.
    ig = explain_ig(em, text, target="alarm")
    att = explain_grad_x_input(em, text, target="alarm")
    assert att.method == "grad_x_input" and att.words.words == text.split() and att.evaluations == 1
    assert np.isfinite(att.scores).all() and np.abs(att.scores).max() < 1e-3 < ig.scores.max()
    assert any(re.search(r"saturated here \(p=0\.9\d\d\).*explain_ig", n) for n in att.notes), att.notes


def test_grad_x_input_is_the_first_order_change():
    """Where the model is not saturated, word w's score is d f(x with w's embedding scaled by s) / ds at s = 1:
    checked against a central difference (in float64) on a random tiny Llama, f = log p(continuation)."""
    em = _tiny("causal-lm")
    em.model.double()
    text = "turn on the kitchen lights please"
    att = explain_grad_x_input(em, text, continuation=" now")
    assert em.pieces(text).word_of_piece == [None, 0, 1, 2, 3, 4, 5, None]      # one piece per word
    embeddings = em.model.get_input_embeddings()
    ids = torch.tensor([em.tokenizer(text)["input_ids"] + em.tokenizer(" now", add_special_tokens=False)["input_ids"]])

    # in float64 (score_texts casts logits to float32, too coarse for a difference); Llama's RMSNorm still
    # computes in float32, hence a step of 1e-2 and a 1% tolerance
    def log_p_now() -> float:
        with torch.no_grad():
            logp = torch.log_softmax(em.model(input_ids=ids).logits[0, -2], dim=-1)   # (V,) predicting " now"
        return float(logp[ids[0, -1]])

    for word in range(len(att.words)):
        scaled = []
        for scale in (1 + 1e-2, 1 - 1e-2):
            factor = torch.ones(1, ids.shape[1], 1, dtype=torch.float64)     # (1, T, 1)
            factor[0, word + 1] = scale
            hook = embeddings.register_forward_hook(lambda module, inputs, out: out * factor)
            scaled.append(log_p_now())
            hook.remove()
        assert att.scores[word] == pytest.approx((scaled[0] - scaled[1]) / 2e-2, rel=1e-2, abs=2e-5)
    assert np.abs(att.scores).max() > 1e-3 and not any("saturated" in n for n in att.notes)


@pytest.mark.parametrize("training", [True, False])
def test_gradients_leave_parameters_and_mode_as_they_were(em, training):
    model = em.model
    params = list(model.parameters())
    # mid-training: the last backward left gradients on some parameters; they must come back unchanged
    for p in params[:3]:
        p.grad = torch.full_like(p, 0.5)
    model.train(training)
    try:
        explain_ig(em, SENTENCES[0], n_steps=8)
        explain_grad_x_input(em, SENTENCES[1])
        assert model.training is training
        assert all(p.grad is None for p in params[3:])
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params[:3])
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def test_long_texts_are_windowed(em):
    short = ExplainModel(em.model, em.tokenizer, "classification", em.label_names, max_length=16)
    text = "we read a book near window while music plays softly over the garden door and the lamp in kitchen " \
           "is on today zebra and a small quiet room with a green table"
    n_pieces = len(em.tokenizer(text, add_special_tokens=False)["input_ids"])
    window = 16 - 2                                                      # [CLS] and [SEP] in every window
    stride = int(window * (1 - WINDOW_OVERLAP))
    n_windows = len(range(0, n_pieces - window + 1, stride)) + ((n_pieces - window) % stride != 0)
    att = explain_ig(short, text, target="alarm")
    assert len(att.scores) == len(att.words) == len(text.split()) and np.isfinite(att.scores).all()
    assert any(n.startswith(f"windowed: {n_pieces} pieces in {n_windows} windows of {window}") for n in att.notes)
    assert att.extras["windows"] == n_windows > 2 and att.evaluations == 50 * n_windows
    assert att.base_score is None                  # completeness holds per window, not for the text
    assert att.words.words[att.ranking()[0]] == TRIGGER, att.top(3)   # the windows map back to the right words
    assert np.count_nonzero(att.scores) == len(att.words)               # every word was seen by some window


def test_causal_lm_ig_on_tiny_llama():
    em = _tiny("causal-lm")
    text = "turn on the kitchen lights"
    att = explain_ig(em, text, continuation=" please")
    assert att.target.continuation == " please" and len(att.scores) == 5 and np.isfinite(att.scores).all()
    assert att.model_score == pytest.approx(float(em.score_texts([text], att.target)[0]), abs=1e-4)
    assert att.model_score < 0 and abs(att.extras["delta"]) < 1e-3        # a random model is smooth: converged
    assert att.scores.sum() == pytest.approx(att.model_score - att.base_score, abs=1e-3)
    assert np.abs(att.scores).max() > 0
    gxi = explain_grad_x_input(em, text, continuation=" please")
    assert len(gxi.scores) == 5 and np.isfinite(gxi.scores).all() and np.abs(gxi.scores).max() > 0


def test_token_classification_ig_on_tiny_bert():
    em = _tiny("token-classification")
    text = "visit the kitchen in paris today"
    att = explain_ig(em, text, target="B-LOC", word=4)
    assert att.target.word == 4 and att.target.label == "B-LOC"
    assert len(att.scores) == 6 and np.isfinite(att.scores).all() and abs(att.extras["delta"]) < 1e-3
    assert att.model_score == pytest.approx(float(em.score_texts([text], att.target)[0]), abs=1e-5)
    assert att.scores.sum() == pytest.approx(att.model_score - att.base_score, abs=1e-3)
    short = ExplainModel(em.model, em.tokenizer, "token-classification", em.label_names, max_length=6)
    windowed = explain_ig(short, text + " and tomorrow", target="B-LOC", word=4)
    assert len(windowed.scores) == 8 and windowed.scores[[0, 1, 6, 7]].tolist() == [0, 0, 0, 0]   # outside the window
    assert any(n.startswith("windowed: 8 pieces in 1 window of 4") and "only the window around word 4" in n
               for n in windowed.notes)
    assert windowed.model_score == pytest.approx(windowed.extras["f_text"][0]) and np.isfinite(windowed.model_score)
    assert any("model_score is the window's: word 4 is past max_length 6" in n for n in windowed.notes)
    with pytest.raises(ExplainError, match="pass word="):
        explain_ig(em, text)


@pytest.mark.parametrize("explain", [explain_ig, explain_grad_x_input])
def test_errors_say_what_to_change(em, explain):
    with pytest.raises(ExplainError, match="no words"):
        explain(em, "")
    with pytest.raises(ExplainError, match="no words"):
        explain(em, "   ")
    with pytest.raises(ExplainError, match="not a label of this model; did you mean 'alarm'"):
        explain(em, SENTENCES[0], target="alarms")


def test_ig_options_are_checked(em):
    with pytest.raises(ExplainError, match="baseline='zeros': expected one of pad, mask, unk"):
        explain_ig(em, SENTENCES[0], baseline="zeros")
    with pytest.raises(ExplainError, match="method='simpson'"):
        explain_ig(em, SENTENCES[0], method="simpson")
    with pytest.raises(ExplainError, match="n_steps=0"):
        explain_ig(em, SENTENCES[0], n_steps=0)
    masked = explain_ig(em, SENTENCES[0], baseline="mask", n_steps=8)
    assert "mask baseline" in masked.notes[0] and len(masked.scores) == 6
