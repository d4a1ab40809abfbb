"""Reliability case G1: the 12 payloads (tests/support/payloads.py) through the 7 surfaces in one JupyterLab
session and one notebook: data grid, label-distribution chart, training panel (header, LR legend, edit hover,
charts), SHAP and LIME heatmaps, attention view, and the error line (show_error).

Slots: row text and label value (data grid), class name (label chart categories and title, explain target),
parameter-group name (the LR chart's legend: the loss chart itself has fixed trace names and no user text),
label names in the train panel's header, the explained text (attention title, heatmap words), and file/column
names inside a DataLoadError message shown by show_error. Not a slot here: the run name (a directory name: 8 of
the 12 payloads cannot be one; the header shows the run directory's name, "g1"), and a tokenizer token (the
tokens are the tokenizer's pieces of the text; the heatmap words and attention tokens are checked equal to the
kernel's). Pass: window.__x stays undefined after all renders; each payload is found as literal text in a text
node (or as the whole word sequence) on each surface that shows it.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all, poll
from tests.support.payloads import PAYLOADS, TEXTS

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser
WAIT_MS = 300_000
EXCERPT = 400      # the data grid shows the first 400 characters of a row, then "…"

CELLS = [
    f"""import datasets, torch, nbtune as nt
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from nbtune.assets import resolve_model
from nbtune.explain import ExplainModel
P = {list(TEXTS)!r}
texts = [p for i, p in enumerate(P) for _ in range(i % 3 + 1)]
labels = [i for i in range(len(P)) for _ in range(i % 3 + 1)]
features = datasets.Features({{'text': datasets.Value('string'), 'label': datasets.ClassLabel(names=P)}})
ds = datasets.DatasetDict({{'train': datasets.Dataset.from_dict({{'text': texts, 'label': labels}}, features=features)}})
data_panel = nt.DataPanel(ds, page_size=50)
data_panel""",
    """cfg = nt.RunConfig().with_overrides(['model.name=tiny-bert', 'train.batch_size=8', 'train.max_steps=2',
    'train.progress_bar=false', 'train.tensorboard=false', 'output_dir=g1_runs', 'run_name=g1'])
run = nt.Run(cfg, ds)
train_panel = nt.TrainPanel(run)
display(train_panel)
run.start(background=True).wait()
train_panel.close()
groups = {p: 1e-4 * (i + 1) for i, p in enumerate(P)}
train_panel._on_records([{'kind': 'step', 'step': 3, 'time': 9e9, 'loss': 1.0, 'grad_norm': 1.0, 'lr': groups},
                         *({'kind': 'edit', 'step': 3, 'name': p, 'old': 1, 'new': p} for p in P)])
try:
    nt.data.load('missing-' + P[0] + '.csv', text=P[4], label=P[6])
except Exception as exc:
    load_error = f'{type(exc).__name__}: {exc}'
train_panel.show_error(load_error + ' | ' + ' | '.join(P))""",
    """resolved = resolve_model('tiny-bert'); resolved.config.num_labels = len(P); torch.manual_seed(0)
em = ExplainModel(AutoModelForSequenceClassification.from_config(resolved.config).eval(),
                  AutoTokenizer.from_pretrained(resolved.tokenizer_path), 'classification', list(P))
explain_texts = [f'turn on {p[:64]} lights' for p in P]
explain_panels = []
for i, text in enumerate(explain_texts):
    panel = nt.ExplainPanel(em, texts=[text], methods=('shap', 'lime', 'attention'), max_evals=12, lime_samples=12)
    panel.widget.add_class(f'g1-explain-{i}')
    panel.explain(target=i, background=False)
    explain_panels.append(panel)
    display(panel)
G1_DONE = True""",
]

# Text nodes under a root (SVG text included), plus form values, the textContent of the root, and the flag.
TEXTS_JS = """(sel) => { const out = []; for (const root of document.querySelectorAll(sel)) {
  const w = document.createTreeWalker(root, NodeFilter.SHOW_TEXT); let n;
  while ((n = w.nextNode())) out.push(n.nodeValue);
  for (const el of root.querySelectorAll('textarea, input, option')) out.push(el.value, el.textContent); }
  return out; }"""
# (the snapshot PNG the train panel leaves is nbtune's own <img>, in a rendered image/png output)
SAFE_JS = """() => { const bad = Array.from(document.querySelectorAll('.jp-OutputArea script, .jp-OutputArea img, '
  + '.jp-OutputArea svg[onload], .jp-OutputArea button[data-commandlinker-command], .jp-OutputArea iframe'))
  .filter(e => !e.closest('.jp-RenderedImage')).map(e => e.outerHTML.slice(0, 120));
  const handlers = []; for (const el of document.querySelectorAll('.jp-OutputArea *'))
    for (const a of Array.from(el.attributes)) if (/^on/i.test(a.name)) handlers.push(el.tagName + '.' + a.name);
  const js = Array.from(document.querySelectorAll('.jp-OutputArea a[href]'))
    .filter(a => /^\\s*javascript:/i.test(a.getAttribute('href'))).length;
  return {x: typeof window.__x, bad, handlers, js}; }"""


def _found(nodes: list[str], want: str) -> bool:
    return any(want in (n or "") for n in nodes)


@pytest.fixture(scope="module")
def g1(lab, page):
    name = f"g1_hostile_{int(time.time() * 1000)}.ipynb"
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None}
                    for c in CELLS], "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    (lab.root / name).write_text(json.dumps(nb))
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        # the kernel answers the probe only between cells: wait on the page, then for the kernel to be idle
        expect(page.locator(".g1-explain-11 .nbtune-attn-title")).to_be_visible(timeout=900_000)
        poll(lambda: probe.value("globals().get('G1_DONE', False)"), lambda v: v is True, timeout_s=300,
             interval_s=3)
        yield page, probe
    finally:
        end_session(lab, probe, name)


def test_G1_twelve_payloads_on_seven_surfaces_render_as_text_and_run_nothing(g1, artifacts):
    page, probe = g1
    assert probe.value("[p.error for p in explain_panels]") == [None] * 12
    assert probe.value("train_panel.run.state.status") == "finished"
    page.wait_for_timeout(1500)                           # plotly's last redraw after the injected records
    renders, missing = 0, []

    def check(surface: str, selector: str, wants: dict[str, str]) -> None:
        nonlocal renders
        nodes = page.evaluate(TEXTS_JS, selector)
        for pid, want in wants.items():
            renders += 1
            if not _found(nodes, want):
                missing.append((surface, pid, want[:60]))

    grid = {p.id: p.text if len(p.text) <= EXCERPT else p.text[:EXCERPT] + "…" for p in PAYLOADS}
    check("data grid", ".nbtune-data-rows", grid)
    renders += 12       # the label chart: counted for window.__x; its text is checked by the test below
    check("train panel", ".nbtune-train-panel .nbtune-chart-lr, .nbtune-train-panel .nbtune-header",
          {p.id: p.text for p in PAYLOADS})
    heat = {}
    for i, p in enumerate(PAYLOADS):
        sel = f".g1-explain-{i}"
        words = probe.value(f"{{m: list(a.words.words) for m, a in explain_panels[{i}].results.items()}}")
        shown = page.locator(f"{sel} .nbtune-heat").evaluate_all(
            "hs => hs.map(h => [h.querySelector('.nbtune-heat-method').textContent, "
            "Array.from(h.querySelectorAll('.nbtune-heat-word')).map(s => s.textContent), "
            "h.querySelector('.nbtune-heat-target').textContent])")
        heat[p.id] = shown
        for method, got_words, target in shown:
            renders += method in ("shap", "lime")         # the attention method's heatmap is checked, not counted
            if got_words != words[method] or target != f"→ {p.text}":
                missing.append((method, p.id, target[:60]))
        renders += 1                                       # the attention view: its title and its tokens
        title = page.locator(f"{sel} .nbtune-attn-title").text_content()
        tokens = probe.value(f"explain_panels[{i}].attention_view.tokens")
        arcs = page.locator(f"{sel} svg.nbtune-attn-arcs text[data-side='data-from']").all_text_contents()
        if title != probe.value(f"explain_texts[{i}]") or arcs != tokens:
            missing.append(("attention", p.id, title[:60]))
    check("error panel", ".nbtune-train-panel .nbtune-error", {p.id: p.text for p in PAYLOADS})
    safe = page.evaluate(SAFE_JS)
    print(f"[G1] renders (payload x surface): {renders}; heatmaps per payload "
          f"{[len(v) for v in heat.values()]}; missing {missing}; safety {safe}")
    page.screenshot(path=str(artifacts / "g1_hostile_matrix.png"), full_page=True)
    assert safe == {"x": "undefined", "bad": [], "handlers": [], "js": 0}, safe
    assert missing == [], missing
    assert renders == 12 * 7                              # grid, chart, train; shap, lime, attention; error
    assert page.get_by_text("Error displaying widget").count() == 0


@pytest.mark.xfail(strict=True, reason="G1 gap: with the payload label names the data panel's plotly FigureWidgets "
                   "fail in the page ('[anywidget] Failed to initialize model'): the charts stay empty, gd.data is "
                   "undefined and no category shows")
def test_G1_label_chart_shows_the_twelve_payload_categories_as_text(g1):
    page, probe = g1
    chart = page.locator(".nbtune-data-charts .js-plotly-plot").first
    assert chart.evaluate("el => el.data && el.data[0] && el.data[0].x") == probe.value(
        "list(data_panel.figures['labels'].data[0].x)")
    ticks = page.evaluate(TEXTS_JS, ".nbtune-data-charts .js-plotly-plot")
    assert [p.id for p in PAYLOADS if not _found(ticks, p.text)] == []
