"""Reliability case G2: a static audit (no browser) of every HTML string and widget-state string nbtune emits for
the 12 payloads of G1 (tests/support/payloads.py), parsed with the stdlib's html.parser (html5lib is not
installed in this environment).

The payloads fill these slots: row text, label value / class name, column name and file name (nt.data.load of a
CSV), run name, model name, parameter-group and metric names, live-edit values, checkpoint path, error messages,
and the explained text. What is collected:
* HTML-interpreted strings: every ipywidgets HTML value of the data, train and explain panels, plotly's
  pseudo-HTML fields of their figures (titles, trace names, category labels, hover text, annotations), the
  LoadReport's `_repr_html_`, the run report page and the explanation review page;
* text-rendered widget state (Textarea/Dropdown/anywidget traits): each must hold the payload verbatim, since
  the front end writes it with textContent/value (the G1 browser test checks that it shows as text).
Pass (catalogue): 0 on* attributes, 0 javascript: URLs, 0 data-commandlinker-* attributes, 0 <script> elements
except nbtune's own (the run report's inline plotly.js and one Plotly.newPlot call per chart), 0 raw `</` inside
inline JSON. Also: no plotly string that MathJax would typeset (`$...$`).
"""
from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any, Iterator

import ipywidgets as widgets
import pandas as pd
import pytest

from tests.support.payloads import PAYLOADS, TEXTS

URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "data", "poster", "background"}
PLOTLY_TEXT_KEYS = {"text", "name", "hovertext", "hovertemplate", "x", "y", "ticktext", "title"}


class Audit(HTMLParser):
    """Counts what an injection would leave in parsed HTML: handlers, javascript: URLs, command links, scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.handlers: list[str] = []
        self.js_urls: list[str] = []
        self.commandlinks: list[str] = []
        self.scripts: list[dict[str, Any]] = []
        self._in_script: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}>")
            if name in URL_ATTRS and re.sub(r"[\s\x00-\x1f]", "", value or "").lower().startswith("javascript:"):
                self.js_urls.append(f"<{tag} {name}={value!r}>")
            if name.startswith("data-commandlinker"):
                self.commandlinks.append(f"<{tag} {name}>")
        if tag == "script":
            self._in_script = {"attrs": dict(attrs), "body": ""}
            self.scripts.append(self._in_script)

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            self._in_script["body"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None


def audit(text: str) -> Audit:
    a = Audit()
    a.feed(text)
    a.close()
    return a


# ---- collecting what the panels emit ----
def widget_tree(w: Any) -> Iterator[Any]:
    yield w
    for child in getattr(w, "children", ()) or ():
        yield from widget_tree(child)


def plotly_strings(fig: Any) -> Iterator[str]:
    """Strings plotly draws as its pseudo-HTML (titles, names, categories, hover and annotation text)."""
    def walk(node: Any, key: str | None) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, k)
        elif isinstance(node, (list, tuple)):
            for v in node:
                yield from walk(v, key)
        elif isinstance(node, str) and key in PLOTLY_TEXT_KEYS:
            yield node
    data = fig.to_plotly_json()
    yield from walk({"data": data["data"], "layout": {k: v for k, v in data["layout"].items() if k != "template"}},
                    None)


def collect(panel_widget: Any, figures: dict[str, Any], source: str, out: SimpleNamespace) -> None:
    """Sort a panel's widget state into HTML-rendered strings and text-rendered ones."""
    for w in widget_tree(panel_widget):
        name = f"{source}:{type(w).__name__}"
        if isinstance(w, (widgets.HTML, widgets.HTMLMath)):
            out.html.append((name, w.value))
        if getattr(w, "description_allow_html", False):
            out.html.append((f"{name}.description", w.description))
        if isinstance(w, (widgets.Text, widgets.Textarea)):
            out.text.append((name, w.value))
        if isinstance(w, widgets.Dropdown):
            out.text += [(name, label) for label in w._options_labels]
        state = w.get_state()
        for trait in ("words", "tokens", "target", "title", "notes"):
            if hasattr(w, "_esm") and trait in state:
                value = state[trait]
                out.text += [(f"{name}.{trait}", v) for v in (value if isinstance(value, list) else [value])]
    for key, fig in figures.items():
        out.plotly += [(f"{source}:figure {key}", s) for s in plotly_strings(fig)]


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> Iterator[SimpleNamespace]:
    from ipywidgets.widgets.widget import _instances
    before = set(_instances)
    out = SimpleNamespace(html=[], text=[], plotly=[], pages={}, errors=[])
    tmp = tmp_path_factory.mktemp("g2")
    _data_surfaces(tmp, out)
    _train_surfaces(tmp, out)
    _explain_surfaces(out)
    yield out
    # ipywidgets keeps every open widget in a registry, and the panels' callbacks hold their models: close what
    # this module opened so later modules (tests/test_tune.py counts live models) start clean.
    for key in set(_instances) - before:
        widget = _instances.get(key)
        if widget is not None:
            widget.close()
    out.__dict__.clear()


def _data_surfaces(tmp, out: SimpleNamespace) -> None:
    """nt.data.load of a CSV whose file name, text column and label column are payloads; the DataPanel of a
    dataset whose rows and label names are the 12 payloads (label i on i % 3 + 1 rows, so the imbalance title
    names a majority and a minority label)."""
    import datasets

    from nbtune.data.load import DataLoadError, load
    from nbtune.ui.panels.data import DataPanel
    for i, p in enumerate(PAYLOADS):
        path = tmp / (p.as_filename() or f"payload-{p.id}.csv")
        label_col = PAYLOADS[(i + 1) % len(PAYLOADS)].text
        pd.DataFrame({p.text: [f"row {j} {p.text}" for j in range(3)], label_col: ["a", "b", p.text]}).to_csv(
            path, index=False)
        ds = load(path, text=p.text, label=label_col)
        out.html.append((f"load_report[{p.id}]", ds.load_report._repr_html_()))
        with pytest.raises(DataLoadError) as err:
            load(path, text=f"missing {p.text}", label=label_col)
        out.errors.append(str(err.value))
    texts = [p.text for i, p in enumerate(PAYLOADS) for _ in range(i % 3 + 1)]
    labels = [i for i in range(len(PAYLOADS)) for _ in range(i % 3 + 1)]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=TEXTS)})
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)})
    panel = DataPanel(ds, page_size=50)
    panel._guard(lambda: (_ for _ in ()).throw(ValueError(out.errors[0])))   # an error shown in its error line
    out.data_panel = panel
    collect(panel.widget, panel.figures, "data", out)


def _train_records() -> list[dict[str, Any]]:
    """What the engine writes for a run whose names carry the payloads (as the train-panel unit tests feed)."""
    groups = {p.text: 1e-4 * (i + 1) for i, p in enumerate(PAYLOADS)}
    return [
        {"kind": "start", "time": 1.0, "model": TEXTS[0], "dataset": TEXTS[2], "label_names": list(TEXTS),
         "total_steps": 2, "device": "cpu", "precision": "fp32",
         "config": {"run_name": TEXTS[4], "model": {"name": TEXTS[0]}, "notes": list(TEXTS)}},
        {"kind": "step", "step": 1, "time": 2.0, "loss": 1.0, "grad_norm": 1.0, "clipped": True, "lr": groups,
         "grad_norm_groups": groups},
        {"kind": "eval", "step": 1, "split": "validation", "loss": 0.9, **{p.text: 0.5 for p in PAYLOADS}},
        *({"kind": "edit", "step": 1, "name": p.text, "old": p.text, "new": p.text} for p in PAYLOADS),
        *({"kind": "checkpoint", "step": 2, "path": f"/runs/{p.text}/step-2"} for p in PAYLOADS),
        {"kind": "step", "step": 2, "time": 3.0, "loss": 0.8, "grad_norm": 1.0, "clipped": False, "lr": groups},
        {"kind": "end", "time": 4.0, "status": "error", "step": 2, "message": " ".join(TEXTS)},
    ]


def _train_surfaces(tmp, out: SimpleNamespace) -> None:
    from nbtune.config import RunConfig
    from nbtune.engine.control import Control
    from nbtune.history import HistoryBuilder
    from nbtune.ui.panels.train import TrainPanel
    from nbtune.ui.report import render_report
    cfg = RunConfig().with_overrides([f"output_dir={tmp}"])
    cfg.run_name = TEXTS[4]
    run = SimpleNamespace(cfg=cfg, control=Control(), state=SimpleNamespace(step=0, epoch=0, status="created"),
                          total_steps=2, precision=SimpleNamespace(name="fp32"), device="cpu", run_dir=None,
                          error=None, traceback=None, add_sink=lambda sink: sink)
    panel = TrainPanel(run)
    records = _train_records()
    panel._on_records(records)
    panel.show_error(" · ".join(out.errors), "Traceback\n" + "\n".join(TEXTS))
    panel.show_advice([SimpleNamespace(message=p.text, actions=()) for p in PAYLOADS])
    out.train_panel = panel
    collect(panel.widget, panel.figures, "train", out)
    builder = HistoryBuilder()
    for r in records:
        builder.add(r)
    out.pages["run report"] = render_report(builder.history)
    out.pages["run report, titled"] = render_report(builder.history, title=TEXTS[2])
    panel.close()


def _explain_surfaces(out: SimpleNamespace) -> None:
    """ExplainPanels on a random-init tiny-bert whose 12 class names are the payloads (the target picker holds all
    12) and whose model name is one; each panel shows an error naming a payload file and column. The panels'
    HTML (header, progress, agreement/faithfulness numbers, error) carries the model name, the explained class
    and the message; the text and its words go to text-rendered state (checked in the browser by G1). So the
    texts are short (faithfulness costs ~0.1 s per word here) and the methods are LIME and attention: SHAP adds
    ~20 s of first-call set-up and renders through the same TokenHeatmap widget. Panel 1 explains a payload text
    as the 10k payload's class, panel 2 the 10k payload's first 64 characters as the first payload's class.
    The explanation review page: attention on panel 1's text, a payload as the model name."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nbtune.assets import resolve_model
    from nbtune.explain import ExplainModel
    from nbtune.explain.report import Budget, build_report
    from nbtune.ui.panels.explain import ExplainPanel
    resolved = resolve_model("tiny-bert")
    resolved.config.num_labels = len(PAYLOADS)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(resolved.config).eval()
    model.config._name_or_path = TEXTS[1]
    em = ExplainModel(model, AutoTokenizer.from_pretrained(resolved.tokenizer_path), "classification", list(TEXTS))
    out.explain_texts = [f"turn on {TEXTS[0]} lights", f"turn on {TEXTS[-1][:64]} lights"]
    out.explain_panels = []
    for text, target, methods in ((out.explain_texts[0], len(PAYLOADS) - 1, ("lime", "attention")),
                                  (out.explain_texts[1], 0, ("attention",))):
        panel = ExplainPanel(em, texts=[text], methods=methods, max_evals=12, lime_samples=12)
        panel.explain(target=target, background=False)
        assert panel.error is None, panel.error
        panel.show_error(out.errors[target], "Traceback\n" + TEXTS[target])
        out.explain_panels.append(panel)
        collect(panel.widget, {}, f"explain[{PAYLOADS[target].id}]", out)
    report = build_report(em, [out.explain_texts[0]], methods=("attention",), targets=[TEXTS[-1]],
                          model_name=TEXTS[4], drift=False, budget=Budget(faithfulness_steps=3, random_seeds=1))
    out.pages["explanation review"] = report.html()


# ---- the audit ----
def test_G2_static_html_audit_finds_no_handler_url_commandlink_or_script(emitted):
    fragments = emitted.html + [(f"page {k}", v) for k, v in emitted.pages.items()]
    handlers, js_urls, links, scripts = [], [], [], []
    for source, text in fragments + emitted.plotly:
        a = audit(text)
        handlers += [(source, h) for h in a.handlers]
        js_urls += [(source, u) for u in a.js_urls]
        links += [(source, c) for c in a.commandlinks]
        scripts += [(source, s) for s in a.scripts]
    own = [s for src, s in scripts if src == "page run report" or src == "page run report, titled"]
    foreign = [(src, s["body"][:120]) for src, s in scripts if not src.startswith("page run report")]
    n_strings = len(fragments) + len(emitted.plotly)
    print(f"[G2] {len(fragments)} HTML strings ({len(emitted.pages)} pages), {len(emitted.plotly)} plotly strings, "
          f"{len(emitted.text)} text-rendered strings audited; scripts: {len(own)} nbtune-own, {len(foreign)} other")
    assert handlers == [] and js_urls == [] and links == [], (handlers[:3], js_urls[:3], links[:3])
    assert foreign == []
    assert n_strings >= 100
    # nbtune's own scripts in the run report: the inline plotly.js bundle, then one newPlot call per chart
    from plotly.offline import get_plotlyjs
    for page in ("run report", "run report, titled"):
        bodies = [s["body"] for s in audit(emitted.pages[page]).scripts]
        assert len(bodies) == 5 and bodies[0] == get_plotlyjs(), page
        assert all("Plotly.newPlot" in b and "</" not in b for b in bodies[1:]), page


def test_G2_every_payload_reaches_each_surface_as_escaped_or_verbatim_text(emitted):
    """The audit is only worth something if the payloads got there: escaped in the HTML, verbatim in text state."""
    html_blob = "\n".join(v for _, v in emitted.html)
    plotly_blob = "\n".join(v for _, v in emitted.plotly)
    text_values = {v for _, v in emitted.text}
    missing = []
    for p in PAYLOADS:
        escaped = html.escape(p.text)
        if escaped not in html_blob:
            missing.append(("html", p.id))
        if escaped.replace("$", "&#36;") not in plotly_blob and escaped not in plotly_blob:
            missing.append(("plotly", p.id))
        if p.text not in text_values:                 # a class name: the explain panel's target picker
            missing.append(("text state", p.id))
        if escaped not in emitted.pages["run report"]:
            missing.append(("run report", p.id))
    assert missing == []
    for text in emitted.explain_texts:
        assert text in text_values                    # the text box holds the explained text verbatim
    review = emitted.pages["explanation review"]     # its text, its class and the model name
    assert [html.escape(TEXTS[i]) in review for i in (0, 4, len(TEXTS) - 1)] == [True, True, True]


def test_G2_no_plotly_string_would_be_typeset_by_mathjax(emitted):
    """plotly.js hands a string that starts and ends with `$` to MathJax when the page has it (plotly.js PR
    #8051: `\\href{javascript:...}` in MathJax); user text must not start such a string."""
    typeset = [(src, s[:80]) for src, s in emitted.plotly if re.match(r"^\s*\$.*\$\s*$", s, re.S)]
    assert typeset == []


def test_G2_inline_json_has_no_raw_closing_tag_or_line_separator(emitted):
    """Inline JSON nbtune writes (the run report's chart data) escapes `</` and U+2028/U+2029; the widget state
    JSON is embedded by nbconvert (checked in G3), so here only its strings' shape is checked: valid JSON."""
    for page in ("run report", "run report, titled"):
        bodies = [s["body"] for s in audit(emitted.pages[page]).scripts][1:]
        for body in bodies:
            assert "</" not in body and "\u2028" not in body and "\u2029" not in body
        joined = "".join(bodies)     # the payloads are in the chart data (legend, hover), JSON-escaped
        assert "&lt;\\u002fscript&gt;" in joined and "a\\u2028b\\u2029c" in joined
    from ipywidgets.widgets.widget import _remove_buffers
    for panel in (emitted.data_panel.widget, emitted.train_panel.widget):
        for w in widget_tree(panel):
            state, _, _ = _remove_buffers(w.get_state())   # what the comm sends: JSON plus binary buffers
            json.dumps(state)
