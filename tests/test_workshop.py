"""The teaching workshop (notebooks/workshop/): every notebook runs headless with its solutions enabled and small
settings, and every checkpoint in it holds. The unit tests check the committed files: outputs stripped, solution
cells collapsed and guarded by SOLUTIONS, and the checkpoint helpers' messages."""
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

WORKSHOP = Path(__file__).resolve().parents[1] / "notebooks" / "workshop"
NOTEBOOKS = ("01_loss_curves.ipynb", "02_overfitting.ipynb", "03_exploding_gradients.ipynb",
             "04_shap_vs_attention.ipynb")
CHECK_CALL = re.compile(r"\bchecks\.(below|above|close_to|equal|contains)\(")


def _tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _load_checks():
    spec = importlib.util.spec_from_file_location("workshop_checks", WORKSHOP / "checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- unit: the committed files
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_workshop_notebook_is_stripped_with_hidden_guarded_solutions(name):
    nb = nbformat.read(WORKSHOP / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: outputs not stripped"
    (params,) = _tagged(nb, "parameters")
    assert re.search(r"^SOLUTIONS = False\b", params.source, re.M), "solutions must be hidden by default"
    assert re.search(r"^FULL_SIZE = False\b", params.source, re.M)
    solutions = [c for c in _tagged(nb, "solution") if c.cell_type == "code"]
    exercises, checkpoints = _tagged(nb, "exercise"), _tagged(nb, "checkpoint")
    assert len(solutions) >= 2 and len(exercises) == len(solutions) and len(checkpoints) == len(solutions)
    for cell in solutions:
        assert cell.metadata["jupyter"]["source_hidden"] is True
        assert cell.source.startswith("if SOLUTIONS:"), cell.source
    # an exercise is left for the learner: its cell holds a `...` placeholder or only a comment
    assert all("..." in c.source or c.source.lstrip().startswith("#") for c in exercises)
    assert all(CHECK_CALL.search(c.source) for c in checkpoints)


def test_checkpoint_helpers_say_what_to_do():
    checks = _load_checks()
    with pytest.raises(checks.CheckpointError, match=r"`gaps` is still `\.\.\.`: fill in the exercise cell above, "
                                                     r"or set SOLUTIONS = True"):
        checks.answered("gaps", ...)
    with pytest.raises(checks.CheckpointError,
                       match=r"your smoothed training loss should be below 1\.2 by now, but it is 1\.5; if not, "
                             r"train longer"):
        checks.below("smoothed training loss", 1.5, 1.2, hint="train longer")
    with pytest.raises(AssertionError, match=r"`loss` is nan: a NaN or inf means the run diverged"):
        checks.above("loss", float("nan"), 0.0)
    with pytest.raises(checks.CheckpointError, match=r"your best step is 10, but the run says 15"):
        checks.equal("best step", 10, 15)
    checks.close_to("first loss", 1.7, 1.79, 0.4)
    checks.below("loss", 0.5, 1.2)
    assert checks.answered("gaps", [0.1]) == [0.1]


# ---------------------------------------------------------------- integration: run them
def _execute(name: str, overrides: str, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run a workshop notebook with SOLUTIONS = True and smaller settings appended to its parameters cell (the
    papermill convention: injected values come after the defaults). The kernel's working directory is tmp_path (runs
    are written there); `import checks` finds the workshop folder through PYTHONPATH, as JupyterLab finds it
    through the notebook's own folder."""
    nb = nbformat.read(WORKSHOP / name, as_version=4)
    (params,) = _tagged(nb, "parameters")
    params.source += "\n# test overrides\nSOLUTIONS = True\nFULL_SIZE = False\n" + overrides
    monkeypatch.setenv("PYTHONPATH", str(WORKSHOP))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")   # no __pycache__ left in notebooks/workshop
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        nbformat.write(nb, tmp_path / name)   # the executed notebook, to read when a checkpoint fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    stderr = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.output_type == "stream" and o.name == "stderr")
    assert "Warning" not in stderr, stderr
    # every checkpoint assertion ran and passed: one "checkpoint passed" line per check call
    for cell in _tagged(nb, "checkpoint"):
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert text.count("checkpoint passed:") == len(CHECK_CALL.findall(cell.source)), (cell.source, text)
    return nb


def _text(nb) -> str:
    return "\n".join("".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in c.get("outputs", []))
                     for c in nb.cells if c.cell_type == "code")


@pytest.mark.integration
def test_workshop_loss_curves_runs_with_solutions(tmp_path, monkeypatch):
    nb = _execute("01_loss_curves.ipynb", "STEPS = 30\nEVAL_EVERY = 10\nTRAIN_SAMPLES = 384", tmp_path, monkeypatch)
    text = _text(nb)
    assert "30 steps, 6 classes; validation steps [10, 20, 30" in text
    assert "checkpoint passed: expected first loss is 1.792" in text


@pytest.mark.integration
def test_workshop_overfitting_runs_with_solutions(tmp_path, monkeypatch):
    nb = _execute("02_overfitting.ipynb", "STEPS = 45\nEVAL_EVERY = 5\nTRAIN_SAMPLES = 24", tmp_path, monkeypatch)
    assert "45 steps over 24 training rows" in _text(nb)


@pytest.mark.integration
def test_workshop_exploding_gradients_runs_with_solutions(tmp_path, monkeypatch):
    nb = _execute("03_exploding_gradients.ipynb", "EXPLODE_STEPS = 12\nSTEPS = 32\nTRAIN_SAMPLES = 192",
                  tmp_path, monkeypatch)
    text = _text(nb)
    paused = re.search(r"^paused at step (\d+)$", text, re.M)
    assert paused and 12 <= int(paused[1]) < 32, text
    # the fix is in the edit log: the LR slider's value and the clipping command, applied while paused (same step)
    at = paused[1]
    assert re.search(rf"^{at} lr 0\.01 -> 0\.0001$", text, re.M), text
    assert re.search(rf"^{at} max_grad_norm None -> 1\.0$", text, re.M), text
    assert re.search(rf"^fixed at step {at}; the run finished at step 32$", text, re.M), text


@pytest.mark.integration
def test_workshop_shap_vs_attention_runs_with_solutions(tmp_path, monkeypatch):
    nb = _execute("04_shap_vs_attention.ipynb", "STEPS = 40\nMAX_EVALS = 100", tmp_path, monkeypatch)
    text = _text(nb)
    assert "checkpoint passed: explained class is 'spam'" in text
    assert re.search(r"^SHAP: \[('[^']+', ){2}'[^']+'\] \| attention: \[", text, re.M), text
    assert re.search(r"^AOPC: SHAP 0\.\d+, attention -?0\.\d+, random order -?0\.\d+$", text, re.M), text
