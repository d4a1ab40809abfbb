"""Result objects of the explainers (compute -> info -> render): plain dataclasses a renderer or a test reads.

Every method attributes over the same units, the *words* of the text (`split_words`: runs of letters/digits,
and each punctuation mark), so SHAP, LIME, integrated gradients and attention can be compared position by
position. Word-piece scores are summed into their word (additive methods stay additive).

Example:
    >>> from nbtune.explain.types import split_words
    >>> split_words("Turn on the lights!").words
    ['Turn', 'on', 'the', 'lights', '!']
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A mask token is one word, so a masked text keeps its word positions (token classification relies on it).
WORD = re.compile(r"\[(?:MASK|UNK)\]|<(?:mask|unk)>|\w+|[^\w\s]")


class ExplainError(ValueError):
    """An explanation request that cannot work (unknown target, empty text, unsupported task); the message says
    what to change."""


@dataclass(frozen=True)
class Words:
    """The words of a text with their character spans: `text[start:end] == word`."""
    text: str
    words: list[str]
    spans: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.words)

    def join(self, keep: "np.ndarray | list[bool]", mask: str) -> str:
        """The text with each word where keep is False replaced by `mask` (word count preserved when mask is
        one word; the original spacing is kept)."""
        out, last = [], 0
        for (start, end), k, w in zip(self.spans, keep, self.words):
            out.append(self.text[last:start])
            out.append(w if k else mask)
            last = end
        out.append(self.text[last:])
        return "".join(out)


def split_words(text: str) -> Words:
    if not isinstance(text, str):
        raise ExplainError(f"expected a text (str), got {type(text).__name__}")
    found = list(WORD.finditer(text))
    return Words(text, [m.group() for m in found], [m.span() for m in found])


@dataclass(frozen=True)
class Target:
    """What is explained. classification: class `index` (`label`). token-classification: class `index` at word
    `word`. causal-lm: the log-probability of `continuation` after the text (`index`/`label` unused)."""
    task: str
    index: int | None
    label: str
    word: int | None = None
    continuation: str | None = None

    def describe(self) -> str:
        if self.task == "token-classification":
            return f"{self.label} at word {self.word}"
        if self.task == "causal-lm":
            return f"next: {self.continuation!r}"
        return self.label


@dataclass
class Attribution:
    """One method's word attributions for one text and target. Positive scores push the target up.

    scores: (W,) one per word. model_score: the target's score on the full text (probability, or log-prob for
    causal-lm). base_score: the score with every word removed, where the method defines it. evaluations: model
    calls on perturbed texts (SHAP, LIME) or interpolation steps (IG). notes: what a reader should know
    (windowing, convergence delta, budget)."""
    method: str
    words: Words
    scores: np.ndarray
    target: Target
    model_score: float
    base_score: float | None = None
    evaluations: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.scores) != len(self.words):
            raise ExplainError(f"{self.method}: {len(self.scores)} scores for {len(self.words)} words")

    def ranking(self) -> list[int]:
        """Word indices, highest attribution first (ties keep text order)."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        return [(self.words.words[i], float(self.scores[i])) for i in self.ranking()[:k]]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "text": self.words.text, "words": self.words.words,
                "spans": [list(s) for s in self.words.spans], "scores": [float(s) for s in self.scores],
                "target": self.target.describe(), "model_score": self.model_score, "base_score": self.base_score,
                "evaluations": self.evaluations, "seconds": self.seconds, "notes": list(self.notes)}
