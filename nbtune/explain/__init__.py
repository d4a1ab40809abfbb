"""Explainability on the model being trained: SHAP, LIME, integrated gradients and attention, attributed over
the same word units so they can be compared side by side; agreement and faithfulness between them; drift of
explanations across a run's checkpoints; a standalone review report. shap, lime and captum are imported only
when a method runs (`pip install 'nbtune[explain]'`); names here are imported lazily (torch only when used).

Example:
    >>> from nbtune.explain import ExplainModel, explain_shap, explain_ig, agreement
    >>> em = ExplainModel.from_run(run)                                   # doctest: +SKIP
    >>> attrs = [explain_shap(em, "my card was declined twice"), explain_ig(em, "my card was declined twice")]
    >>> agreement(attrs).pair("shap", "ig").spearman                      # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "NOT_AN_EXPLANATION": "attention", "AttentionInfo": "attention", "attention_maps": "attention",
    "explain_attention": "attention", "agreement": "compare", "compare": "compare", "faithfulness": "compare",
    "explanation_drift": "drift", "explain_grad_x_input": "gradients", "explain_ig": "gradients",
    "explain_lime": "lime_text", "ExplainModel": "model", "explain_shap": "shap_text", "Attribution": "types",
    "ExplainError": "types", "Target": "types", "Words": "types", "split_words": "types",
    "build_report": "report", "Budget": "report", "pick_examples": "examples",
}
METHOD_NAMES = ("shap", "lime", "ig", "grad_x_input", "attention")
__all__ = ["METHODS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # method name -> explain function
        return {"shap": __getattr__("explain_shap"), "lime": __getattr__("explain_lime"),
                "ig": __getattr__("explain_ig"), "grad_x_input": __getattr__("explain_grad_x_input"),
                "attention": __getattr__("explain_attention")}
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbtune.explain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nbtune.explain.{module}"), name)
