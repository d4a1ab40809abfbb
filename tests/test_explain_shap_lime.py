"""SHAP and LIME word attributions on a classifier whose right answer is known (the trigger model: "zebra"
decides class "alarm"), plus a token-classification and a causal-lm tiny model for the other tasks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nbtune.explain.lime_text import explain_lime
from nbtune.explain.model import ExplainModel
from nbtune.explain.shap_text import explain_shap
from nbtune.explain.types import ExplainError, split_words
from tests.support.trigger import TRIGGER, load_trigger

pytest.importorskip("shap")
pytest.importorskip("lime")

SENTENCES = ["the lamp zebra is on today",                          # trigger in the middle
             "zebra the lamp in kitchen is on",                     # first
             "we read a book near window while music plays zebra"]  # last
METHODS = {"shap": lambda em, text, **kw: explain_shap(em, text, max_evals=kw.pop("budget", 300), **kw),
           "lime": lambda em, text, **kw: explain_lime(em, text, num_samples=kw.pop("budget", 500), **kw)}


@pytest.fixture(scope="module")
def em(trigger):
    model, tokenizer = load_trigger(trigger.model_dir)
    return ExplainModel(model, tokenizer, "classification", ["alarm", "calm"])


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("text", SENTENCES)
def test_trigger_word_ranks_first(em, method, text):
    att = METHODS[method](em, text, target="alarm")
    words = text.split()
    assert att.method == method
    assert len(att.scores) == len(words) and att.words.words == words
    assert att.words.words[att.ranking()[0]] == TRIGGER, att.top(3)
    others = np.delete(att.scores, words.index(TRIGGER))
    assert att.scores[words.index(TRIGGER)] > 0.5 > np.abs(others).max()
    assert att.model_score == pytest.approx(float(em.score_texts([text], att.target)[0]), abs=1e-6)
    assert np.isfinite(att.scores).all() and att.seconds > 0


def test_shap_is_additive(em):
    att = explain_shap(em, SENTENCES[2], target="alarm", max_evals=200)
    assert att.base_score + att.scores.sum() == pytest.approx(att.model_score, abs=1e-6)
    assert abs(att.extras["additivity_gap"]) < 1e-6
    assert any(n.startswith("additivity:") for n in att.notes)
    # the base is the score of the fully masked text
    masked = " ".join([em.mask_word] * len(att.words))
    assert att.base_score == pytest.approx(float(em.score_texts([masked], att.target)[0]), abs=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_target_by_label_name(em, method):
    alarm = METHODS[method](em, SENTENCES[0], target="alarm")
    calm = METHODS[method](em, SENTENCES[0], target="calm")
    assert (alarm.target.index, alarm.target.label) == (0, "alarm")
    assert (calm.target.index, calm.target.label) == (1, "calm")
    assert calm.words.words[calm.ranking()[-1]] == TRIGGER      # zebra pushes "calm" down the most
    # two classes: p(calm) = 1 - p(alarm), so every word's credit flips sign
    np.testing.assert_allclose(calm.scores, -alarm.scores, atol=1e-5)
    assert METHODS[method](em, SENTENCES[0]).target.label == "alarm"   # None: the predicted class


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unknown_target_names_the_labels(em, method):
    with pytest.raises(ExplainError, match=r"'banana'.*'alarm', 'calm'"):
        METHODS[method](em, SENTENCES[0], target="banana")
    with pytest.raises(ExplainError, match="did you mean 'alarm'"):
        METHODS[method](em, SENTENCES[0], target="alarn")
    with pytest.raises(ExplainError, match="outside 0..1"):
        METHODS[method](em, SENTENCES[0], target=5)
    with pytest.raises(ExplainError, match="no words"):
        METHODS[method](em, "  ", target="alarm")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fixed_seed_is_deterministic(em, method):
    # a long sentence so SHAP's budget binds (ties broken by the seeded RNG) and LIME's samples are not exhaustive
    text = "the lamp in kitchen is on today and we read a book near zebra window while music plays softly"
    first = METHODS[method](em, text, target="alarm", budget=60, seed=3)
    second = METHODS[method](em, text, target="alarm", budget=60, seed=3)
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.base_score == second.base_score and first.evaluations == second.evaluations


def test_shap_budget_is_respected(em):
    text = "the lamp in kitchen is on today and we read a book near zebra window while music plays softly"
    att = explain_shap(em, text, target="alarm", max_evals=40)
    assert 2 <= att.evaluations <= 40 + 1
    assert att.extras["requested_evaluations"] <= 40 + 1
    assert any(n.startswith("budget:") for n in att.notes)
    assert abs(att.extras["additivity_gap"]) < 1e-6                 # cut short, still additive
    small = explain_shap(em, SENTENCES[0], target="alarm", max_evals=300)
    assert not any(n.startswith("budget:") for n in small.notes)     # 6 words: the tree splits fully
    with pytest.raises(ExplainError, match="max_evals=1"):
        explain_shap(em, SENTENCES[0], max_evals=1)


def test_lime_budget_and_fit(em):
    att = explain_lime(em, SENTENCES[2], target="alarm", num_samples=300, batch_size=16)
    assert att.evaluations == 300
    assert 1 < att.extras["scored_texts"] <= 300 and att.extras["batch_size"] == 16
    assert em.batch_size == 64                                        # the caller's model object is unchanged
    assert 0.5 < att.extras["r2"] <= 1.0 and any(n.startswith("LIME local model R^2") for n in att.notes)
    with pytest.raises(ExplainError, match="num_samples=1"):
        explain_lime(em, SENTENCES[0], num_samples=1)


def test_single_word_and_truncation(em):
    one = explain_shap(em, "zebra", target="alarm")
    assert one.evaluations == 2 and one.base_score + one.scores[0] == pytest.approx(one.model_score)
    short = ExplainModel(em.model, em.tokenizer, "classification", em.label_names, max_length=8)
    text = "the zebra lamp in kitchen is on today and we read"      # 11 words + 2 specials > 8 pieces
    for att, unseen_limit in ((explain_shap(short, text, target="alarm", max_evals=100), 1e-6),
                              (explain_lime(short, text, target="alarm", num_samples=300), 0.02)):
        note = [n for n in att.notes if n.startswith("truncated/windowed:")]
        assert note and "5 of 11 words are never read" in note[0], att.notes
        assert att.ranking()[0] == 1                                  # zebra is among the 6 words read
        assert np.abs(att.scores[-5:]).max() < unseen_limit           # the words cut off get (about) no credit
    assert not [n for n in one.notes if n.startswith("truncated")]


def _tiny(name: str, auto: str, **config):
    import transformers

    from nbtune.assets import resolve_model
    resolved = resolve_model(name)
    torch.manual_seed(0)
    cfg = resolved.config
    for key, value in config.items():
        setattr(cfg, key, value)
    model = getattr(transformers, auto).from_config(cfg).eval()
    return model, transformers.AutoTokenizer.from_pretrained(resolved.tokenizer_path)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_token_classification_tiny_bert(method):
    model, tokenizer = _tiny("tiny-bert", "AutoModelForTokenClassification", num_labels=3)
    em = ExplainModel(model, tokenizer, "token-classification", ["O", "B-LOC", "I-LOC"])
    text = "we flew from Paris to Berlin today"
    att = METHODS[method](em, text, word=3, target="B-LOC", budget=120)
    assert len(att.scores) == 7 and np.isfinite(att.scores).all()
    assert att.target.word == 3 and att.target.label == "B-LOC"
    assert 0.0 < att.model_score < 1.0
    if method == "shap":  # the base: every word masked, scored at the mask standing where word 3 stood
        masked = " ".join([em.mask_word] * 7)
        start = 3 * (len(em.mask_word) + 1)
        at = [j for j, (s, _) in enumerate(split_words(masked).spans) if s == start]
        shifted = dataclasses.replace(att.target, word=at[0])
        assert att.base_score == pytest.approx(float(em.score_texts([masked], shifted)[0]), abs=1e-6)
        assert abs(att.extras["additivity_gap"]) < 1e-6
        em.mask_word = "..."     # a mask that splits into 3 words shifts the target word's index
        dots = explain_shap(em, text, word=3, target="B-LOC", max_evals=60)
        word9 = dataclasses.replace(att.target, word=9)  # "... ... ... ..." -> the 4th "..." starts at word 9
        assert dots.base_score == pytest.approx(float(em.score_texts([" ".join(["..."] * 7)], word9)[0]), abs=1e-6)
        assert np.isfinite(dots.scores).all() and abs(dots.extras["additivity_gap"]) < 1e-6
    with pytest.raises(ExplainError, match="word="):
        METHODS[method](em, text)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_causal_lm_tiny_llama(method):
    model, tokenizer = _tiny("tiny-llama", "AutoModelForCausalLM")
    em = ExplainModel(model, tokenizer, "causal-lm", batch_size=16)
    att = METHODS[method](em, "turn on the kitchen", continuation=" lights", budget=60)
    assert len(att.scores) == 4 and np.isfinite(att.scores).all()
    assert att.target.continuation == " lights" and att.model_score < 0      # a summed log-probability
    if method == "shap":
        assert abs(att.extras["additivity_gap"]) < 1e-6
    else:
        assert any("nats" in n for n in att.notes)
