"""Do explanation methods agree, and are they faithful to the model? Pure functions returning dataclasses
(compute -> info -> render); a panel or a test reads the info objects.

- `agreement(attributions)`: rank correlation (Spearman, Kendall tau-b), top-k overlap and top-word agreement
  for every pair of methods, as a methods x methods matrix, and the words on which they disagree outright.
- `faithfulness(em, attribution)`: deletion and insertion curves in the attribution's ranking order, ERASER's
  comprehensiveness and sufficiency at fraction bins, their AOPC, where the prediction flips, and the same
  figures for random word orders, so a reader sees whether a method beats chance.
- `compare(em, attributions)`: both, for every method.

Example:
    >>> info = agreement([shap_attr, lime_attr, ig_attr], k=3)          # doctest: +SKIP
    >>> info.matrix("spearman"); info.disagreements()                    # doctest: +SKIP
    >>> f = faithfulness(em, shap_attr); f.aopc, f.random_aopc, f.flipped_at   # doctest: +SKIP
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from nbtune.explain.types import Attribution, ExplainError

ERASER_BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
MODES = {"delete": "each removed word is replaced by the model's mask word (word positions kept)",
         "omit": "each removed word is cut out of the text"}


# ---------------------------------------------------------------- agreement
@dataclass(frozen=True)
class PairAgreement:
    """How two methods' word rankings compare. spearman/kendall are NaN when undefined (`reason` says why)."""
    a: str
    b: str
    spearman: float
    kendall: float
    topk_overlap: float          # |top-k(a) & top-k(b)| / k
    top_word_agree: bool
    reason: str | None = None


@dataclass(frozen=True)
class Disagreement:
    """`method` ranks `word` among its top k; `other` ranks it in its bottom half. Ranks are 1-based."""
    word_index: int
    word: str
    method: str
    rank: int
    other: str
    other_rank: int
    n_words: int

    def describe(self) -> str:
        return (f"'{self.word}' (word {self.word_index}): {self.method} ranks it #{self.rank}, {self.other} "
                f"#{self.other_rank} of {self.n_words}")


@dataclass
class AgreementInfo:
    """Pairwise agreement of several methods explaining one text and target."""
    methods: list[str]
    text: str
    words: list[str]
    target: str
    k: int
    pairs: list[PairAgreement]
    rankings: dict[str, list[int]]          # method -> word indices, best first
    constant: dict[str, bool]               # method -> every word has the same score
    scores: dict[str, np.ndarray]           # method -> (W,) word scores
    notes: list[str] = field(default_factory=list)

    def pair(self, a: str, b: str) -> PairAgreement:
        for p in self.pairs:
            if (p.a, p.b) in ((a, b), (b, a)):
                return p
        raise ExplainError(f"no pair ({a!r}, {b!r}); methods are {self.methods}")

    def matrix(self, metric: str = "spearman") -> np.ndarray:
        """(M, M) for a heatmap, rows and columns in `methods` order. metric: spearman | kendall | topk_overlap
        | top_word_agree. The diagonal is 1 (NaN for a rank correlation of a constant method)."""
        if metric not in ("spearman", "kendall", "topk_overlap", "top_word_agree"):
            raise ExplainError(f"metric={metric!r}: use spearman, kendall, topk_overlap or top_word_agree")
        m = len(self.methods)
        out = np.eye(m)
        if metric in ("spearman", "kendall"):
            for i, name in enumerate(self.methods):
                out[i, i] = np.nan if self.constant[name] else 1.0
        index = {name: i for i, name in enumerate(self.methods)}
        for p in self.pairs:
            value = float(getattr(p, metric))
            out[index[p.a], index[p.b]] = out[index[p.b], index[p.a]] = value
        return out

    def disagreements(self, min_share: float = 0.05) -> list[Disagreement]:
        """Words one method ranks in its top k and another in its bottom half. A top-k word whose |score| is
        under `min_share` of that method's largest |score| is noise, not a claim, and is skipped (0 keeps
        all); methods that give every word the same score have no ranking and are skipped."""
        n = len(self.words)
        bottom_from = (n + 1) // 2            # 0-based positions >= this are the bottom half
        out = []
        for a, b in itertools.permutations(self.methods, 2):
            if self.constant[a] or self.constant[b]:
                continue
            position_b = {w: r for r, w in enumerate(self.rankings[b])}
            floor = min_share * float(np.abs(self.scores[a]).max())
            for r, w in enumerate(self.rankings[a][:self.k]):
                if position_b[w] >= bottom_from and abs(self.scores[a][w]) >= floor:
                    out.append(Disagreement(w, self.words[w], a, r + 1, b, position_b[w] + 1, n))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"methods": self.methods, "text": self.text, "target": self.target, "k": self.k,
                "pairs": [vars(p) for p in self.pairs], "disagreements": [d.describe() for d in self.disagreements()],
                "notes": list(self.notes)}


def agreement(attributions: Sequence[Attribution], k: int = 3) -> AgreementInfo:
    """Compare the word rankings of several methods on the same text and target.

    Example:
        >>> info = agreement([shap_attr, lime_attr], k=3)                  # doctest: +SKIP
        >>> info.pair("shap", "lime").spearman, info.disagreements()        # doctest: +SKIP
    """
    attributions = list(attributions)
    if len(attributions) < 2:
        raise ExplainError(f"agreement needs at least two attributions of the same text, got {len(attributions)}")
    if int(k) < 1:
        raise ExplainError(f"k={k}: the top-k overlap needs k >= 1")
    check_same_input(attributions)
    names = _unique_names([a.method for a in attributions])
    first = attributions[0]
    n_words = len(first.words)
    k_eff = min(int(k), n_words)
    notes = [f"the text has {n_words} words: top-k uses k={k_eff}"] if k_eff < k else []
    rankings = {name: a.ranking() for name, a in zip(names, attributions)}
    constant = {name: bool(np.ptp(a.scores) == 0) if n_words else True for name, a in zip(names, attributions)}
    pairs = []
    for (na, a), (nb, b) in itertools.combinations(zip(names, attributions), 2):
        rho, tau, reason = _rank_correlations(na, a.scores, nb, b.scores)
        top_a, top_b = set(rankings[na][:k_eff]), set(rankings[nb][:k_eff])
        pairs.append(PairAgreement(na, nb, rho, tau, len(top_a & top_b) / k_eff if k_eff else float("nan"),
                                   bool(n_words) and rankings[na][0] == rankings[nb][0], reason))
    return AgreementInfo(names, first.words.text, list(first.words.words), first.target.describe(), k_eff, pairs,
                         rankings, constant, {name: a.scores for name, a in zip(names, attributions)}, notes)


def check_same_input(attributions: Sequence[Attribution]) -> None:
    """ExplainError unless every attribution explains the same text and the same target."""
    first = attributions[0]
    for i, a in enumerate(attributions[1:], start=1):
        if a.words.text != first.words.text:
            raise ExplainError(f"attribution {i} ({a.method}) explains {_clip(a.words.text)!r} but attribution 0 "
                               f"({first.method}) explains {_clip(first.words.text)!r}: compare one text at a time")
        if a.target != first.target:
            raise ExplainError(f"attribution {i} ({a.method}) explains target {a.target.describe()!r} but "
                               f"attribution 0 ({first.method}) explains {first.target.describe()!r}: pass the same "
                               f"target to every method")


def _rank_correlations(na: str, a: np.ndarray, nb: str, b: np.ndarray) -> tuple[float, float, str | None]:
    if len(a) < 2:
        return float("nan"), float("nan"), f"the text has {len(a)} word(s): a ranking needs at least two"
    for name, v in ((na, a), (nb, b)):
        if np.ptp(v) == 0:
            return float("nan"), float("nan"), (f"{name} gives every word the same score ({float(v[0]):.3g}): "
                                                f"rank correlation is undefined")
    return spearman(a, b), kendall_tau_b(a, b), None


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as scipy.stats.rankdata does)."""
    ranks = np.empty(len(v))
    ranks[np.argsort(v, kind="mergesort")] = np.arange(1, len(v) + 1)
    _, tie_group = np.unique(v, return_inverse=True)
    return (np.bincount(tie_group, ranks) / np.bincount(tie_group))[tie_group]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of average ranks (NaN when either vector is constant)."""
    ra, rb = _average_ranks(np.asarray(a, float)), _average_ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b over all word pairs (O(W^2): texts have tens of words)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    da = np.sign(a[:, None] - a[None, :])        # (W, W)
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    da, db = da[upper], db[upper]
    denom = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return float((da * db).sum() / denom) if denom > 0 else float("nan")


def _unique_names(names: list[str]) -> list[str]:
    """Method names as matrix labels; a repeated method (two SHAP settings) gets '#2', '#3'."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


# ---------------------------------------------------------------- faithfulness
@dataclass
class FaithfulnessInfo:
    """Deletion/insertion curves and ERASER figures for one attribution. A drop is full_score minus the score
    of the perturbed text (probabilities; log-probabilities for causal-lm). Higher comprehensiveness/AOPC and
    lower sufficiency are more faithful; `random_*` are the same figures for random word orders."""
    method: str
    text: str
    words: list[str]
    target: str
    mode: str
    mask: str
    counts: list[int]                   # words removed (deletion) / kept (insertion) at each curve point
    deletion: np.ndarray                # (P,) score after removing the top `counts[i]` words
    insertion: np.ndarray               # (P,) score keeping only the top `counts[i]` words
    random_deletion: np.ndarray         # (P,) mean over the random orders
    random_insertion: np.ndarray
    full_score: float
    empty_score: float                  # every word removed
    bins: tuple[float, ...]
    bin_counts: list[int]               # words in each bin: ceil(fraction * W)
    comprehensiveness: dict[float, float]
    sufficiency: dict[float, float]
    random_comprehensiveness: dict[float, float]
    random_sufficiency: dict[float, float]
    aopc: float                         # mean comprehensiveness over the bins (ERASER's AOPC)
    aopc_sufficiency: float
    random_aopc: float
    random_aopc_sufficiency: float
    deletion_auc: float                 # area under the curve over the removed fraction 0..1 (lower is better)
    insertion_auc: float                # (higher is better)
    random_deletion_auc: float
    random_insertion_auc: float
    prediction: str | None              # the predicted label on the full text (classification tasks)
    predictions: list[str] | None       # the predicted label along the deletion curve
    flipped_at: int | None              # fewest top words whose deletion changes the prediction; None: never
    prediction_after_top1_deleted: str | None
    random_seeds: int
    evaluations: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def fractions(self) -> np.ndarray:
        return np.asarray(self.counts, float) / max(1, len(self.words))

    def drop_at(self, k: int) -> float:
        """Comprehensiveness at k words: full_score minus the score with the top k words removed."""
        return self.full_score - float(self.deletion[self._point(k)])

    def kept_drop_at(self, k: int) -> float:
        """Sufficiency at k words: full_score minus the score keeping only the top k words."""
        return self.full_score - float(self.insertion[self._point(k)])

    def random_drop_at(self, k: int) -> float:
        return self.full_score - float(self.random_deletion[self._point(k)])

    @property
    def beats_random(self) -> bool:
        return self.aopc > self.random_aopc

    def _point(self, k: int) -> int:
        if k not in self.counts:
            raise ExplainError(f"k={k} is not on the curve (counts {self.counts}); use steps=None for every count")
        return self.counts.index(k)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("deletion", "insertion", "random_deletion",
                                                                 "random_insertion")}
        for name in ("deletion", "insertion", "random_deletion", "random_insertion"):
            out[name] = [float(x) for x in getattr(self, name)]
        return out


def faithfulness(em: Any, attribution: Attribution, *, steps: int | None = None, mode: str = "delete",
                 random_seeds: int = 5, bins: Sequence[float] = ERASER_BINS) -> FaithfulnessInfo:
    """Remove (deletion curve) or keep (insertion curve) words in the attribution's ranking order and score
    each text with `em.score_texts` (one batched call per curve). steps: curve points besides 0 (None: every
    word count). mode: "delete" replaces a removed word with `em.mask_word`; "omit" cuts it out.

    Example:
        >>> f = faithfulness(em, attribution)                               # doctest: +SKIP
        >>> f.comprehensiveness[0.2], f.random_comprehensiveness[0.2], f.flipped_at   # doctest: +SKIP
    """
    start = time.perf_counter()
    words, n, bins = attribution.words, len(attribution.words), tuple(float(b) for b in bins)
    if mode not in MODES:
        raise ExplainError(f"mode={mode!r}: use " + " or ".join(f"{k!r} ({v})" for k, v in MODES.items()))
    if mode == "omit" and attribution.target.task == "token-classification":
        raise ExplainError("mode='omit' shifts the words after a cut one, so the explained word would move; "
                           "token-classification needs mode='delete'")
    if n == 0 or any(not 0 < b <= 1 for b in bins):
        raise ExplainError(f"nothing to measure: {n} words, bins={list(bins)} (fractions must lie in (0, 1])")
    bin_counts = [max(1, math.ceil(b * n - 1e-9)) for b in bins]
    counts = _curve_counts(n, steps, [1, *bin_counts])
    mask, target, order = (em.mask_word if mode == "delete" else ""), attribution.target, attribution.ranking()
    rng = np.random.default_rng(0)
    orders = [list(rng.permutation(n)) for _ in range(max(1, int(random_seeds)))]
    deletion, probs = _deletion_curve(em, words, order, counts, mask, target)
    insertion = _curve(em, words, [order], counts, mask, target, keep=True)
    rand_del = _curve(em, words, orders, counts, mask, target, keep=False)
    rand_ins = _curve(em, words, orders, counts, mask, target, keep=True)
    full, at, x = float(deletion[0]), {c: i for i, c in enumerate(counts)}, np.asarray(counts, float) / n

    def drops(curve: np.ndarray) -> dict[float, float]:  # full score minus the curve at each bin's count
        return {b: full - float(curve[at[c]]) for b, c in zip(bins, bin_counts)}

    comp, suff, rcomp, rsuff = drops(deletion), drops(insertion), drops(rand_del), drops(rand_ins)
    notes = _faithfulness_notes(attribution, full, n, mode)
    prediction = predictions = flipped_at = after_top1 = None
    if probs is not None:
        labels = list(em.label_names) or [str(i) for i in range(probs.shape[1])]
        predicted = probs.argmax(1)                      # (P,) class at each deletion point
        predictions = [labels[i] for i in predicted]
        prediction, after_top1 = predictions[0], predictions[at[1]]
        flipped_at = next((c for c, p in zip(counts, predicted) if p != predicted[0]), None)
        if steps is not None and flipped_at is not None:
            notes.append(f"flipped_at is read from the curve points {counts}: the first flip may come earlier")
    return FaithfulnessInfo(
        attribution.method, words.text, list(words.words), target.describe(), mode, mask, counts, deletion,
        insertion, rand_del, rand_ins, full, float(insertion[0]), bins, bin_counts, comp, suff, rcomp, rsuff,
        _mean(comp), _mean(suff), _mean(rcomp), _mean(rsuff), _auc(x, deletion), _auc(x, insertion),
        _auc(x, rand_del), _auc(x, rand_ins), prediction, predictions, flipped_at, after_top1, len(orders),
        len(counts) * (2 + 2 * len(orders)), time.perf_counter() - start, notes)


def _deletion_curve(em: Any, words, order: list[int], counts: list[int], mask: str, target) -> tuple:
    """(P,) target scores with the top counts[i] words removed, and for classification the (P, C) class
    probabilities (for where the prediction flips) from the same single batched call."""
    texts = [_perturbed(words, order[:c], mask, keep=False) for c in counts]
    if target.task not in ("classification", "token-classification"):
        return np.asarray(em.score_texts(texts, target), float), None
    fn = getattr(em, "probabilities", None)   # ExplainModel has no public full-distribution method yet
    probs = np.asarray(fn(texts, target.word) if fn else em._probabilities(texts, target.word), float)
    return probs[:, target.index], probs


def _curve(em: Any, words, orders: list[list[int]], counts: list[int], mask: str, target, *, keep: bool):
    """(P,) the mean over `orders` of the target's score with each order's first counts[i] words removed
    (keep=False) or alone kept (keep=True); every text of every order goes into one score_texts call."""
    texts = [_perturbed(words, o[:c], mask, keep=keep) for o in orders for c in counts]
    return np.asarray(em.score_texts(texts, target), float).reshape(len(orders), len(counts)).mean(0)


def _curve_counts(n: int, steps: int | None, required: list[int]) -> list[int]:
    """Word counts 0..n at the curve points; the bins' counts (and 1) are always included."""
    if steps is None:
        base = range(n + 1)
    else:
        if int(steps) < 1:
            raise ExplainError(f"steps={steps}: use None (every word count) or a positive number of points")
        base = np.rint(np.linspace(0, n, int(steps) + 1)).astype(int).tolist()
    return sorted({0, n, *base, *(c for c in required if c <= n)})


def _perturbed(words, chosen: Sequence[int], mask: str, *, keep: bool) -> str:
    """The text with `chosen` words removed (keep=False) or with only `chosen` kept (keep=True)."""
    flags = np.full(len(words), not keep)
    flags[list(chosen)] = keep
    return words.join(flags, mask)


def _faithfulness_notes(attribution: Attribution, full: float, n: int, mode: str) -> list[str]:
    notes = [f"{mode}: {MODES[mode]}"]
    if not math.isclose(full, attribution.model_score, rel_tol=1e-3, abs_tol=1e-4):
        notes.append(f"the model scores the text {full:.4g} now but {attribution.model_score:.4g} when "
                     f"{attribution.method} explained it (the weights changed?)")
    if np.ptp(attribution.scores) == 0:
        notes.append(f"{attribution.method} gives every word the same score: its order is the text order")
    if n < 10:
        notes.append(f"{n} words: several fraction bins cover the same number of words")
    return notes


def _mean(d: dict[float, float]) -> float:
    return float(np.mean(list(d.values())))


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area over the fraction of words 0..1."""
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2)) if len(x) > 1 else float("nan")


# ---------------------------------------------------------------- both
@dataclass
class ComparisonInfo:
    """Agreement between the methods (None for a single method) and each method's faithfulness."""
    agreement: AgreementInfo | None
    faithfulness: dict[str, FaithfulnessInfo]
    seconds: float

    def best(self) -> str:
        """The method with the highest AOPC (comprehensiveness)."""
        return max(self.faithfulness, key=lambda m: self.faithfulness[m].aopc)

    def table(self) -> list[dict[str, Any]]:
        """One row per method, for a table: AOPC against random, sufficiency, where the prediction flips."""
        return [{"method": m, "aopc": f.aopc, "random_aopc": f.random_aopc, "aopc_sufficiency": f.aopc_sufficiency,
                 "random_aopc_sufficiency": f.random_aopc_sufficiency, "deletion_auc": f.deletion_auc,
                 "insertion_auc": f.insertion_auc, "flipped_at": f.flipped_at, "beats_random": f.beats_random}
                for m, f in self.faithfulness.items()]


def compare(em: Any, attributions: Sequence[Attribution], *, k: int = 3, **faithfulness_options: Any) -> ComparisonInfo:
    """Agreement of the methods plus each one's faithfulness (options go to `faithfulness`).

    Example:
        >>> info = compare(em, [shap_attr, lime_attr, ig_attr])            # doctest: +SKIP
        >>> info.table(); info.agreement.matrix()                           # doctest: +SKIP
    """
    start = time.perf_counter()
    attributions = list(attributions)
    if not attributions:
        raise ExplainError("compare needs at least one attribution")
    check_same_input(attributions)
    names = _unique_names([a.method for a in attributions])
    agree = agreement(attributions, k=k) if len(attributions) > 1 else None
    faith = {name: faithfulness(em, a, **faithfulness_options) for name, a in zip(names, attributions)}
    return ComparisonInfo(agree, faith, time.perf_counter() - start)
