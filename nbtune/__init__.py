"""nbtune: fine-tune transformer models interactively in Jupyter, or headless from the CLI.

Names are imported lazily, so `import nbtune` is cheap and touches neither CUDA nor any widget library.

Example:
    >>> import nbtune as nt
    >>> cfg = nt.RunConfig(model="minilm", data="intents-en")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RunConfig": "nbtune.config", "ModelConfig": "nbtune.config", "DataConfig": "nbtune.config",
    "TrainConfig": "nbtune.config", "ConfigError": "nbtune.config",
    "Run": "nbtune.engine.run", "Control": "nbtune.engine.control",
    "assets": "nbtune.assets", "data": "nbtune.data",
    "TrainPanel": "nbtune.ui.panels.train", "DataPanel": "nbtune.ui.panels.data",
    "AnnotatePanel": "nbtune.ui.panels.annotate", "TunePanel": "nbtune.ui.panels.tune",
    "TuneStudy": "nbtune.tune.study", "tune": "nbtune.tune", "ExplainPanel": "nbtune.ui.panels.explain",
    "explain": "nbtune.explain", "export": "nbtune.export", "ExportPanel": "nbtune.ui.panels.export",
    "launch": "nbtune.engine.launch", "JsonlFollower": "nbtune.engine.follow",
    "Dashboard": "nbtune.ui.panels.dashboard",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbtune' has no attribute {name!r}")
    mod = importlib.import_module(module)
    return mod if module == f"nbtune.{name}" else getattr(mod, name)
