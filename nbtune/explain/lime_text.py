"""LIME for text, over words: lime's LimeTextExplainer perturbs the text by replacing random subsets of words
with `em.mask_word` (bow=False, so each position is its own feature, and the split yields exactly our words),
scores all perturbed texts in batched forward passes (`ExplainModel.score_texts`), and fits a weighted ridge
model whose coefficients are the word scores.

What is regressed: for classification and token-classification the target class's probability (lime sees an
(N, 2) array [1 - p, p] and explains column 1). For causal-lm the summed log-probability of the continuation,
used as is: lime's surrogate is a ridge regression, not a classifier, so an unbounded target is fine, and
log-probs are additive over tokens, the same quantity SHAP splits (scores are then in nats).

Example:
    >>> att = explain_lime(em, "turn on the kitchen lights", num_samples=1000)   # doctest: +SKIP
    >>> att.top(1), att.extras["r2"]                                             # doctest: +SKIP
    ([('lights', 0.38)], 0.71)
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from nbtune.explain.shap_text import WordScorer, _import, resolve_target, truncation_note
from nbtune.explain.types import Attribution, ExplainError, split_words


def explain_lime(em: Any, text: str, target: int | str | None = None, *, num_samples: int = 1000,
                 batch_size: int | None = None, word: int | None = None, continuation: str | None = None,
                 seed: int = 0) -> Attribution:
    """LIME word scores of `target` on `text` from `num_samples` perturbed texts (the text itself included).

    batch_size: texts per forward pass (default em.batch_size). seed: lime's random_state, so a fixed seed
    gives the same samples and scores. evaluations = num_samples (the neighbourhood size); perturbations that
    repeat a text are scored once (extras["scored_texts"]). base_score is the local model's intercept, its
    estimate with every word removed; extras["r2"] is the surrogate's weighted R^2 on the samples.

        >>> att = explain_lime(em, "the lamp zebra is on", target="alarm", num_samples=500)   # doctest: +SKIP
        >>> att.top(1)                                                                     # doctest: +SKIP
        [('zebra', 0.62)]
    """
    lime_text = _import("lime.lime_text")
    started = time.perf_counter()
    resolved = resolve_target(em, text, target, word, continuation)
    words = split_words(text)
    if int(num_samples) < 2:
        raise ExplainError(f"num_samples={num_samples}: LIME needs the text and at least one perturbation; "
                           "use several hundred for stable scores")
    scorer = WordScorer(em, words, resolved, batch_size)
    probability = resolved.task != "causal-lm"

    def classifier_fn(texts: list[str]) -> np.ndarray:  # (N,) scores -> (N, 2) columns [other, target]
        s = scorer.texts(texts)
        return np.stack([1.0 - s if probability else np.zeros_like(s), s], axis=1)

    explainer = lime_text.LimeTextExplainer(
        class_names=["rest", resolved.describe()], bow=False, mask_string=em.mask_word, random_state=seed,
        split_expression=lambda s: split_words(s).words, feature_selection="none")
    exp = explainer.explain_instance(text, classifier_fn, labels=(1,), num_features=len(words),
                                     num_samples=int(num_samples))
    if exp.domain_mapper.indexed_string.num_words() != len(words):  # position i must be our word i
        raise ExplainError(f"lime split the text into {exp.domain_mapper.indexed_string.num_words()} features, "
                           f"expected our {len(words)} words")
    scores = np.zeros(len(words))
    for feature, weight in exp.local_exp[1]:
        scores[int(feature)] = weight
    r2, intercept = float(exp.score), float(exp.intercept[1])
    notes = [f"LIME local model R^2 = {r2:.3f} (weighted ridge over {num_samples} samples; low means the linear "
             f"surrogate explains little of the model here)"]
    if not probability:
        notes.append("causal-lm: scores are in log-probability (nats) of the continuation")
    notes += [n for n in (truncation_note(em, words, resolved),) if n]
    return Attribution("lime", words, scores, resolved, float(exp.predict_proba[1]), base_score=intercept,
                       evaluations=int(num_samples), seconds=time.perf_counter() - started, notes=notes,
                       extras={"r2": r2, "intercept": intercept, "local_pred": float(np.ravel(exp.local_pred)[0]),
                               "scored_texts": scorer.evaluations, "batch_size": scorer.em.batch_size})
