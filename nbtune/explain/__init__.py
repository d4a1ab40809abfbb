"""Explainability on the model being trained: SHAP, LIME, integrated gradients and attention, attributed over
the same word units so they can be compared side by side; agreement and faithfulness between them; drift of
explanations across a run's checkpoints. shap, lime and captum are imported only when a method runs
(`pip install 'nbtune[explain]'`).

Example:
    >>> from nbtune.explain import ExplainModel, explain_shap, explain_ig, agreement
    >>> em = ExplainModel.from_run(run)                                   # doctest: +SKIP
    >>> attrs = [explain_shap(em, "my card was declined twice"), explain_ig(em, "my card was declined twice")]
    >>> agreement(attrs).pair("shap", "ig").spearman                      # doctest: +SKIP
"""
from nbtune.explain.attention import NOT_AN_EXPLANATION, AttentionInfo, attention_maps, explain_attention
from nbtune.explain.compare import agreement, compare, faithfulness
from nbtune.explain.drift import explanation_drift
from nbtune.explain.gradients import explain_grad_x_input, explain_ig
from nbtune.explain.lime_text import explain_lime
from nbtune.explain.model import ExplainModel
from nbtune.explain.shap_text import explain_shap
from nbtune.explain.types import Attribution, ExplainError, Target, Words, split_words

METHODS = {"shap": explain_shap, "lime": explain_lime, "ig": explain_ig, "grad_x_input": explain_grad_x_input,
           "attention": explain_attention}

__all__ = ["METHODS", "NOT_AN_EXPLANATION", "AttentionInfo", "Attribution", "ExplainError", "ExplainModel", "Target",
           "Words", "agreement", "attention_maps", "compare", "explain_attention", "explain_grad_x_input",
           "explain_ig", "explain_lime", "explain_shap", "explanation_drift", "faithfulness", "split_words"]
