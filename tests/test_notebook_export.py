"""Notebook 08 (export and deploy) runs headless with nbclient, with small parameters, and its figures are the
export's own: the fp32 parity in report.json, the Triton repository it wrote, the texts it cleaned."""
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_export_deploy.ipynb"
SMALL = ('MODEL = "minilm"\nDATASET = "intents-en"\nTRAIN_SAMPLES = 200\nEVAL_SAMPLES = 64\nSTEPS = 20\n'
         'BATCH_SIZE = 16\nMAX_LENGTH = 64\nLORA_RANK = 8\nLATENCY_CALLS = 12')


def _outputs_text(cell) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))


def test_notebook_is_saved_clean_with_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    (params,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    names = {line.split("=")[0].strip() for line in params.source.splitlines() if "=" in line}
    assert names == {line.split("=")[0].strip() for line in SMALL.splitlines()}


@pytest.mark.integration
def test_export_deploy_notebook_executes(tmp_path):
    from nbtune.export.triton import validate_repository
    from nbtune.export.types import ExportReport

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = SMALL
    # One intra-op thread in the kernel, as tests/conftest.py sets for the test process: on a busy 2-core machine
    # spinning OpenMP threads make eager PyTorch ~10x slower. The notebook's latency figures are not asserted.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute(
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join(_outputs_text(c) for c in code)

    (run_dir,) = (tmp_path / "runs").iterdir()
    export = run_dir / "export"
    report = ExportReport.from_dict(json.loads((export / "report.json").read_text()))
    fp32, int8 = report.parity_of("onnx-fp32"), report.parity_of("onnx-int8")
    assert fp32.rows == 64 and fp32.max_abs_logit_diff <= 1e-4 and fp32.label_agreement == 1.0
    assert int8 is not None and int8.rows == 64
    # the notebook printed the report's own figures (int8 may miss its threshold on a 20-step model: either way)
    assert f"max |logit diff| {fp32.max_abs_logit_diff:.1e} (limit 1e-04), same label on 100.0%" in text
    assert ("verdict: every threshold met" in text) == report.passed
    assert [t.backend for t in report.latency] == ["pytorch", "onnx-fp32", "onnx-int8"]

    # Triton: both variants validate; the CPU model serves int8 when parity passed, fp32 otherwise
    models = validate_repository(export / "triton")
    assert [(m.name, m.config.max_batch_size, m.versions) for m in models] == [("minilm", 32, [1]),
                                                                              ("minilm_tensorrt", 32, [1])]
    served = export / ("onnx-int8" if report.passed else "onnx") / "model.onnx"
    assert models[0].model_file.read_bytes() == served.read_bytes()
    assert "config.pbtxt" in text and 'backend: "onnxruntime"' in text and "label_filename" in text

    # the deliberate failure was caught and shown, with its report written
    assert "ParityError: export parity failed: onnx-fp32 max |logit diff|" in text
    strict = json.loads((run_dir / "export-strict" / "report.json").read_text())
    assert strict["passed"] is False and strict["failures"][0].startswith("onnx-fp32 max |logit diff|")

    # raw text went through the saved cleaning steps before the int8 graph; the request holds its token ids
    assert "'Turn off the kitchen lights, please'" in text and "same label as the merged PyTorch model" in text
    request = json.loads((export / "request.json").read_text())
    assert [i["name"] for i in request["inputs"]] == ["input_ids", "attention_mask"]
    assert request["inputs"][0]["shape"][0] == 2
    # the panel cell displayed a widget
    panel = next(c for c in code if "ExportPanel(report)" in c.source)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in panel.outputs)
