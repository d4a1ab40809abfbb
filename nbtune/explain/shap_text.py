"""SHAP for text, over words: shap's Partition explainer (Owen values over a partition tree of the sentence) with
a Text masker that splits on our words, and a model function that scores each batch of masked texts in one
batched, gradient-free pass (`ExplainModel.score_texts`). A removed word becomes `em.mask_word` (the model's
mask token), so the word count, and with it every word position, is kept.

Compared with `shap.Explainer(transformers.pipeline(...))` at the same evaluation budget it computes the same
kind of values, faster: shap hands over whole batches of masked texts and we score them in one forward pass
each (the pipeline runs one text per forward), and a text shap asks for twice is scored once.

Example:
    >>> from nbtune.explain.model import ExplainModel                        # doctest: +SKIP
    >>> em = ExplainModel.from_run(run)                                      # doctest: +SKIP
    >>> att = explain_shap(em, "turn on the kitchen lights", max_evals=300)  # doctest: +SKIP
    >>> att.top(2)                                                           # doctest: +SKIP
    [('lights', 0.41), ('on', 0.22)]
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from nbtune.explain.types import Attribution, ExplainError, Target, Words, split_words

INSTALL_HINT = "pip install 'nbtune[explain]'"
_MASKED = -1  # the word id the masker writes where a word is removed


def explain_shap(em: Any, text: str, target: int | str | None = None, *, max_evals: int = 300,
                 batch_size: int | None = None, word: int | None = None, continuation: str | None = None,
                 seed: int = 0) -> Attribution:
    """Partition SHAP (Owen values) of `target` over the words of `text`.

    max_evals: the budget of model evaluations (the full and the fully masked text included); past it, shap
    leaves the credit on coarser word groups of its partition tree. batch_size: texts per forward pass
    (default em.batch_size). seed: shap breaks priority ties with numpy's global RNG; it is seeded for the
    call and restored afterwards, so a fixed seed gives the same scores. `evaluations` counts the texts the
    model actually scored; the gap of the additivity check (base + sum of scores = model score) is in notes.

        >>> att = explain_shap(em, "the lamp zebra is on", target="alarm")   # doctest: +SKIP
        >>> att.top(1)                                                     # doctest: +SKIP
        [('zebra', 0.93)]
    """
    shap = _import("shap")
    started = time.perf_counter()
    resolved = resolve_target(em, text, target, word, continuation)
    words = split_words(text)
    if int(max_evals) < 2:
        raise ExplainError(f"max_evals={max_evals}: SHAP needs at least 2 evaluations (the full text and the "
                           "fully masked one); use a few hundred for useful scores")
    scorer = WordScorer(em, words, resolved, batch_size)
    if len(words) == 1:  # shap's partition tree needs two words; one word's Shapley value is a difference
        base, full = scorer.masks(np.array([[_MASKED], [0]]))
        values, budget_spent = np.array([full - base]), False
    else:
        values, base, budget_spent = _run_partition(shap, scorer, words, int(max_evals), seed)
    model_score = scorer.score_of(text)
    gap = float(model_score - (base + values.sum()))
    notes = [f"additivity: base {base:.4f} + sum of scores {values.sum():.4f} vs model score {model_score:.4f} "
             f"(gap {gap:.2e})"]
    if budget_spent:
        notes.append(f"budget: the {max_evals} evaluations ran out before every word was split from its "
                     "neighbours; some credit is shared within word groups (raise max_evals for finer scores)")
    notes += [n for n in (truncation_note(em, words, resolved),) if n]
    return Attribution("shap", words, values, resolved, model_score, base_score=float(base),
                       evaluations=scorer.evaluations, seconds=time.perf_counter() - started, notes=notes,
                       extras={"additivity_gap": gap, "requested_evaluations": scorer.requested,
                               "max_evals": int(max_evals), "batch_size": scorer.em.batch_size})


def _run_partition(shap: Any, scorer: "WordScorer", words: Words, max_evals: int,
                   seed: int) -> tuple[np.ndarray, float, bool]:
    """(values (W,), base value, whether the budget ran out) from shap's Partition explainer over our words."""
    masker = shap.maskers.Text(_WordTokenizer(), mask_token=_MASKED, collapse_mask_token=False,
                               output_type="token_ids")
    explainer = shap.explainers.Partition(scorer.masks, masker)
    # shap's batch_size counts tree nodes, and each node asks for 2 masked texts: half a forward pass' worth.
    nodes_per_round = max(1, scorer.em.batch_size // 2)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        explanation = explainer([words.text], max_evals=max_evals, batch_size=nodes_per_round, silent=True)
    finally:
        np.random.set_state(state)
    values = np.asarray(explanation.values[0], dtype=np.float64).reshape(-1)  # (W,)
    if len(values) != len(words):
        raise ExplainError(f"shap returned {len(values)} values for {len(words)} words")
    # shap spends max_evals - 2 on the tree (2 went to the full and the empty text); reaching it means nodes
    # were left unsplit
    budget_spent = getattr(explainer, "last_eval_count", 0) >= max_evals - 2
    return values, float(np.asarray(explanation.base_values).reshape(-1)[0]), budget_spent


class _WordTokenizer:
    """What shap's Text masker calls to split a text: one 'token' per word of `split_words` (ids 0..W-1, with
    character offsets), so shap masks whole words and never word pieces. No special tokens: nothing is kept
    unmasked at either end."""

    def __call__(self, s: str, return_offsets_mapping: bool = True, **_: Any) -> dict[str, list]:
        words = split_words(s)
        out: dict[str, list] = {"input_ids": list(range(len(words)))}
        if return_offsets_mapping:
            out["offset_mapping"] = list(words.spans)
        return out


class WordScorer:
    """Scores masked versions of one text for one target, each distinct text once per explanation.

    batch_size: texts per forward pass (a shallow copy of the ExplainModel carries it, so the caller's object
    is not changed). `evaluations`: texts the model scored; `requested`: texts asked for, repeats included."""

    def __init__(self, em: Any, words: Words, target: Target, batch_size: int | None = None) -> None:
        if batch_size is not None:
            if int(batch_size) < 1:
                raise ExplainError(f"batch_size={batch_size}: pass a positive number of texts per forward pass")
            em = copy.copy(em)
            em.batch_size = int(batch_size)
        self.em, self.words, self.target = em, words, target
        self._cache: dict[str, float] = {}
        self.requested = 0

    @property
    def evaluations(self) -> int:
        return len(self._cache)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) scores of the texts; the new distinct ones go to the model together (batched)."""
        texts = list(texts)
        self.requested += len(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            for t, score in zip(new, self._score_new(new)):
                self._cache[t] = float(score)
        return np.array([self._cache[t] for t in texts], dtype=np.float64)

    def _score_new(self, texts: list[str]) -> np.ndarray:
        if self.target.task != "token-classification":
            return self.em.score_texts(texts, self.target)
        # The model finds the target word by its index in split_words(perturbed text). A mask word that splits
        # into several words ("[MASK]" -> "[", "MASK", "]") shifts that index, so each text is scored at the
        # word now standing where the target stood; texts that share that index share a forward pass.
        out = np.full(len(texts), np.nan)
        groups: dict[int, list[int]] = {}
        for i, text in enumerate(texts):
            at = _target_index(self.words, text, self.em.mask_word, self.target.word)
            if at is not None:
                groups.setdefault(at, []).append(i)
        for at, rows in groups.items():
            out[rows] = self.em.score_texts([texts[r] for r in rows], dataclasses.replace(self.target, word=at))
        return out

    def masks(self, word_ids: np.ndarray) -> np.ndarray:
        """(N,) scores for (N, W) word ids from shap's masker: _MASKED where a word is removed."""
        rows = np.atleast_2d(np.asarray(word_ids))
        return self.texts([self.words.join(row != _MASKED, self.em.mask_word) for row in rows])

    def score_of(self, text: str) -> float:
        """One text's score (from the cache when the explainer already asked for it; not counted as asked)."""
        if text not in self._cache:
            self.texts([text])
            self.requested -= 1
        return self._cache[text]


def _target_index(words: Words, text: str, mask: str, word: int) -> int | None:
    """Index in split_words(text) of the word at the place of `words`' word `word`, for a text made from
    `words` by replacing some words with `mask` (None when text is not such a perturbation)."""
    start = _start_in(words, text, mask, word)
    found = [j for j, (s, _) in enumerate(split_words(text).spans) if s == start] if start is not None else []
    return found[0] if found else None


def _start_in(words: Words, text: str, mask: str, upto: int, i: int = 0, p: int = 0) -> int | None:
    """Character offset of word `upto` in a perturbed text: walk the original gaps, at each word reading either
    the word or the mask (trying both only when both fit, e.g. the word "[" and the mask "[MASK]")."""
    last = words.spans[i - 1][1] if i else 0
    while True:
        gap = words.text[last:words.spans[i][0]]
        if not text.startswith(gap, p):
            return None
        p += len(gap)
        if i == upto:
            return p
        fits = [n for n, ok in ((len(words.words[i]), text.startswith(words.words[i], p)),
                                (len(mask), text.startswith(mask, p))) if ok]
        if not fits:
            return None
        if len(fits) == 2 and fits[0] != fits[1]:
            found = _start_in(words, text, mask, upto, i + 1, p + fits[1])
            if found is not None:
                return found
        p, last, i = p + fits[0], words.spans[i][1], i + 1


def resolve_target(em: Any, text: str, target: int | str | None, word: int | None,
                   continuation: str | None) -> Target:
    """em.target, with the model's labels named when a label name is unknown (the user can pick one)."""
    try:
        return em.target(text, target, word=word, continuation=continuation)
    except ExplainError as err:
        if isinstance(target, str) and em.label_names and target not in em.label_names:
            raise ExplainError(f"{err} (labels: {', '.join(map(repr, em.label_names))})") from None
        raise


def truncation_note(em: Any, words: Words, target: Target) -> str | None:
    """A note when the text has more pieces than the model reads (em.max_length), naming how many words it
    never sees (they get no credit), or None when it all fits."""
    try:
        enc = em.tokenizer(words.text, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError):  # slow tokenizers have no offsets
        enc, offsets = em.tokenizer(words.text), None
    n = len(enc["input_ids"])
    if target.task == "causal-lm":  # the prompt is cut from the left, keeping room for the continuation
        keep = em.max_length - len(em.tokenizer(target.continuation, add_special_tokens=False)["input_ids"])
        side, seen = "last", (offsets[n - keep:] if offsets else None)
    else:  # cut from the right; the closing special token takes one place
        keep = em.max_length
        side, seen = "first", (offsets[:keep - 1] if offsets else None)
    if n <= keep:
        return None
    unseen = ""
    if seen is not None:
        read = {i for s, e in seen if e > s for i, (ws, we) in enumerate(words.spans) if ws <= s < we}
        unseen = f"; {len(words) - len(read)} of {len(words)} words are never read and get ~0 credit"
    return (f"truncated/windowed: {n} pieces, more than max_length={em.max_length}: the model reads only the "
            f"{side} {keep}{unseen} (split the text, or raise ExplainModel max_length up to the model's limit)")


def _import(name: str) -> Any:
    """An optional explain dependency, or an ImportError that says how to install it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{name} is needed for this explanation: {INSTALL_HINT}") from err
