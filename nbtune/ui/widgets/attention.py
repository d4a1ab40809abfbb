"""AttentionView: an anywidget that draws one text's attention (compute: nbtune.explain.attention.attention_maps).

It shows (a) a head x layer grid of thumbnails of every head's attention matrix (plus the mean over heads and over
layers), clickable to select a layer/head, (b) for the selection, token-to-token arcs whose opacity is the weight
(hover a token to isolate its lines), and the attention rollout as a heat strip, (c) the caption "Attention:
where the model looks — not an explanation". Every string reaches the page through textContent.

Payload: the synced `weights` trait is a nested float list (L, H, T, T) rounded to 3 decimals, about 7 bytes of
JSON per value ("0.012, "; measured 6.8 on the trigger model at 64 pieces). Tiny BERT (2 x 2 heads, 8 pieces)
sends ~2 KB; BERT-base (12 x 12) at 64 pieces sends 589,824 values, ~4 MB, once when the view is displayed (a
plotly FigureWidget sends ~5 MB of ES module); `update_from` re-sends it whole. The view keeps
L * H * T * T <= `max_values` (default 12 * 12 * 64 * 64) and T <= `max_tokens` (default 64) by keeping the first
T units and saying so in `notes` (rows of a truncated map then sum to less than 1: attention to the dropped
units is not drawn).

Example:
    >>> info = attention_maps(em, "the lamp zebra is on today")               # doctest: +SKIP
    >>> view = AttentionView.from_info(info, level="word")                   # doctest: +SKIP
    >>> view.layer, view.head = 1, 0       # or click a thumbnail             # doctest: +SKIP
    >>> view                                                                 # doctest: +SKIP
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import traitlets

if TYPE_CHECKING:
    from nbtune.explain.attention import AttentionInfo

STATIC = Path(__file__).parent / "static"
CAPTION = "Attention: where the model looks — not an explanation"
LEVELS = ("word", "piece")
MAX_TOKENS = 64
MAX_VALUES = 12 * 12 * 64 * 64     # BERT-base at 64 pieces: ~4 MB of JSON
TITLE_CHARS = 160


def _units(info: "AttentionInfo", level: str) -> tuple[list[str], np.ndarray]:
    """The units drawn and their (U, T) membership matrix over pieces. level "piece": one unit per piece.
    level "word": one unit per word plus each special/unmapped piece on its own ([CLS], [SEP]), in text order,
    so a unit row still sums to 1 (Clark et al. 2019 merging: sum over target pieces, mean over source pieces)."""
    n = len(info.tokens)
    if level == "piece":
        return list(info.tokens), np.eye(n)
    labels: list[str] = []
    rows: list[int] = []            # unit index of each piece
    unit_of_word: dict[int, int] = {}
    for t, w in enumerate(info.word_of_piece):
        if w is None:
            labels.append(info.tokens[t])
            rows.append(len(labels) - 1)
        else:
            if w not in unit_of_word:
                unit_of_word[w] = len(labels)
                labels.append(info.words.words[w])
            rows.append(unit_of_word[w])
    member = np.zeros((len(labels), n))
    member[rows, np.arange(n)] = 1.0
    return labels, member


def _cap(n_units: int, n_maps: int, max_tokens: int, max_values: int) -> int:
    """How many units fit: T <= max_tokens and n_maps * T * T <= max_values."""
    fit = math.isqrt(max(max_values, 1) // max(n_maps, 1))
    return max(1, min(n_units, max_tokens, fit))


def attention_payload(info: "AttentionInfo", level: str = "word", max_tokens: int = MAX_TOKENS,
                      max_values: int = MAX_VALUES) -> dict[str, Any]:
    """The plain-data traits of an AttentionView for an AttentionInfo: tokens, weights (L, H, T, T) as nested
    lists rounded to 3 decimals, rollout (T,), layers, n_heads, source, title, notes.

        >>> p = attention_payload(info, level="piece")                      # doctest: +SKIP
        >>> np.array(p["weights"]).shape == info.weights.shape               # doctest: +SKIP
        True
    """
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: expected one of {LEVELS}")
    weights = np.asarray(info.weights, dtype=np.float64)                         # (L, H, T, T)
    if weights.ndim != 4 or weights.shape[-1] != len(info.tokens):
        raise ValueError(f"AttentionInfo.weights has shape {weights.shape}: expected (L, H, T, T) with "
                         f"T = {len(info.tokens)} tokens")
    labels, member = _units(info, level)                                          # (U, T)
    counts = member.sum(axis=1, keepdims=True)
    # to a unit: sum over its pieces; from a unit: mean over its pieces -> (L, H, U, U)
    merged = np.einsum("ut,lhts,vs->lhuv", member, weights, member) / counts[None, None]
    flow = member @ np.asarray(info.rollout, dtype=np.float64)                    # (U,)
    n_layers, n_heads = weights.shape[:2]
    shown = _cap(len(labels), n_layers * n_heads, max_tokens, max_values)
    notes = list(getattr(info, "notes", []))
    if shown < len(labels):
        unit = "pieces" if level == "piece" else "words and special tokens"
        notes.append(f"showing the first {shown} of {len(labels)} {unit} (payload cap: T <= {max_tokens}, "
                     f"L*H*T*T <= {max_values:,} values); rows do not sum to 1 where attention goes to the rest")
    source = int(getattr(info, "source", 0))
    text = info.words.text
    title = text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1] + "…"
    return {
        "tokens": labels[:shown],
        "weights": np.round(merged[:, :, :shown, :shown], 3).tolist(),
        "rollout": np.round(flow[:shown], 3).tolist(),
        "layers": [int(x) for x in info.layers],
        "n_heads": int(n_heads),
        "level": level,
        "source": str(info.tokens[source]),
        "title": title,
        "notes": notes,
    }


class AttentionView(anywidget.AnyWidget):
    """Attention grid + arcs + rollout strip for one text. `layer`/`head` are the selection (-1 = the mean over
    layers/heads); clicking a thumbnail in the browser sets both, so Python sees what the user picked."""

    _esm = STATIC / "attention.js"
    _css = STATIC / "attention.css"
    tokens = traitlets.List(traitlets.Unicode(), help="units drawn (pieces or words), plain text").tag(sync=True)
    weights = traitlets.List(help="(L, H, T, T) attention, nested float lists, 3 decimals").tag(sync=True)
    rollout = traitlets.List(traitlets.Float(), help="(T,) attention rollout per unit").tag(sync=True)
    layers = traitlets.List(traitlets.Int(), help="model layer number of each weights[l]").tag(sync=True)
    n_heads = traitlets.Int(0, help="heads per layer").tag(sync=True)
    level = traitlets.Unicode("word", help="'word' or 'piece'").tag(sync=True)
    source = traitlets.Unicode("", help="the piece the rollout is read from ([CLS], or the last piece)").tag(sync=True)
    layer = traitlets.Int(-1, help="selected model layer, -1 = mean over layers").tag(sync=True)
    head = traitlets.Int(-1, help="selected head, -1 = mean over heads").tag(sync=True)
    title = traitlets.Unicode("", help="heading, plain text").tag(sync=True)
    caption = traitlets.Unicode(CAPTION).tag(sync=True)
    notes = traitlets.List(traitlets.Unicode(), help="what a reader should know (truncation, ...)").tag(sync=True)

    @classmethod
    def from_info(cls, info: "AttentionInfo", level: str = "word", *, max_tokens: int = MAX_TOKENS,
                  max_values: int = MAX_VALUES, **kwargs: Any) -> "AttentionView":
        """A view of an AttentionInfo at word or piece level (see the module docstring for the payload cap).

            >>> info = attention_maps(em, "turn on the lights")                       # doctest: +SKIP
            >>> view = AttentionView.from_info(info, level="piece")                   # doctest: +SKIP
        """
        return cls(**{**attention_payload(info, level, max_tokens, max_values), **kwargs})

    def update_from(self, info: "AttentionInfo", level: str | None = None, *, max_tokens: int = MAX_TOKENS,
                    max_values: int = MAX_VALUES) -> None:
        """Show another AttentionInfo in this widget (one comm message); the selection is kept where it still
        exists, else reset to the mean."""
        payload = attention_payload(info, level or self.level, max_tokens, max_values)
        layer = self.layer if self.layer in payload["layers"] else -1
        head = self.head if self.head < payload["n_heads"] else -1
        with self.hold_sync(), self.hold_trait_notifications():
            for name, value in payload.items():
                setattr(self, name, value)
            self.layer, self.head = layer, head

    def selected(self) -> np.ndarray:
        """(T, T) the map of the current selection (means where layer/head is -1), as drawn."""
        grid = np.asarray(self.weights, dtype=np.float64)                          # (L, H, T, T)
        grid = grid.mean(axis=0) if self.layer == -1 else grid[self.layers.index(self.layer)]
        return grid.mean(axis=0) if self.head == -1 else grid[self.head]

    @traitlets.validate("layer")
    def _check_layer(self, proposal: dict) -> int:
        value = proposal["value"]
        if value != -1 and value not in self.layers:
            raise traitlets.TraitError(f"layer={value} is not shown: pick one of the model layers {self.layers}, "
                                       "or -1 for the mean over layers")
        return value

    @traitlets.validate("head")
    def _check_head(self, proposal: dict) -> int:
        value = proposal["value"]
        if value != -1 and not 0 <= value < self.n_heads:
            raise traitlets.TraitError(f"head={value} is outside 0..{self.n_heads - 1} "
                                       "(or -1 for the mean over heads)")
        return value
