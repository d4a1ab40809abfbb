"""Export with proof: merge adapters, ONNX (+ int8), a parity and latency report against PyTorch, and a Triton
model repository. onnx/onnxruntime are imported only when an export runs (`pip install 'nbtune[export]'`);
names here are imported lazily.

Example:
    >>> from nbtune.export import export_run
    >>> report = export_run(run, quantize="int8")            # doctest: +SKIP  (or run.export(...))
    >>> report.speedup("onnx-int8", batch=1)                 # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_run": "pipeline", "check": "pipeline",
    "ExportError": "types", "ParityError": "types", "ExportReport": "types", "Parity": "types", "Latency": "types",
    "export_onnx": "onnx", "quantize_int8": "onnx", "optimize_graph": "onnx", "OnnxRunner": "onnx",
    "OnnxExport": "onnx", "merged_model": "merge", "save_merged": "merge", "load_merged": "merge",
    "preprocess": "merge", "model_card": "card", "write_triton_repository": "triton",
    "validate_repository": "triton", "TritonConfigError": "triton",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbtune.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nbtune.export.{module}"), name)
