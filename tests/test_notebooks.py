"""The notebooks run headless with nbclient (a real kernel, no browser), with small parameters."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _with_parameters(nb, source: str):
    """Replace the cell tagged `parameters` (the papermill convention) with smaller values."""
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = source
    return nb


@pytest.mark.integration
def test_quickstart_notebook_executes(tmp_path):
    nb = _with_parameters(nbformat.read(NOTEBOOKS / "01_quickstart.ipynb", as_version=4), "STEPS = 20\nEVAL_EVERY = 10")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    assert "'accuracy'" in last and "'macro_f1'" in last
    # the run resumed into the same run directory and finished all 20 steps
    (run_dir,) = (tmp_path / "runs").iterdir()
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("end") == 2 and "edit" in kinds
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert max(steps) == 20
    # The static snapshot is an update_display from the pump thread, parented to the panel's cell; nbclient
    # keeps only messages of the cell it is executing, so the snapshot is checked in-process
    # (tests/test_ui_train_panel.py) and in the browser tier, not here.


@pytest.mark.integration
def test_data_workbench_notebook_executes(tmp_path):
    nb = _with_parameters(nbformat.read(NOTEBOOKS / "02_data_workbench.ipynb", as_version=4),
                          f'DATASET = "sms-spam"\nMODEL = "minilm"\nMAX_LENGTH = 64\nLABEL_DIR = "{tmp_path / "labels"}"')
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = {i: "".join(o.get("data", {}).get("text/plain", "") for o in c.get("outputs", []))
            for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    assert "['strip_html', 'normalize', 'whitespace', 'dedupe']" in text.values()   # the spec for data.cleaning
    weights = next(t for t in text.values() if t.startswith("{'ham'"))
    assert "'spam'" in weights
    # nobody pressed a key in a headless run: the reference store holds the 10 labels, "me" none yet
    reference = (tmp_path / "labels" / "reference.jsonl").read_text().splitlines()
    assert len(reference) == 10


@pytest.mark.integration
def test_layered_finetuning_notebook_executes(tmp_path):
    nb = _with_parameters(nbformat.read(NOTEBOOKS / "03_layered_finetuning.ipynb", as_version=4),
                          'MODEL = "minilm"\nDATASET = "trec"\nSTEPS = 24\nTRAIN_SAMPLES = 192\nEVAL_SAMPLES = 48\n'
                          'FULL_SIZE = False')
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    table = nb.cells[-1].outputs[-1]["data"]["text/plain"]
    for setup in ("baseline", "layer_lr", "unfreeze", "curriculum", "mlp head", "adversarial (fgm)", "all layers"):
        assert setup in table
    unfreeze = next("".join(o.get("data", {}).get("text/plain", "") for o in c.outputs) for c in nb.cells
                    if c.cell_type == "code" and c.source.startswith("UNFREEZE"))
    assert "(0, '1/" in unfreeze and "blocks: down to head" in unfreeze   # the schedule's edits, from step 0
    adversarial = next("".join(o.get("data", {}).get("text/plain", "") for o in c.outputs) for c in nb.cells
                       if c.cell_type == "code" and c.source.startswith("ADVERSARIAL"))
    assert "'loss/adversarial'" in adversarial and "'loss/task'" in adversarial
    assert len(list((tmp_path / "runs").iterdir())) == 7                # one run directory per row


@pytest.mark.integration
def test_hyperparameter_search_notebook_executes(tmp_path):
    nb = _with_parameters(nbformat.read(NOTEBOOKS / "04_hyperparameter_search.ipynb", as_version=4),
                          'MODEL = "minilm"\nDATASET = "intents-en"\nTRIALS = 3\nSTEPS = 8\nEVAL_EVERY = 4\n'
                          'TRAIN_SAMPLES = 256\nEVAL_SAMPLES = 64\nLR_FIND_STEPS = 30\nFULL_SIZE = False')
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join("".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in c.get("outputs", []))
                     for c in nb.cells if c.cell_type == "code")
    assert "suggested starting point" in text and "learning rate searched in" in text
    assert "['train.batch_size', 'train.learning_rate', 'dropout']" in text or "'dropout'" in text
    assert "best trial #" in text
    # the study is in SQLite under the run directory, with the three trials
    (db,) = (tmp_path / "runs").glob("tune-*/study.db")
    import sqlite3
    with sqlite3.connect(db) as con:
        states = [s for (s,) in con.execute("SELECT state FROM trials")]
    assert len(states) == 3 and set(states) <= {"COMPLETE", "PRUNED"}


@pytest.mark.integration
def test_explainability_review_notebook_executes(tmp_path):
    nb = _with_parameters(nbformat.read(NOTEBOOKS / "05_explainability_review.ipynb", as_version=4),
                          'MODEL = "minilm"\nINTENT_STEPS = 12\nSENTIMENT_STEPS = 6\nTRAIN_SAMPLES = 256\n'
                          'EVAL_SAMPLES = 48\nSAVE_EVERY = 6\nMAX_EVALS = 40\nLIME_SAMPLES = 60\nIG_STEPS = 8\n'
                          'PROBES = 2\nFULL_SIZE = False')
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join("".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in c.get("outputs", []))
                     for c in nb.cells if c.cell_type == "code")
    for method in ("'shap'", "'lime'", "'ig'", "'attention'"):
        assert method in text
    assert "gained" in text and "AOPC" in text and "report:" in text
    report = (tmp_path / "explain-review.html").read_text()
    assert "<script" not in report.lower() and "2 probes" in text
