"""Data workbench: loading with clear errors, inspection, cleaning, balancing, augmentation, annotation,
curriculum scores. Names are imported lazily, so `import nbtune.data` stays cheap.

`load`, `inspect`, `clean` and `augment` are both modules and the functions users call: the modules are made
callable, so `nt.data.load("tickets.csv", text="body")` works whichever was imported first.

    >>> import nbtune as nt
    >>> ds = nt.data.load("sms-spam")                      # doctest: +SKIP
    >>> report = nt.data.inspect(ds)                       # doctest: +SKIP
    >>> cleaned = nt.data.clean(ds, strip_html=True, normalize="nfkc")   # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_CALLABLE = {"load": "load", "inspect": "inspect", "clean": "clean", "augment": "augment"}
_LAZY = {
    "DataLoadError": "load", "LoadReport": "load",
    "DataReport": "inspect", "FLAG_NAMES": "inspect", "label_distribution": "inspect", "token_lengths": "inspect",
    "duplicates": "inspect", "leakage": "inspect", "text_flags": "inspect", "script_mix": "inspect",
    "supervision_view": "inspect",
    "apply_steps": "clean", "CleanResult": "clean",
    "class_weights": "balance", "oversample": "balance", "undersample": "balance", "BalanceResult": "balance",
    "eda": "augment", "back_translate": "augment", "AugmentResult": "augment",
    "difficulty": "curriculum", "curriculum_order": "curriculum",
    "LabelStore": "annotate", "agreement": "annotate", "likely_mislabelled": "annotate",
}
__all__ = [*_CALLABLE, *_LAZY]


class _CallableModule(types.ModuleType):
    """A module that, called, calls its function of the same name (nbtune.data.load(...) -> load.load(...))."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Called at the end of load.py, inspect.py, clean.py and augment.py."""
    sys.modules[module_name].__class__ = _CallableModule


def __getattr__(name: str) -> Any:
    if name in _CALLABLE:
        return importlib.import_module(f"nbtune.data.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbtune.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nbtune.data.{module}"), name)
