"""Browser tier: the explainability notebook (notebooks/05) in a real JupyterLab + headless chromium.

Run All with tiny budgets (two short MiniLM fine-tunes), then:
1. the notebook's FIRST ExplainPanel shows the SHAP, LIME, IG and attention heatmaps with the kernel's words and
   scores (each coloured by score), the attention view's thumbnails and arcs drawn, and the agreement and
   faithfulness numbers the kernel computed;
2. a second panel, on the same model with label names carrying HTML/script payloads, gets a hostile text typed
   into its text box in the browser and Explain clicked: text, tokens and labels show as text, no element or
   event handler is injected, and no payload ran (window.__xss stays undefined);
3. a review report of that hostile text (hostile labels and model name) opened from file:// shows them as text,
   holds no script/img element or on* attribute, and runs nothing.
Screenshots in the artifacts dir: explain_panel.png, explain_panel_hostile.png, explain_report.png.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all, poll

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

import nbformat  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from tests.browser.test_train_panel_browser import BENIGN_CONSOLE  # noqa: E402

pytestmark = pytest.mark.browser

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "05_explainability_review.ipynb"
PARAMETERS = ('MODEL = "minilm"\nINTENT_STEPS = 12\nSENTIMENT_STEPS = 6\nTRAIN_SAMPLES = 256\nEVAL_SAMPLES = 48\n'
              'SAVE_EVERY = 6\nMAX_EVALS = 40\nLIME_SAMPLES = 60\nIG_STEPS = 8\nPROBES = 2\nFULL_SIZE = False\n')
WAIT_MS = 300_000
NOTEBOOK_S = 1500        # two fine-tunes, drift, two reports and three explanations on a busy 2-core machine
METHODS = ["shap", "lime", "ig", "attention"]
ARC_MIN = 0.005          # attention.js draws no line below this weight
# Each payload would set window.__xss if it ever became markup: an element, a script, or a broken-out attribute.
HOSTILE = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>",
           "</script><script>window.__xss=3</script>", '" onmouseover="window.__xss=4']
HOSTILE_TEXT = "lights " + " ".join(HOSTILE)

# Appended after the notebook's last cell: a panel and a report on the intents model with hostile label names.
HOSTILE_CELLS = [f"""
# Browser test only: label names, a model name and (typed in the browser) a text carrying HTML/script payloads.
from nbtune.explain import ExplainModel

HOSTILE = {HOSTILE!r}
HOSTILE_TEXT = {HOSTILE_TEXT!r}
hostile_em = ExplainModel(intents.model, intents.tokenizer, "classification",
                          [f"{{HOSTILE[i % len(HOSTILE)]}} {{name}}" for i, name in enumerate(intents.data.label_names)])
hostile_panel = nt.ExplainPanel(hostile_em, texts=["turn off the lights"], max_evals=MAX_EVALS,
                                lime_samples=LIME_SAMPLES, ig_steps=IG_STEPS)
hostile_panel.widget.add_class("nbtune-hostile-panel")
hostile_panel
""", """
hostile_report = build_report(hostile_em, [HOSTILE_TEXT], model_name=HOSTILE[1], drift=False,
                              budget=Budget(shap_max_evals=MAX_EVALS, lime_samples=LIME_SAMPLES, ig_steps=IG_STEPS,
                                            faithfulness_steps=5, random_seeds=2))
hostile_path = hostile_report.write_report({report!r}).resolve()
print(f"hostile report: {{hostile_path}}")
"""]

# Per heatmap: method, target, words, scores, and the computed background alpha of each word.
HEAT_JS = """(box) => Array.from(box.querySelectorAll('.nbtune-heat')).map(h => {
  const spans = Array.from(h.querySelectorAll('.nbtune-heat-word'));
  const alpha = (s) => { const m = getComputedStyle(s).backgroundColor.match(/rgba?\\(([^)]*)\\)/);
    if (!m) return 0; const p = m[1].split(',').map(Number); return p.length === 4 ? p[3] : 1; };
  const rgb = (s) => getComputedStyle(s).backgroundColor.replace(/\\s/g, '').replace(/^rgba?\\(/, '').split(',')
    .slice(0, 3).join(',');
  return {method: h.querySelector('.nbtune-heat-method').textContent,
          target: h.querySelector('.nbtune-heat-target').textContent,
          words: spans.map(s => s.textContent), scores: spans.map(s => Number(s.dataset.score)),
          alpha: spans.map(alpha), rgb: spans.map(rgb)};
})"""
# Thumbnails with at least one non-white pixel (a drawn attention map), out of all of them.
THUMBS_JS = """(root) => { const canvases = Array.from(root.querySelectorAll('.nbtune-attn-thumb canvas'));
  const drawn = canvases.filter(c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let k = 0; k < d.length; k += 4) if (d[k] < 250) return true; return false; });
  return [drawn.length, canvases.length]; }"""
NUMBERS_JS = """(el) => ({
  pairs: Array.from(el.querySelectorAll('tr[data-pair]')).map(r => [r.dataset.pair, r.cells[1].textContent]),
  faith: Array.from(el.querySelectorAll('tr[data-method]')).map(r => [r.dataset.method, r.cells[1].textContent]),
  curves: el.querySelectorAll('svg polyline').length})"""
# What an injection would leave behind: elements that run or load things, on* attributes, the flag.
SAFE_JS = """(root) => { const scope = root || document;
  const bad = Array.from(scope.querySelectorAll('script, img, iframe, object, embed')).map(e => e.outerHTML.slice(0, 160));
  const handlers = [];
  for (const el of scope.querySelectorAll('*')) for (const a of Array.from(el.attributes))
    if (/^on/i.test(a.name)) handlers.push(`${el.tagName}[${a.name}=${a.value}]`);
  return {xss: typeof window.__xss, bad, handlers}; }"""
TRACEBACK_JS = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.innerText)
  .filter(t => t.includes('Traceback (most recent call last)')).map(t => t.slice(0, 2000))"""


def _write_notebook(dst: Path, report: str) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = PARAMETERS
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb.cells += [nbformat.v4.new_code_cell(src.format(report=report).strip() if "{report" in src else src.strip())
                 for src in HOSTILE_CELLS]
    nbformat.write(nb, dst)


def _kernel_json(probe, expr: str, timeout_s: float = 60):
    """A kernel value through JSON (NaN survives, unlike literal_eval of a repr)."""
    return json.loads(probe.value(f"__import__('json').dumps({expr})", timeout_s=timeout_s))


def _fmt(value) -> str:
    """How nbtune.explain.html writes a float in a table cell."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _screenshot_from_top(page, element, path: Path) -> None:
    """The viewport with `element`'s top at the top: an element screenshot of a panel taller than the notebook's
    scroll area captures the area around it (grey) rather than the panel."""
    element.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


def _console_errors(page, start: int) -> list:
    return [(t, msg) for t, msg, url in page.console_lines[start:]
            if t in ("error", "pageerror") and not any(p.search(msg) or p.search(url) for p in BENIGN_CONSOLE)]


@pytest.fixture(scope="module")
def nb05(lab, page):
    """Notebook 05 (tiny parameters + the hostile cells) run from Run All until its last cell has written the
    hostile report; yields the probe and where this module's console lines start."""
    name = f"explain_browser_{int(time.time() * 1000)}.ipynb"
    report = f"{Path(name).stem}-hostile.html"
    _write_notebook(lab.root / name, report)
    console_start = len(page.console_lines)
    t0 = time.monotonic()
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        state, _ = poll(lambda: ((lab.root / report).exists(), page.evaluate(TRACEBACK_JS)),
                        lambda v: v[0] or v[1], timeout_s=NOTEBOOK_S, interval_s=2)
        assert not state[1], f"a notebook cell failed:\n{state[1][0]}"
        expect(page.locator("span.jp-StatusBar-TextItem[title^='Change kernel']")).to_have_text(
            re.compile(r"\| Idle$"), timeout=WAIT_MS)
        print(f"[explain] notebook ran in {time.monotonic() - t0:.0f}s")
        yield SimpleNamespace(probe=probe, console_start=console_start)
    finally:
        end_session(lab, probe, name)


def test_first_panel_shows_four_heatmaps_attention_and_numbers(nb05, page, artifacts):
    probe = nb05.probe
    assert probe.value("panel.error") is None
    kernel = _kernel_json(probe, "{m: {'method': a.method, 'words': list(a.words.words), 'target': a.target.describe(),"
                                 " 'scores': [float(s) for s in a.scores]} for m, a in panel.results.items()}")
    assert list(kernel) == METHODS
    first = page.locator(".nbtune-explain-panel").first
    first.scroll_into_view_if_needed()
    heat_box = first.locator(".nbtune-explain-heatmaps")
    expect(heat_box.locator(".nbtune-heat")).to_have_count(4)
    heats = heat_box.evaluate(HEAT_JS)
    assert [h["method"] for h in heats] == [kernel[m]["method"] for m in METHODS] == METHODS
    for h, m in zip(heats, METHODS):
        k = kernel[m]
        assert h["words"] == k["words"] and len(k["words"]) > 0, m
        assert h["target"] == f"→ {k['target']}"
        expected = [s if math.isfinite(s) else 0.0 for s in k["scores"]]
        assert h["scores"] == pytest.approx(expected, abs=1e-9), m
        top = max(range(len(expected)), key=lambda i: abs(expected[i]))
        assert abs(expected[top]) > 0, f"{m}: every score is 0"
        # strongest word at full strength, red when it pushes the class up and blue when it pushes it down
        assert h["alpha"][top] == pytest.approx(0.8, abs=1e-3), (m, h["alpha"])
        assert h["rgb"][top] == ("214,39,40" if expected[top] > 0 else "31,119,180"), m
        assert sum(a > 0 for a in h["alpha"]) >= 1
    label = kernel["shap"]["target"]
    expect(first.locator(".nbtune-explain-progress")).to_have_text(f"done: {label}")

    # the attention view: a thumbnail per layer x head plus the mean row/column, each drawn; the kernel's arcs
    view = first.locator(".nbtune-explain-attention .nbtune-attn")
    expect(view.locator(".nbtune-attn-grid")).to_be_visible()
    layers, heads, arcs, tokens = probe.value(
        f"(panel.attention_view.layers, panel.attention_view.n_heads, "
        f"int((panel.attention_view.selected() >= {ARC_MIN}).sum()), panel.attention_view.tokens)")
    assert view.locator(".nbtune-attn-thumb:not(.nbtune-attn-mean)").count() == len(layers) * heads > 0
    drawn, canvases = view.evaluate(THUMBS_JS)
    assert canvases == (len(layers) + 1) * (heads + 1) and drawn == canvases
    assert arcs > 0
    expect(view.locator("svg.nbtune-attn-arcs line")).to_have_count(arcs)
    assert view.locator("svg.nbtune-attn-arcs text[data-side='data-from']").all_text_contents() == tokens
    assert view.locator(".nbtune-attn-strip .nbtune-attn-cell").all_text_contents() == tokens

    # agreement (Spearman per pair) and faithfulness (AOPC per method), as the kernel computed them
    pairs = _kernel_json(probe, "[(p.a, p.b, float(p.spearman)) for p in panel.agreement.pairs]")
    aopc = _kernel_json(probe, "{m: float(f.aopc) for m, f in panel.faithfulness.items()}")
    numbers = first.locator(".nbtune-explain-numbers").evaluate(NUMBERS_JS)
    assert len(pairs) == 6
    assert numbers["pairs"] == [[f"{a}|{b}", _fmt(s)] for a, b, s in pairs]
    assert numbers["faith"] == [[m, _fmt(aopc[m])] for m in METHODS]
    assert numbers["curves"] == 4 * len(METHODS)     # deletion, insertion and their random baselines
    print(f"[explain] words {len(kernel['shap']['words'])}, arcs {arcs}, thumbnails {canvases}, "
          f"AOPC {[_fmt(aopc[m]) for m in METHODS]}")
    _screenshot_from_top(page, first, artifacts / "explain_panel.png")
    assert page.get_by_text("Error displaying widget").count() == 0
    assert not _console_errors(page, nb05.console_start)


def test_hostile_text_and_labels_show_as_text_in_the_panel(nb05, page, artifacts):
    probe = nb05.probe
    root = page.locator(".nbtune-hostile-panel")
    root.scroll_into_view_if_needed()
    box = root.locator(".nbtune-explain-text textarea")
    box.fill(HOSTILE_TEXT)                        # typed in the browser: the text reaches the kernel as it is
    poll(lambda: probe.value("hostile_panel.text_box.value"), lambda v: v == HOSTILE_TEXT, timeout_s=60)
    root.locator("button.nbtune-explain-run, .nbtune-explain-run button").first.click()
    state, waited = poll(
        lambda: probe.value("(hostile_panel.progress_label.value, hostile_panel.explain_button.disabled, "
                            "hostile_panel.error)"),
        lambda v: v[2] is not None or (v[0].startswith("done:") and not v[1]), timeout_s=600, interval_s=2)
    assert state[2] is None, state[2]
    print(f"[explain] hostile explanation done in {waited:.0f}s")

    kernel = _kernel_json(probe, "{m: list(a.words.words) for m, a in hostile_panel.results.items()}")
    label = probe.value("hostile_panel.results['shap'].target.describe()")
    labels = probe.value("hostile_em.label_names")
    assert list(kernel) == METHODS and any(p in label for p in HOSTILE)
    heat_box = root.locator(".nbtune-explain-heatmaps")
    expect(heat_box.locator(".nbtune-heat")).to_have_count(4)
    expect(heat_box.locator(".nbtune-heat-target").first).to_have_text(f"→ {label}")
    heats = heat_box.evaluate(HEAT_JS)
    for h, m in zip(heats, METHODS):
        assert h["method"] == m and h["words"] == kernel[m] and h["target"] == f"→ {label}"
    assert "onmouseover" in kernel["shap"] and "<" in kernel["shap"] and "script" in kernel["shap"]

    # the text in the text box and the attention title; tokens in the arcs; the label in the HTML widgets
    assert box.input_value() == HOSTILE_TEXT
    view = root.locator(".nbtune-explain-attention .nbtune-attn")
    expect(view.locator(".nbtune-attn-title")).to_have_text(HOSTILE_TEXT)
    tokens = probe.value("hostile_panel.attention_view.tokens")
    assert view.locator("svg.nbtune-attn-arcs text[data-side='data-from']").all_text_contents() == tokens
    expect(root.locator(".nbtune-explain-progress")).to_have_text(f"done: {label}")
    expect(root.locator(".nbtune-explain-numbers")).to_contain_text(f"(target {label})")
    options = [o.replace("\xa0", " ") for o in root.locator("select option").all_text_contents()]
    assert set(labels) <= set(options), (labels, options)

    # hover the words that would carry a handler had an attribute been broken out of
    words = heat_box.locator(".nbtune-heat").first.locator(".nbtune-heat-word")
    for i in [i for i, w in enumerate(kernel["shap"]) if w in ("onmouseover", "onerror", '"')][:4]:
        words.nth(i).hover()
    for scope in (root, page.locator(".nbtune-explain-panel").first):
        found = scope.evaluate(SAFE_JS)
        assert found == {"xss": "undefined", "bad": [], "handlers": []}, found
    assert page.evaluate("typeof window.__xss") == "undefined"
    _screenshot_from_top(page, root, artifacts / "explain_panel_hostile.png")
    assert page.get_by_text("Error displaying widget").count() == 0
    assert not _console_errors(page, nb05.console_start)


def test_hostile_report_from_file_runs_nothing(nb05, page, artifacts):
    probe = nb05.probe
    path = Path(probe.value("str(hostile_path)"))
    assert path.is_file()
    probe_info = _kernel_json(probe, "{'label': hostile_report.probes[0].target.describe(), 'errors': "
                                     "hostile_report.probes[0].errors, 'words': {a.method: list(a.words.words) "
                                     "for a in hostile_report.probes[0].attributions}}")
    assert probe_info["errors"] == {} and list(probe_info["words"]) == METHODS
    report = page.context.new_page()
    lines = []
    report.on("console", lambda m: lines.append((m.type, m.text)))
    report.on("pageerror", lambda e: lines.append(("pageerror", str(e))))
    try:
        report.goto(path.as_uri())
        report.wait_for_load_state("load")
        # the model name and the text as text
        assert report.title() == f"Explanation review: {HOSTILE[1]}"
        expect(report.locator("h1")).to_have_text(f"Explanation review: {HOSTILE[1]}")
        expect(report.locator("section#probe-1 blockquote")).to_have_text(HOSTILE_TEXT)
        expect(report.locator("section#probe-1 > div > b").first).to_have_text(probe_info["label"])
        assert any(p in probe_info["label"] for p in HOSTILE)
        body = report.locator("body").inner_text()
        assert all(p in body for p in HOSTILE)
        # each method's heatmap row: one span per word, the words as text
        table = report.locator("section#probe-1 table").first
        for m, words in probe_info["words"].items():
            spans = table.locator(f"tr[data-method='{m}'] td:nth-child(3) span")
            assert spans.all_text_contents() == words, m
        for i in [i for i, w in enumerate(probe_info["words"]["shap"]) if w in ("onmouseover", '"')][:3]:
            table.locator("tr[data-method='shap'] td:nth-child(3) span").nth(i).hover()
        found = report.evaluate(SAFE_JS)
        assert found == {"xss": "undefined", "bad": [], "handlers": []}, found
        report.screenshot(path=str(artifacts / "explain_report.png"), full_page=True)
        # an <img> or script that slipped through would be refused by the CSP, and say so in the console
        assert not [line for line in lines if line[0] in ("error", "pageerror")], lines
    finally:
        report.close()
