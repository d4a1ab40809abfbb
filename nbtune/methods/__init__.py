"""Fine-tuning methods from the guide, composable through ``RunConfig.methods`` (see nbtune/methods/base.py).

    >>> " ".join(sorted(METHODS))
    'adversarial curriculum distill domain_mix heads layer_lr lora multitask prompt_tuning unfreeze'
"""
from __future__ import annotations

import difflib
from typing import Any

from nbtune.methods.base import LossContext, Method, MethodError, ParamGroup, PlanState

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` in ``RunConfig.methods``."""
    METHODS[cls.name] = cls
    return cls


def build_methods(specs: list[Any]) -> list[Method]:
    """``[{"name": "layer_lr", ...options}]`` -> method objects; unknown names and options are refused."""
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise MethodError(f"methods[{i}]: expected {{'name': ..., options}}, got {spec!r}")
        options = {k: v for k, v in spec.items() if k != "name"}
        cls = METHODS.get(spec["name"])
        if cls is None:
            close = difflib.get_close_matches(str(spec["name"]), list(METHODS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise MethodError(f"methods[{i}]: unknown method {spec['name']!r}.{hint} Known: {', '.join(METHODS)}")
        try:
            out.append(cls(**options))
        except TypeError as exc:
            raise MethodError(f"methods[{i}] ({spec['name']}): {exc}") from None
    return out


# The method modules register themselves on import.
from nbtune.methods import (adversarial, curriculum, distill, domain_mix, heads, layer_lr, lora,  # noqa: E402,F401
                            multitask, prompt_tuning, unfreeze)

__all__ = ["METHODS", "LossContext", "Method", "MethodError", "ParamGroup", "PlanState", "build_methods", "register"]
