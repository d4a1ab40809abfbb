"""The ExplainPanel: SHAP, LIME, integrated gradients and attention side by side on the model being trained,
with agreement and faithfulness numbers, a cost estimate before running and progress while it runs.

Compute -> info -> render: nbtune.explain computes `Attribution`/`AttentionInfo`/`AgreementInfo`/
`FaithfulnessInfo`; nbtune.explain.html renders the tables as escaped HTML strings; the heatmaps and the
attention view are anywidgets (nbtune.ui.widgets) whose ES modules write user text with textContent only.
Explanations run in a background thread (the notebook stays usable); the model's training flag is restored.

Example:
    >>> panel = nt.ExplainPanel(run, texts=["my card was declined twice"])   # doctest: +SKIP
    >>> panel.explain(); panel.wait()                                          # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
import html
import threading
import time
import traceback
from typing import Any, Sequence

import ipywidgets as widgets

METHOD_LABELS = {"shap": "SHAP (partition)", "lime": "LIME", "ig": "Integrated gradients", "attention": "Attention"}
DEFAULT_METHODS = ("shap", "lime", "ig", "attention")
# Model forward passes each method costs, relative to one text scored alone (IG: forward + backward per step).
GRADIENT_COST = 3.0


class ExplainPanel:
    """Explain one text at a time with several methods, side by side.

    Args:
        source: a Run (the model being trained) or an `ExplainModel`.
        texts: texts offered in the picker (the first is in the text box); with a Run, its validation split's
            wrong and most uncertain predictions are offered too.
        methods: any of "shap", "lime", "ig", "attention" (and "grad_x_input").
        max_evals / lime_samples / ig_steps: the budgets of SHAP, LIME and IG.
    """

    def __init__(self, source: Any, texts: Sequence[str] = (), *, methods: Sequence[str] = DEFAULT_METHODS,
                 max_evals: int = 300, lime_samples: int = 500, ig_steps: int = 50, examples: int = 10) -> None:
        from nbtune.explain import METHODS, ExplainError, ExplainModel
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ExplainError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        self.em = source if isinstance(source, ExplainModel) else ExplainModel.from_run(source)
        self.run = None if isinstance(source, ExplainModel) else source
        self.methods = list(methods)
        self.budgets = {"shap": int(max_evals), "lime": int(lime_samples), "ig": int(ig_steps)}
        self.results: dict[str, Any] = {}
        self.attention: Any = None
        self.agreement: Any = None
        self.faithfulness: dict[str, Any] = {}
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._seconds_per_eval: float | None = None
        self._build_widgets(list(texts), examples)

    # ---- layout ----
    def _build_widgets(self, texts: list[str], n_examples: int) -> None:
        self.text_box = widgets.Textarea(value=texts[0] if texts else "", placeholder="a text to explain",
                                         layout={"width": "100%", "height": "60px"})
        options = [(t[:80], t) for t in texts]
        if self.run is not None and self.em.task == "classification":
            options += self._run_examples(n_examples)
        self.picker = widgets.Dropdown(description="Example", options=[("(type above)", None)] + options,
                                       layout={"width": "100%"})
        self.picker.observe(self._on_pick, names="value")
        targets = [("predicted class", None)] + [(n, i) for i, n in enumerate(self.em.label_names)]
        self.target_picker = widgets.Dropdown(description="Target", options=targets, layout={"width": "320px"})
        self.method_boxes = {m: widgets.Checkbox(value=True, description=METHOD_LABELS.get(m, m), indent=False,
                                                 layout={"width": "180px"}) for m in self.methods}
        self.explain_button = widgets.Button(description="Explain", icon="search", button_style="primary")
        self.explain_button.on_click(lambda _: self._guard(self.explain))
        self.cost_html = widgets.HTML()
        self.progress = widgets.IntProgress(min=0, max=1, value=0, layout={"width": "300px"})
        self.progress_label = widgets.HTML()
        self.heatmaps_box = widgets.VBox([])
        self.attention_box = widgets.VBox([])
        self.numbers_html = widgets.HTML()
        self.error_html = widgets.HTML(layout={"display": "none"})
        for box in self.method_boxes.values():
            box.observe(lambda _: self._update_cost(), names="value")
        self.text_box.observe(lambda _: self._update_cost(), names="value")
        controls = widgets.HBox([self.target_picker, *self.method_boxes.values()])
        run_row = widgets.HBox([self.explain_button, self.progress, self.progress_label])
        self.widget = widgets.VBox([widgets.HTML(self._header()), self.text_box, self.picker, controls,
                                    self.cost_html, run_row, self.error_html, self.heatmaps_box,
                                    self.numbers_html, self.attention_box])
        for w, name in ((self.widget, "explain-panel"), (self.text_box, "explain-text"),
                        (self.picker, "explain-picker"), (self.explain_button, "explain-run"),
                        (self.cost_html, "explain-cost"), (self.progress_label, "explain-progress"),
                        (self.heatmaps_box, "explain-heatmaps"), (self.numbers_html, "explain-numbers"),
                        (self.attention_box, "explain-attention"), (self.error_html, "explain-error")):
            w.add_class(f"nbtune-{name}")
        self._update_cost()

    def _header(self) -> str:
        name = (self.run.cfg.model.name if self.run is not None else
                getattr(getattr(self.em.model, "config", None), "_name_or_path", "") or type(self.em.model).__name__)
        labels = len(self.em.label_names)
        return (f"<b>Explain</b> · model {html.escape(str(name))} · {html.escape(self.em.task)}"
                + (f" · {labels} labels" if labels else ""))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _run_examples(self, n: int) -> list[tuple[str, str]]:
        from nbtune.explain.examples import pick_examples, run_split_texts
        try:
            texts, labels = run_split_texts(self.run, "validation", max_rows=500)
            return [(e.describe(), e.text) for e in pick_examples(self.em, texts, labels, n)]
        except Exception as exc:  # noqa: BLE001 - the picker is a convenience: say why it is empty
            self.show_error(f"no examples from the run's validation split: {exc}")
            return []

    def _on_pick(self, change: dict) -> None:
        if change["new"] is not None:
            self.text_box.value = change["new"]

    # ---- cost ----
    def estimate_seconds(self, methods: Sequence[str] | None = None) -> dict[str, float]:
        """Seconds each method should take on the current text: its model evaluations times the measured cost
        of one evaluation (one batch of em.batch_size texts timed once, then reused)."""
        text = self.text_box.value or "a short text"
        if self._seconds_per_eval is None:
            target = self.em.target(text) if self.em.task != "token-classification" else None
            if target is not None:
                t0 = time.perf_counter()
                self.em.score_texts([text] * self.em.batch_size, target)
                self._seconds_per_eval = (time.perf_counter() - t0) / self.em.batch_size
        per = self._seconds_per_eval or 0.01
        evals = {"shap": self.budgets["shap"], "lime": self.budgets["lime"],
                 "ig": self.budgets["ig"] * GRADIENT_COST, "attention": 1, "grad_x_input": GRADIENT_COST}
        return {m: evals[m] * per for m in (methods or self.selected_methods())}

    def selected_methods(self) -> list[str]:
        return [m for m, box in self.method_boxes.items() if box.value]

    def _update_cost(self) -> None:
        try:
            estimate = self.estimate_seconds()
        except Exception:  # noqa: BLE001 - e.g. an empty text: no estimate yet
            self.cost_html.value = ""
            return
        parts = ", ".join(f"{METHOD_LABELS.get(m, m)} ~{s:.1f} s" for m, s in estimate.items())
        self.cost_html.value = (f"<small>Estimated cost: {html.escape(parts)} (SHAP {self.budgets['shap']} "
                                f"evaluations, LIME {self.budgets['lime']} samples, IG {self.budgets['ig']} "
                                f"steps)</small>")

    # ---- running ----
    def explain(self, text: str | None = None, target: int | str | None = None, background: bool = True) -> None:
        """Explain `text` (default: the text box) with the ticked methods, in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("an explanation is already running")
        text = self.text_box.value if text is None else text
        if text != self.text_box.value:
            self.text_box.value = text
        target = self.target_picker.value if target is None else target
        methods = self.selected_methods()
        self.error, self.error_html.layout.display = None, "none"
        self.explain_button.disabled = True
        self.progress.max, self.progress.value = len(methods) + 1, 0
        if not background:
            self._explain(text, target, methods)
            return
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._explain_safely, text, target, methods),
                                        daemon=True, name="nbtune-explain")
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> "ExplainPanel":
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self

    def _explain_safely(self, text: str, target: Any, methods: list[str]) -> None:
        try:
            self._explain(text, target, methods)
        except Exception as exc:  # noqa: BLE001 - shown in the panel instead of lost in a thread
            self.show_error(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        finally:
            self.explain_button.disabled = False

    def _explain(self, text: str, target: Any, methods: list[str]) -> None:
        from nbtune.explain import METHODS, agreement, attention_maps, faithfulness
        resolved = self.em.target(text, target)
        options = {"shap": {"max_evals": self.budgets["shap"]}, "lime": {"num_samples": self.budgets["lime"]},
                   "ig": {"n_steps": self.budgets["ig"]}}
        self.results, self.faithfulness = {}, {}
        for i, method in enumerate(methods):
            self.progress_label.value = html.escape(f"{METHOD_LABELS.get(method, method)} ({i + 1}/{len(methods)})")
            self.results[method] = METHODS[method](self.em, text, resolved, **options.get(method, {}))
            if method == "attention":
                self.attention = attention_maps(self.em, text)
            self.progress.value = i + 1
            self._render_heatmaps()
        self.progress_label.value = "agreement and faithfulness"
        attributions = list(self.results.values())
        self.agreement = agreement(attributions) if len(attributions) > 1 else None
        self.faithfulness = {m: faithfulness(self.em, a) for m, a in self.results.items()}
        self.progress.value = self.progress.max
        self._render_numbers()
        self._render_attention()
        self.progress_label.value = html.escape(f"done: {resolved.describe()}")

    # ---- rendering ----
    def _render_heatmaps(self) -> None:
        from nbtune.ui.widgets.heatmap import TokenHeatmap
        have = {getattr(w, "method", None): w for w in self.heatmaps_box.children}
        children = []
        for method, attr in self.results.items():
            w = have.get(attr.method)
            if w is None:
                w = TokenHeatmap.from_attribution(attr)
            else:
                w.update_from(attr)
            children.append(w)
        self.heatmaps_box.children = children

    def _render_numbers(self) -> None:
        from nbtune.explain.html import agreement_html, faithfulness_html
        parts = []
        if self.agreement is not None:
            parts.append(agreement_html(self.agreement))
        if self.faithfulness:
            parts.append(faithfulness_html(self.faithfulness))
        self.numbers_html.value = "".join(parts)

    def _render_attention(self) -> None:
        if self.attention is None:
            self.attention_box.children = []
            return
        from nbtune.ui.widgets.attention import AttentionView
        self.attention_view = AttentionView.from_info(self.attention)
        self.attention_box.children = [self.attention_view]

    def _guard(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button's failure is shown, never lost in a callback
            self.explain_button.disabled = False
            self.show_error(f"{type(exc).__name__}: {exc}", traceback.format_exc())

    def show_error(self, message: str, traceback_text: str | None = None) -> None:
        self.error = self.error or message
        details = (f"<details><summary>traceback</summary><pre>{html.escape(traceback_text)}</pre></details>"
                   if traceback_text else "")
        self.error_html.value = f'<div style="color:#b00020"><b>Error:</b> {html.escape(message)}{details}</div>'
        self.error_html.layout.display = None
