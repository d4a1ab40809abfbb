"""Random-init tiny models wrapped for the explainers: "classification" and "token-classification" on
tiny-bert (3 labels), "causal-lm" on tiny-llama."""
from __future__ import annotations

import torch

from nbtune.explain.model import ExplainModel


def tiny_explain_model(kind: str, seed: int = 0) -> ExplainModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers import AutoTokenizer

    from nbtune.assets import resolve_model

    resolved = resolve_model("tiny-llama" if kind == "causal-lm" else "tiny-bert")
    torch.manual_seed(seed)
    if kind == "causal-lm":
        model = AutoModelForCausalLM.from_config(resolved.config)
        labels = None
    else:
        resolved.config.num_labels = 3
        auto = AutoModelForTokenClassification if kind == "token-classification" else AutoModelForSequenceClassification
        model = auto.from_config(resolved.config)
        labels = ["O", "B-LOC", "I-LOC"]
    return ExplainModel(model.eval(), AutoTokenizer.from_pretrained(resolved.tokenizer_path), kind, labels)
