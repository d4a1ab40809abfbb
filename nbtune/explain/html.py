"""HTML renderers for the explain info objects: pure functions from an info object to an HTML string, shared by the
review report (nbtune.explain.report) and the notebook panel.

Every fragment is self-contained: styles are inline `style` attributes (no stylesheet, no class the page must
define), charts are inline SVG, and there is no JavaScript and nothing remote. Every piece of user text (words,
labels, model and dataset names, notes) goes through `html.escape`, and every attribute value is quoted and
escaped, so a text like `<script>alert(1)</script>` shows as text.

Colours: red pushes the explained score up, blue pushes it down; the stronger the colour, the larger |score|
relative to `max_abs` (by default the largest |score| of that attribution).

Example:
    >>> from nbtune.explain.html import heatmap_html, side_by_side_html
    >>> side_by_side_html([shap_attr, lime_attr, ig_attr])        # doctest: +SKIP
    '<table ...><tr data-method="shap">...'
"""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import numpy as np

from nbtune.explain.attention import NOT_AN_EXPLANATION, AttentionInfo
from nbtune.explain.compare import AgreementInfo, FaithfulnessInfo
from nbtune.explain.drift import DriftInfo
from nbtune.explain.types import Attribution, Words, split_words  # noqa: F401 (split_words: doctests)

WHERE_THE_MODEL_LOOKS = "where the model looks"
MAX_GRID_CELLS = 20_000     # layers x heads x pieces^2 above this: layer-mean word matrices instead of the grid
MAX_WORD_CELLS = 40_000     # layers x words^2 drawn at most (evenly spaced layers, the last one always)
_TABLE = 'style="border-collapse:collapse;margin:6px 0;font-size:13px"'
_TD = 'style="border:1px solid #ddd;padding:3px 6px;vertical-align:top"'
_TDN = 'style="border:1px solid #ddd;padding:3px 6px;text-align:right;font-variant-numeric:tabular-nums"'
_TH = 'style="border:1px solid #ddd;padding:3px 6px;background:#f5f5f5;text-align:left"'
_MUTED = 'style="color:#666;font-size:12px"'
_POSITIVE, _NEGATIVE = (214, 39, 40), (31, 119, 180)


def esc(value: Any) -> str:
    """Text for an HTML text node or a double-quoted attribute value (quotes escaped too).

        >>> esc('<b title="x">')
        '&lt;b title=&quot;x&quot;&gt;'
    """
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: NaN/None as 'n/a', floats with `digits` decimals, ints as they are.

        >>> fmt(0.98765), fmt(float("nan")), fmt(3), fmt(True)
        ('0.988', 'n/a', '3', 'yes')
    """
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def colour(score: float, max_abs: float) -> str:
    """CSS background for a score: red (positive) or blue (negative), opacity by |score| / max_abs.

        >>> colour(0.5, 1.0), colour(-1.0, 1.0)
        ('rgba(214,39,40,0.425)', 'rgba(31,119,180,0.850)')
    """
    if not math.isfinite(score) or max_abs <= 0:
        return "transparent"
    alpha = min(1.0, abs(score) / max_abs) * 0.85
    r, g, b = _POSITIVE if score >= 0 else _NEGATIVE
    return f"rgba({r},{g},{b},{alpha:.3f})"


def _max_abs(scores: np.ndarray) -> float:
    finite = np.abs(np.asarray(scores, float))
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def words_heatmap_html(words: Words, scores: Sequence[float], *, max_abs: float | None = None) -> str:
    """One span per word coloured by its score, the text between words kept as it was (spacing, newlines).

        >>> words_heatmap_html(split_words("a <b>"), [1.0, 0.0, 0.0, 0.0])[-52:]
        'padding:1px 2px;border-radius:3px">&gt;</span></div>'
    """
    scores = np.asarray(scores, float).reshape(-1)
    scale = _max_abs(scores) if max_abs is None else float(max_abs)
    out, last = [], 0
    for (start, end), word, s in zip(words.spans, words.words, scores):
        out.append(esc(words.text[last:start]))
        out.append(f'<span title="{esc(f"{word}: {s:+.4f}")}" style="background:{colour(s, scale)};'
                   f'padding:1px 2px;border-radius:3px">{esc(word)}</span>')
        last = end
    out.append(esc(words.text[last:]))
    return ('<div style="white-space:pre-wrap;line-height:1.9;font-family:system-ui,sans-serif">'
            + "".join(out) + "</div>")


def heatmap_html(attribution: Attribution, *, max_abs: float | None = None) -> str:
    """The attribution's text with each word coloured by its score; hover (title) shows the score. max_abs: the
    |score| drawn at full colour (default: the attribution's largest), to put several on one scale.

        >>> heatmap_html(explain_shap(em, "the lamp zebra is on"))    # doctest: +SKIP
        '<div ...><span title="the: +0.0012" ...>the</span> ...'
    """
    return words_heatmap_html(attribution.words, attribution.scores, max_abs=max_abs)


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return "<ul style=\"margin:2px 0;padding-left:18px;font-size:12px;color:#555\">" + "".join(
        f"<li>{esc(n)}</li>" for n in notes) + "</ul>"


def _top_words(attribution: Attribution, k: int = 3) -> str:
    return ", ".join(f"{w} {s:+.3g}" for w, s in attribution.top(k))


def side_by_side_html(attributions: Sequence[Attribution]) -> str:
    """One row per method (each on its own colour scale): method, target and its score, the heatmap, the top
    words, the cost (evaluations and seconds) and the method's notes. Rows carry data-method="<name>".

        >>> side_by_side_html([explain_shap(em, text), explain_ig(em, text)])   # doctest: +SKIP
    """
    head = "".join(f"<th {_TH}>{h}</th>" for h in ("method", "target (score)", "words", "top words", "cost",
                                                   "notes"))
    rows = []
    for a in attributions:
        rows.append(
            f'<tr data-method="{esc(a.method)}"><td {_TD}><b>{esc(a.method)}</b></td>'
            f"<td {_TD}>{esc(a.target.describe())} ({fmt(a.model_score)})</td>"
            f'<td style="border:1px solid #ddd;padding:3px 6px;min-width:240px">{heatmap_html(a)}</td>'
            f'<td {_TD} data-top="{esc(a.top(1)[0][0] if len(a.words) else "")}">{esc(_top_words(a))}</td>'
            f"<td {_TD}>{a.evaluations} evaluation{'s' * (a.evaluations != 1)}, {a.seconds:.2f} s</td>"
            f"<td {_TD}>{_notes(a.notes)}</td></tr>")
    legend = (f"<div {_MUTED}>red raises the explained score, blue lowers it; each row has its own scale "
              "(hover a word for its score)</div>")
    return f"<table {_TABLE}><tr>{head}</tr>{''.join(rows)}</table>{legend}"


def agreement_html(info: AgreementInfo) -> str:
    """Pairwise agreement table (Spearman, Kendall tau-b, top-k overlap, same top word) and the words on which
    the methods disagree outright.

        >>> agreement_html(agreement([shap_attr, lime_attr, ig_attr]))   # doctest: +SKIP
    """
    head = "".join(f"<th {_TH}>{esc(h)}</th>" for h in ("methods", "Spearman", "Kendall tau-b",
                                                        f"top-{info.k} overlap", "same top word", "note"))
    rows = "".join(
        f'<tr data-pair="{esc(p.a)}|{esc(p.b)}"><td {_TD}>{esc(p.a)} / {esc(p.b)}</td><td {_TDN}>{fmt(p.spearman)}'
        f"</td><td {_TDN}>{fmt(p.kendall)}</td><td {_TDN}>{fmt(p.topk_overlap, 2)}</td>"
        f"<td {_TD}>{fmt(p.top_word_agree)}</td><td {_TD}>{esc(p.reason or '')}</td></tr>" for p in info.pairs)
    found = info.disagreements()
    listed = ("<ul style=\"margin:2px 0;padding-left:18px\">" + "".join(f"<li>{esc(d.describe())}</li>"
                                                                      for d in found) + "</ul>"
              if found else f"<div {_MUTED}>no word is in one method's top {info.k} and another's bottom half</div>")
    return (f"<div><b>Agreement</b> <span {_MUTED}>(target {esc(info.target)})</span>"
            f"<table {_TABLE}><tr>{head}</tr>{rows}</table><div><b>Disagreements</b></div>{listed}"
            f"{_notes(info.notes)}</div>")


def _curve_svg(f: FaithfulnessInfo, width: int = 300, height: int = 150) -> str:
    """Deletion (red) and insertion (green) curves over the fraction of words, random orders dashed."""
    x = f.fractions
    series = [(f.deletion, "#d62728", ""), (f.insertion, "#2ca02c", ""),
              (f.random_deletion, "#d62728", ' stroke-dasharray="4 3"'),
              (f.random_insertion, "#2ca02c", ' stroke-dasharray="4 3"')]
    values = np.concatenate([s for s, _, _ in series])
    values = values[np.isfinite(values)]
    lo, hi = (min(0.0, float(values.min())), max(1.0, float(values.max()))) if values.size else (0.0, 1.0)
    if "log-prob" in f.target or f.target.startswith("next:"):   # causal-lm: log-probabilities, scale to data
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    left, bottom, right, top = 34, height - 22, width - 6, 8

    def point(xi: float, yi: float) -> str:
        px = left + xi * (right - left)
        py = bottom - (yi - lo) / (hi - lo) * (bottom - top)
        return f"{px:.1f},{py:.1f}"

    lines = "".join(
        f'<polyline fill="none" stroke="{c}" stroke-width="1.6"{dash} points="'
        + " ".join(point(float(a), float(b)) for a, b in zip(x, s) if math.isfinite(float(b))) + '"/>'
        for s, c, dash in series)
    axes = (f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>'
            f'<text x="{left - 3}" y="{top + 8}" font-size="10" text-anchor="end">{fmt(hi, 2)}</text>'
            f'<text x="{left - 3}" y="{bottom}" font-size="10" text-anchor="end">{fmt(lo, 2)}</text>'
            f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" font-size="10" text-anchor="middle">'
            f"fraction of words removed / kept</text>")
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="deletion and insertion curves of {esc(f.method)}">{axes}{lines}</svg>')


def faithfulness_html(infos: FaithfulnessInfo | Mapping[str, FaithfulnessInfo]) -> str:
    """Faithfulness per method: AOPC of comprehensiveness and sufficiency next to random word orders, deletion
    and insertion AUC, where the prediction flips, whether the method beats random; and the deletion/insertion
    curves as inline SVG (solid: the method's order, dashed: random orders).

        >>> faithfulness_html({"shap": faithfulness(em, shap_attr)})    # doctest: +SKIP
    """
    if isinstance(infos, FaithfulnessInfo):
        infos = {infos.method: infos}
    head = "".join(f"<th {_TH}>{esc(h)}</th>" for h in (
        "method", "AOPC (comprehensiveness)", "random", "AOPC (sufficiency)", "random", "deletion AUC",
        "insertion AUC", "flipped at (words)", "prediction after top-1 removed", "beats random"))
    rows, charts = [], []
    for name, f in infos.items():
        flipped = "never" if f.flipped_at is None else str(f.flipped_at)
        rows.append(
            f'<tr data-method="{esc(name)}"><td {_TD}><b>{esc(name)}</b></td><td {_TDN}>{fmt(f.aopc)}</td>'
            f"<td {_TDN}>{fmt(f.random_aopc)}</td><td {_TDN}>{fmt(f.aopc_sufficiency)}</td>"
            f"<td {_TDN}>{fmt(f.random_aopc_sufficiency)}</td><td {_TDN}>{fmt(f.deletion_auc)}</td>"
            f"<td {_TDN}>{fmt(f.insertion_auc)}</td><td {_TDN}>{esc(flipped)}</td>"
            f"<td {_TD}>{esc(f.prediction_after_top1_deleted or 'n/a')}</td><td {_TD}>{fmt(f.beats_random)}</td></tr>")
        charts.append(f'<figure style="display:inline-block;margin:4px 10px 4px 0"><figcaption style="font-size:12px">'
                      f"{esc(name)}: {fmt(f.full_score)} on the full text</figcaption>{_curve_svg(f)}"
                      f"{_notes(f.notes)}</figure>")
    legend = (f"<div {_MUTED}>AOPC: mean drop of the explained score when the top 1/5/10/20/50% words are removed "
              "(comprehensiveness, higher is more faithful) or alone kept (sufficiency, lower is better); 'random' is "
              "the same for random word orders. Curves: red deletion, green insertion, dashed random.</div>")
    return (f"<div><b>Faithfulness</b><table {_TABLE}><tr>{head}</tr>{''.join(rows)}</table>{legend}"
            f"<div>{''.join(charts)}</div></div>")


def _matrix_svg(matrix: np.ndarray, row_labels: Sequence[str] | None = None, *, cell: int = 6,
                label_width: int = 0, caption: str = "") -> str:
    """A (R, C) non-negative matrix as white-to-blue squares; labels (escaped) on rows and columns when given.
    Cells under 1% of the largest value stay background white, and cells of one shade share a path: attention
    is sparse, and a long text's matrices stay small in the file."""
    matrix = np.asarray(matrix, float)
    rows, cols = matrix.shape
    scale = _max_abs(matrix)
    label_h = label_width if row_labels is not None else 0
    width, height = label_width + cols * cell + 2, label_h + rows * cell + 2
    parts = [f'<rect x="{label_width}" y="{label_h}" width="{cols * cell}" height="{rows * cell}" fill="#fff" '
             'stroke="#eee"/>']
    levels: dict[int, list[str]] = {}          # 20 shades, one <path> each: ~20 bytes a cell instead of ~80
    for r in range(rows):
        for c in range(cols):
            v = min(1.0, max(0.0, float(matrix[r, c]) / scale)) if math.isfinite(matrix[r, c]) else 0.0
            if v >= 0.01:
                levels.setdefault(max(1, round(v * 20)), []).append(
                    f"M{label_width + c * cell} {label_h + r * cell}h{cell}v{cell}h-{cell}z")
    for level, squares in sorted(levels.items()):
        v = level / 20
        parts.append(f'<path fill="rgb({int(255 - 224 * v)},{int(255 - 136 * v)},{int(255 - 75 * v)})" '
                     f'd="{"".join(squares)}"/>')
    if row_labels is not None:
        for i, label in enumerate(row_labels):
            mid = i * cell + cell * 0.75
            parts.append(f'<text x="{label_width - 3}" y="{label_h + mid:.1f}" font-size="{cell - 2}" '
                         f'text-anchor="end">{esc(label)}</text>')
            parts.append(f'<text transform="translate({label_width + i * cell + cell * 0.75:.1f},{label_h - 3}) '
                         f'rotate(-90)" font-size="{cell - 2}">{esc(label)}</text>')
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{esc(caption)}">{"".join(parts)}</svg>')


def _head_grid(info: AttentionInfo) -> str:
    """A layer x head table of (T, T) piece-level heatmaps (row = attending piece), pieces listed below."""
    n_heads, n = info.weights.shape[1], info.weights.shape[2]
    cell = max(3, min(10, 120 // max(n, 1)))
    head_row = "".join(f"<th {_TH}>head {h}</th>" for h in range(n_heads))
    body = "".join(
        f"<tr><th {_TH}>layer {layer}</th>" + "".join(
            f"<td {_TD}>{_matrix_svg(info.weights[li, h], cell=cell, caption=f'layer {layer} head {h}')}</td>"
            for h in range(n_heads)) + "</tr>" for li, layer in enumerate(info.layers))
    tokens = " ".join(f"{i}:{t}" for i, t in enumerate(info.tokens))
    return (f"<div><b>Attention by layer and head</b> <span {_MUTED}>(pieces; row = attending piece, "
            f"column = attended piece)</span><table {_TABLE}><tr><th {_TH}></th>{head_row}</tr>{body}</table>"
            f"<div {_MUTED}>pieces: {esc(tokens)}</div></div>")


def _layer_word_matrices(info: AttentionInfo) -> str:
    """One head-averaged (W, W) word-level matrix per layer, words labelling rows and columns; for long texts
    only evenly spaced layers (the last always), and none past MAX_WORD_CELLS for a single layer."""
    labels, n_layers = info.words.words, len(info.layers)
    per_layer = max(1, len(labels) ** 2)
    if per_layer > MAX_WORD_CELLS:
        return (f"<div {_MUTED}>{len(labels)} words: too many for a word-to-word attention matrix; the rollout "
                "above shows where the first piece looks</div>")
    keep = min(n_layers, MAX_WORD_CELLS // per_layer)
    if keep >= n_layers:
        picked = list(range(n_layers))
    else:  # evenly spaced, first and last included (just the last when only one fits)
        picked = sorted({round(j * (n_layers - 1) / (keep - 1)) for j in range(keep)}) if keep > 1 else [n_layers - 1]
    layers = [info.layers[i] for i in picked]
    shown = "" if len(layers) == n_layers else f"; layers {', '.join(map(str, layers))} of {n_layers}"
    width = 8 + 6 * max((len(w) for w in labels), default=1)
    figures = "".join(
        f'<figure style="display:inline-block;margin:4px"><figcaption style="font-size:12px">layer {layer}'
        "</figcaption>" + _matrix_svg(info.merged_words(layer), labels, cell=11, label_width=width,
                                      caption=f"layer {layer}") + "</figure>" for layer in layers)
    return (f"<div><b>Attention by layer</b> <span {_MUTED}>(mean over {info.weights.shape[1]} heads, merged to "
            f"words; row = attending word{shown})</span><div>{figures}</div></div>")


def attention_html(info: AttentionInfo) -> str:
    """Where the model looks (not an explanation): the attention rollout over the words as a heatmap, and either a
    layer x head grid of small piece-level heatmaps (rows attend to columns) or, for big models and long texts
    (more than MAX_GRID_CELLS cells), one head-averaged word-level matrix per layer.

        >>> attention_html(attention_maps(em, "the lamp zebra is on today"))   # doctest: +SKIP
    """
    n_layers, n_heads, n = info.weights.shape[:3]
    rollout = (f"<div><b>Attention rollout</b> <span {_MUTED}>(from piece {info.source} "
               f"{esc(repr(info.tokens[info.source]))}, summed over each word's pieces)</span>"
               f"{words_heatmap_html(info.words, info.word_rollout)}</div>")
    grid = _head_grid(info) if n_layers * n_heads * n * n <= MAX_GRID_CELLS else _layer_word_matrices(info)
    label = (f'<div style="background:#fff7e0;border:1px solid #e0c060;padding:4px 8px;font-size:13px">'
             f"<b>Attention: {esc(WHERE_THE_MODEL_LOOKS)}</b> — {esc(NOT_AN_EXPLANATION)}.</div>")
    return f"<div>{label}{rollout}{grid}{_notes(info.notes)}</div>"


def drift_html(info: DriftInfo) -> str:
    """Explanation drift: per probe a words x checkpoints table of attributions (one colour scale per probe),
    the explained score at each checkpoint, and the words that gained or lost the most from first to last.

        >>> drift_html(explanation_drift(run_dir, probes, explain_ig))   # doctest: +SKIP
    """
    parts = [f"<div><b>Explanation drift</b> <span {_MUTED}>({esc(info.method)} at steps "
             f"{esc(', '.join(map(str, info.steps)))})</span>{_notes(info.notes)}"]
    for p in info.probes:
        matrix = p.matrix()                                                # (S, W)
        scale = _max_abs(matrix)
        head = "".join(f"<th {_TH}>step {s}</th>" for s in p.steps)
        rows = [f"<tr><td {_TD}><i>score of {esc(p.target.describe())}</i></td>"
                + "".join(f"<td {_TDN}>{fmt(s)}</td>" for s in p.model_scores) + "</tr>"]
        for w, word in enumerate(p.words):
            rows.append(f"<tr><td {_TD}>{esc(word)}</td>" + "".join(
                f'<td {_TDN} title="{esc(f"{word} at step {s}: {matrix[i, w]:+.4f}")}"><span style="background:'
                f'{colour(matrix[i, w], scale)};padding:0 3px">{fmt(matrix[i, w])}</span></td>'
                for i, s in enumerate(p.steps)) + "</tr>")
        gained = ", ".join(f"{c.word} {c.change:+.3f}" for c in p.gainers) or "none"
        lost = ", ".join(f"{c.word} {c.change:+.3f}" for c in p.losers) or "none"
        notes = "".join(f"<div>step {s}</div>{_notes(a.notes)}" for s, a in zip(p.steps, p.attributions))
        parts.append(f'<div style="margin:8px 0"><div>{esc(p.text)}</div><table {_TABLE}><tr><th {_TH}>word</th>'
                     f"{head}</tr>{''.join(rows)}</table><div>gained: {esc(gained)}</div>"
                     f"<div>lost: {esc(lost)}</div><details><summary {_MUTED}>{esc(info.method)} notes at each "
                     f"checkpoint</summary>{notes}</details></div>")
    return "".join(parts) + "</div>"
