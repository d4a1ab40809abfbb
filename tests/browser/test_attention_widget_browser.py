"""Browser tier: AttentionView and TokenHeatmap in a real JupyterLab 4 + headless chromium.

A small notebook trains the trigger classifier (tests/support/trigger.py) in the kernel, and shows an AttentionView
of a text holding `<img onerror>` and `<script>` payloads, and a TokenHeatmap of occlusion scores whose words are
those payloads whole. The test checks the L x H thumbnail grid, that a click on layer 1 head 0 reaches the
kernel's `view.layer`/`view.head` (and a kernel-side change reaches the page), that the arcs drawn equal the
kernel's weights above the drawing threshold, that hovering a token isolates its lines, that the payloads show
as text and never ran, and that the console stays clean.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all, poll

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

import nbformat  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from tests.browser.test_train_panel_browser import BENIGN_CONSOLE  # noqa: E402

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WAIT_MS = 300_000      # kernel start, imports and ~10-30 s of trigger-model training on a busy 2-core machine
HOSTILE = ["<img src=x onerror=window.__xss=1>", "<script>window.__xss=2</script>"]
ARC_MIN = 0.005        # attention.js draws no line below this weight

SETUP = """
import sys, tempfile
sys.path.insert(0, {repo!r})
from nbtune.explain.attention import attention_maps
from nbtune.explain.model import ExplainModel
from nbtune.explain.types import Attribution, Words
from nbtune.ui.widgets.attention import AttentionView
from nbtune.ui.widgets.heatmap import TokenHeatmap
from tests.support.trigger import trigger_model

model, tokenizer, _, _ = trigger_model(tempfile.mkdtemp(prefix="nbtune-trigger-"))
em = ExplainModel(model, tokenizer, "classification", ["alarm", "calm"])
WORDS = ["the", "lamp", {hostile0!r}, "zebra", {hostile1!r}, "is", "on"]
TEXT = " ".join(WORDS)
view = AttentionView.from_info(attention_maps(em, TEXT), level="word")
view.add_class("nbtune-attn-view")
view
"""
HEATMAP = """
# The payloads as whole words; scores by occlusion (drop one word: how much does p(alarm) fall?).
spans, at = [], 0
for w in WORDS:
    at = TEXT.index(w, at); spans.append((at, at + len(w))); at += len(w)
words = Words(TEXT, WORDS, spans)
target = em.target(TEXT, "alarm")
full = em.score_texts([TEXT], target)[0]
masked = [words.join([j != i for j in range(len(WORDS))], em.mask_word) for i in range(len(WORDS))]
dropped = em.score_texts(masked, target)
heat = TokenHeatmap.from_attribution(Attribution("occlusion", words, full - dropped, target, float(full)))
heat.add_class("nbtune-heat-view")
heat
"""


def _write_notebook(path: Path) -> None:
    cells = [SETUP.format(repo=str(REPO), hostile0=HOSTILE[0], hostile1=HOSTILE[1]), HEATMAP]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.strip()) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def _arcs_drawn_in_kernel(probe) -> int:
    return probe.value(f"int((view.selected() >= {ARC_MIN}).sum())")


def test_attention_view_and_heatmap_in_jupyterlab(lab, page, artifacts):
    name = f"attention_browser_{int(time.time() * 1000)}.ipynb"       # unique => fresh kernel session
    _write_notebook(lab.root / name)
    console_start = len(page.console_lines)
    t0 = time.monotonic()
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        root = page.locator(".nbtune-attn-view")
        expect(root.locator(".nbtune-attn-grid")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator(".nbtune-heat-view .nbtune-heat-word").first).to_be_visible(timeout=WAIT_MS)
        print(f"[attention] widgets up in {time.monotonic() - t0:.1f}s")
        assert page.get_by_text("Error displaying widget").count() == 0

        # (a) the grid: one thumbnail per layer x head (plus the dashed mean row and column), each a drawn canvas
        n_layers, n_heads = probe.value("(len(view.layers), view.n_heads)")
        heads = root.locator(".nbtune-attn-thumb:not(.nbtune-attn-mean)")
        assert heads.count() == n_layers * n_heads == 4
        assert root.locator(".nbtune-attn-thumb canvas").count() == (n_layers + 1) * (n_heads + 1)
        expect(root.locator(".nbtune-attn-selected")).to_have_attribute("data-layer", "-1")

        # click layer 1 head 0 -> the kernel's selection follows
        assert probe.value("(view.layer, view.head)") == (-1, -1)
        root.locator(".nbtune-attn-thumb[data-layer='1'][data-head='0']").click()
        poll(lambda: probe.value("(view.layer, view.head)"), lambda v: v == (1, 0), timeout_s=30)
        selected = root.locator(".nbtune-attn-selected")
        expect(selected).to_have_count(1)
        assert (selected.get_attribute("data-layer"), selected.get_attribute("data-head")) == ("1", "0")

        # (b) arcs: as many lines as the kernel's selected map has weights above the threshold
        lines = root.locator("svg.nbtune-attn-arcs line")
        expected = _arcs_drawn_in_kernel(probe)
        assert expected > 0
        expect(lines).to_have_count(expected)
        tokens = probe.value("view.tokens")
        assert root.locator("svg.nbtune-attn-arcs text[data-side='data-from']").all_text_contents() == tokens
        # hovering the attending token "zebra" keeps its lines only
        zebra = tokens.index("zebra")
        root.locator(f"svg.nbtune-attn-arcs text[data-side='data-from'][data-index='{zebra}']").hover()
        hot = root.locator("svg.nbtune-attn-arcs line.nbtune-attn-hot")
        expect(hot).to_have_count(probe.value(f"int((view.selected()[{zebra}] >= {ARC_MIN}).sum())"))
        assert root.locator("svg.nbtune-attn-arcs.nbtune-attn-focus").count() == 1
        root.locator(".nbtune-attn-title").hover()
        expect(root.locator("svg.nbtune-attn-focus")).to_have_count(0)
        # rollout strip and caption
        assert root.locator(".nbtune-attn-strip .nbtune-attn-cell").all_text_contents() == tokens
        expect(root.locator(".nbtune-attn-caption")).to_have_text(
            "Attention: where the model looks — not an explanation")

        # a kernel-side selection reaches the page
        probe.value("setattr(view, 'head', 1)")
        expect(root.locator(".nbtune-attn-selected")).to_have_attribute("data-head", "1", timeout=30_000)
        expect(lines).to_have_count(_arcs_drawn_in_kernel(probe))

        # the payloads are text: in the title and the heatmap's words, never elements; none of them ran
        text = probe.value("TEXT")
        expect(root.locator(".nbtune-attn-title")).to_have_text(text)
        heat = page.locator(".nbtune-heat-view")
        words = heat.locator(".nbtune-heat-word")
        assert words.all_text_contents() == probe.value("heat.words")
        assert HOSTILE[0] in words.all_text_contents() and HOSTILE[1] in words.all_text_contents()
        scores = [float(words.nth(i).get_attribute("data-score")) for i in range(words.count())]
        assert scores == pytest.approx(probe.value("heat.scores"), abs=1e-9)
        assert words.nth(3).get_attribute("title").startswith("zebra: +")       # the trigger pushes "alarm" up
        expect(heat.locator(".nbtune-heat-method")).to_have_text("occlusion")
        for widget in (root, heat):
            assert widget.locator("img").count() == 0 and widget.locator("script").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"

        root.scroll_into_view_if_needed()
        root.screenshot(path=str(artifacts / "attention_view.png"))
        heat.screenshot(path=str(artifacts / "token_heatmap.png"))
        errors = [(t, msg) for t, msg, url in page.console_lines[console_start:]
                  if t in ("error", "pageerror") and not any(p.search(msg) or p.search(url) for p in BENIGN_CONSOLE)]
        assert not errors, errors
        assert not [msg for _, msg, _ in page.console_lines[console_start:] if re.search(r"xss", msg, re.I)]
    finally:
        end_session(lab, probe, name)
