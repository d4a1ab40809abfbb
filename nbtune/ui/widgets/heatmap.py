"""TokenHeatmap: one Attribution's words coloured by score (an anywidget; compute: nbtune.explain).

Diverging, sign-aware colours: red pushes the target up, blue pushes it down, white is zero; the strength is
|score| / max |score| of the text, so a heatmap compares words within one explanation, not across methods.
Each word's tooltip gives its score. Words reach the page through textContent only.

Example:
    >>> att = explain_ig(em, "the lamp zebra is on today", target="alarm")   # doctest: +SKIP
    >>> heat = TokenHeatmap.from_attribution(att)                           # doctest: +SKIP
    >>> heat.update_from(explain_lime(em, "my card was declined"))          # doctest: +SKIP  (same widget)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

if TYPE_CHECKING:
    from nbtune.explain.types import Attribution

STATIC = Path(__file__).parent / "static"


def heatmap_payload(attr: "Attribution") -> dict[str, Any]:
    """The synced traits of a TokenHeatmap for an Attribution: words, scores (finite floats), method, target,
    notes.

        >>> heatmap_payload(att)["words"] == att.words.words                # doctest: +SKIP
        True
    """
    words = [str(w) for w in attr.words.words]
    raw = [float(s) for s in attr.scores]
    if len(raw) != len(words):
        raise ValueError(f"{attr.method}: {len(raw)} scores for {len(words)} words")
    # JSON has no NaN/inf: the frontend would receive invalid JSON, so show them as 0 and say so.
    scores = [s if math.isfinite(s) else 0.0 for s in raw]
    notes = [str(n) for n in attr.notes]
    bad = sum(not math.isfinite(s) for s in raw)
    if bad:
        notes.append(f"{bad} score(s) were not finite (NaN/inf) and are shown as 0")
    target = attr.target.describe() if hasattr(attr.target, "describe") else str(attr.target)
    return {"words": words, "scores": scores, "method": str(attr.method), "target": target, "notes": notes}


class TokenHeatmap(anywidget.AnyWidget):
    """Words coloured by attribution score, with the method and target as a label and the notes below."""

    _esm = STATIC / "heatmap.js"
    _css = STATIC / "heatmap.css"
    words = traitlets.List(traitlets.Unicode(), help="the words, plain text").tag(sync=True)
    scores = traitlets.List(traitlets.Float(), help="one score per word; > 0 pushes the target up").tag(sync=True)
    method = traitlets.Unicode("", help="e.g. 'shap', 'lime', 'ig', 'attention'").tag(sync=True)
    target = traitlets.Unicode("", help="what is explained (Target.describe())").tag(sync=True)
    notes = traitlets.List(traitlets.Unicode(), help="what a reader should know").tag(sync=True)

    @classmethod
    def from_attribution(cls, attr: "Attribution", **kwargs: Any) -> "TokenHeatmap":
        """A heatmap of one Attribution.

            >>> TokenHeatmap.from_attribution(explain_attention(em, "turn on the lights"))   # doctest: +SKIP
        """
        return cls(**{**heatmap_payload(attr), **kwargs})

    def update_from(self, attr: "Attribution") -> None:
        """Show another Attribution in this widget (one comm message)."""
        payload = heatmap_payload(attr)
        with self.hold_sync(), self.hold_trait_notifications():   # words/scores are checked together at the end
            for name, value in payload.items():
                setattr(self, name, value)

    @traitlets.validate("scores")
    def _check_scores(self, proposal: dict) -> list[float]:
        scores = proposal["value"]
        if len(scores) != len(self.words):
            raise traitlets.TraitError(f"{len(scores)} scores for {len(self.words)} words: "
                                       "set words and scores together (update_from does)")
        return scores

    @traitlets.validate("words")
    def _check_words(self, proposal: dict) -> list[str]:
        words = proposal["value"]
        if len(words) != len(self.scores):
            raise traitlets.TraitError(f"{len(words)} words for {len(self.scores)} scores: "
                                       "set words and scores together (update_from does)")
        return words
