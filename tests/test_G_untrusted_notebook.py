"""Reliability case G3: a notebook with the data, train and explain panels is executed (nbclient, widget state
stored), saved, and reopened with nbformat, where it is untrusted (no signature). Label names carry `</script>`
payloads (tests/support/payloads.py).

Pass (catalogue): every nbtune output carries a text/plain fallback, and the train panel's fallback (its static
snapshot) gives the final step, loss and checkpoint path; nbconvert's HTML export with the widget state holds
exactly the expected number of <script> elements (+-0): a `</script>` that escaped would open one more.
Scaled down: tiny-bert on 32 generated rows, 4 steps (the catalogue's run R is 300 steps).
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

import nbformat
import pytest

from tests.support.payloads import PAYLOADS

pytestmark = pytest.mark.integration

HOSTILE_LABELS = [PAYLOADS[2].text, PAYLOADS[3].text, PAYLOADS[0].text]   # two `</script>` breakouts, one <img>
SETUP = f"""
import datasets, nbtune as nt
from nbtune.explain import ExplainModel
LABELS = {HOSTILE_LABELS!r}
features = datasets.Features({{'text': datasets.Value('string'), 'label': datasets.ClassLabel(names=LABELS)}})
rows = {{'text': [f'message {{i}} about {{LABELS[i % 3]}}' for i in range(32)], 'label': [i % 3 for i in range(32)]}}
ds = datasets.DatasetDict({{'train': datasets.Dataset.from_dict(rows, features=features),
                           'validation': datasets.Dataset.from_dict(rows, features=features).select(range(8))}})
"""
CELLS = [
    SETUP,
    "nt.DataPanel(ds)",
    """cfg = nt.RunConfig().with_overrides(['model.name=tiny-bert', 'train.batch_size=8', 'train.max_steps=4',
    'train.progress_bar=false', 'train.tensorboard=false', 'output_dir={out}', 'run_name=g3'])
run = nt.Run(cfg, ds)
panel = nt.TrainPanel(run)
display(panel)
run.start(background=True).wait()
panel.close()""",
    """explain = nt.ExplainPanel(ExplainModel.from_run(run), texts=['message 1 about the lights'],
                           methods=('attention',))
explain.explain(background=False)
explain""",
]


class ScriptCount(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.types: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.types.append(dict(attrs).get("type") or "text/javascript")


def _scripts(page: str) -> list[str]:
    p = ScriptCount()
    p.feed(page)
    return p.types


def _execute(tmp_path, labels: list[str], name: str):
    from nbclient import NotebookClient
    cells = [c.replace("{out}", str(tmp_path / name)) for c in CELLS]
    cells[0] = cells[0].replace(repr(HOSTILE_LABELS), repr(labels))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("g3")
    hostile = _execute(tmp, HOSTILE_LABELS, "hostile")
    benign = _execute(tmp, ["alpha", "beta", "gamma"], "benign")
    return hostile, benign


def test_G3_reopened_untrusted_every_nbtune_output_has_a_text_plain_fallback(saved):
    hostile, _ = saved
    nb = nbformat.read(hostile, as_version=4)
    nbformat.validate(nb)
    from nbformat.sign import NotebookNotary
    assert not NotebookNotary(db_file=":memory:", secret=b"g3").check_signature(nb)   # reopened: untrusted
    outputs = {i: c.outputs for i, c in enumerate(nb.cells)}
    assert not [o for outs in outputs.values() for o in outs if o.output_type == "error"]
    nbtune = [(i, o) for i in (1, 2, 3) for o in outputs[i] if o.output_type in ("display_data", "execute_result")]
    kinds = [(i, sorted(o.data)) for i, o in nbtune]
    print(f"[G3] nbtune outputs: {kinds}")
    assert len(nbtune) == 4 and all("text/plain" in o.data for _, o in nbtune), kinds
    # the train panel: its widget view, and the static snapshot the run's end left (PNG + one text line)
    (snapshot,) = [o for i, o in nbtune if i == 2 and "image/png" in o.data]
    text = snapshot.data["text/plain"]
    step = re.search(r"step (\d+) of (\d+)", text)
    loss = re.search(r"loss ([0-9.e+-]+)", text)
    ckpt = re.search(r"checkpoint (\S+)", text)
    print(f"[G3] train panel text/plain: {text!r}")
    assert step and step.group(1) == step.group(2) == "4", text
    assert loss and float(loss.group(1)) > 0, text
    assert ckpt and ckpt.group(1).endswith("step-000004") and "g3" in ckpt.group(1), text
    # the other panels' fallback is the widget's repr (ipywidgets), e.g. "VBox(children=(HTML(value=...": no
    # step or label text; the data and explain panels have no run state to summarise
    views = [o.data["text/plain"] for i, o in nbtune if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(views) == 3 and all(v.startswith("VBox(") for v in views), views


def test_G3_exported_html_with_widget_state_has_the_expected_script_count(saved):
    from nbconvert import HTMLExporter
    hostile, benign = saved
    pages = {}
    for name, path in (("hostile", hostile), ("benign", benign)):
        nb = nbformat.read(path, as_version=4)
        assert "application/vnd.jupyter.widget-state+json" in nb.metadata.get("widgets", {})
        pages[name], _ = HTMLExporter().from_notebook_node(nb)
    views = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                for c in nbformat.read(hostile, as_version=4).cells for o in c.get("outputs", []))
    hostile_scripts, benign_scripts = _scripts(pages["hostile"]), _scripts(pages["benign"])
    template = len(benign_scripts) - 2 * views - 1       # nbconvert's own (require.js, MathJax, widget manager)
    print(f"[G3] scripts: hostile {len(hostile_scripts)}, benign {len(benign_scripts)} "
          f"({views} widget views x 2 + 1 widget state + {template} template); "
          f"page {len(pages['hostile']) / 1e6:.1f} MB")
    assert views == 3 and template >= 0
    assert hostile_scripts == benign_scripts                      # +-0 with a `</script>` label
    assert hostile_scripts.count("application/vnd.jupyter.widget-state+json") == 1
    assert hostile_scripts.count("application/vnd.jupyter.widget-view+json") == views
    assert PAYLOADS[2].text not in pages["hostile"]                # the label is there only escaped
    assert "\\u003c/script>" in pages["hostile"] or "<\\/script>" in pages["hostile"]
