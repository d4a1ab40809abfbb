"""The engine does not know the UI exists: importing it loads no widget or plotting library and touches no
CUDA; `import nbtune` alone is cheap (its public names are lazy). Each check runs in a fresh interpreter."""
import json
import subprocess
import sys

UI_MODULES = ("ipywidgets", "plotly", "IPython", "anywidget")


def _python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_imports_no_ui_and_no_cuda():
    found = _python(f"""
import json, sys
import nbtune, nbtune.engine, nbtune.config, nbtune.assets, nbtune.history, nbtune.envcheck, nbtune.methods, nbtune.tune
import nbtune.explain, nbtune.export, nbtune.export.pipeline, nbtune.export.onnx, nbtune.export.parity
import nbtune.export.merge, nbtune.export.triton, nbtune.export.latency, nbtune.engine.launch, nbtune.engine.follow
cfg = nbtune.RunConfig()
import torch
print(json.dumps({{"ui": sorted(m for m in sys.modules if m.split(".")[0] in {UI_MODULES!r}),
                  "cuda_initialized": torch.cuda.is_initialized(), "config": type(cfg).__name__}}))
""")
    assert found["config"] == "RunConfig"
    assert found["ui"] == []
    assert found["cuda_initialized"] is False


def test_import_nbtune_alone_does_not_import_torch():
    found = _python("""
import json, sys
import nbtune
before = "torch" in sys.modules
cls = nbtune.RunConfig  # a lazy name resolves on first use; the config module needs no torch either
print(json.dumps({"torch": before, "name": cls.__name__, "after_config": "torch" in sys.modules,
                  "ui": sorted(m for m in sys.modules if m.split(".")[0] in ("ipywidgets", "plotly", "IPython"))}))
""")
    assert found["torch"] is False
    assert found["name"] == "RunConfig"
    assert found["after_config"] is False
    assert found["ui"] == []


def test_unknown_public_name_is_an_attribute_error():
    import nbtune
    try:
        nbtune.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("nbtune.NoSuchThing should raise AttributeError")
