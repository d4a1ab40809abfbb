"""Layer-wise learning rates: parameters grouped by module-name pattern (embeddings, attention, FFN, norm,
head), each group with its own peak LR, plus layer-wise LR decay (LLRD) for numbered layers.

The guide's domain layer: embeddings 1e-6, attention 5e-5. Groups keep their names in the engine's metrics,
so the panel draws the LR and gradient norm of each group, and a live LR edit keeps their ratios.

    >>> m = LayerLR(lr={"embeddings": 1e-6, "attention": 5e-5})
    >>> group_of("bert.encoder.layer.0.attention.output.LayerNorm.weight")
    'norm'
    >>> group_of("model.layers.2.mlp.experts.gate_up_proj")
    'ffn'
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nbtune.methods import register
from nbtune.methods.base import Method, MethodError, ParamGroup

# Checked in this order; the first match wins (a LayerNorm inside an attention block is "norm").
PRESETS: dict[str, str] = {
    "norm": r"(^|\.)(\w*layer_?norm\w*|ln_\w+|norm|\w+_norm)(\.|$)",
    "embeddings": r"(^|\.)(embeddings?|embed_tokens|wte|wpe)(\.|$)",
    "head": r"(^|\.)(classifier|score|lm_head|pooler|qa_outputs)(\.|$)",
    "attention": r"(^|\.)(attention|self_attn|attn|q_proj|k_proj|v_proj|o_proj|query|key|value|"
                 r"q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj)(\.|$)",
    "ffn": r"(^|\.)(mlp|intermediate|output|ffn|feed_forward|experts|shared_experts|gate_proj|up_proj|"
           r"down_proj|gate)(\.|$)",
}
LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|blocks|block)\.(\d+)\.")


def group_of(name: str, patterns: dict[str, str] | None = None) -> str:
    """The group a parameter name falls in (user patterns first, then the presets), or "other"."""
    for group, pattern in {**(patterns or {}), **PRESETS}.items():
        if re.search(pattern, name, flags=re.IGNORECASE):
            return group
    return "other"


@register
@dataclass
class LayerLR(Method):
    """Per-group peak LRs by module-name pattern, and optional layer-wise LR decay.

    Args:
        lr: group -> peak LR (groups not listed use train.learning_rate). Groups: embeddings, attention, ffn,
            norm, head, other, and any named in `patterns`.
        patterns: extra groups, name -> regex on parameter names, checked before the presets.
        layer_decay: LLRD factor in (0, 1]: a parameter in layer i of L gets LR x decay^(L-1-i); embeddings
            decay^L; the head and other unnumbered parameters keep their LR. Groups are then split per layer.
    """

    name: ClassVar[str] = "layer_lr"
    lr: dict[str, float] = field(default_factory=dict)
    patterns: dict[str, str] = field(default_factory=dict)
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        for group, pattern in self.patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise MethodError(f"layer_lr: pattern for group {group!r} is not a valid regex: {exc}") from None
        known = {*PRESETS, "other", *self.patterns}
        unknown = [g for g in self.lr if g not in known]
        if unknown:
            raise MethodError(f"layer_lr: lr given for unknown group(s) {unknown}; groups are {sorted(known)} "
                              "(add a regex under 'patterns' to define a new one)")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise MethodError(f"layer_lr: layer_decay must be in (0, 1], got {self.layer_decay}")

    def prepare(self, model: Any, cfg: Any) -> list[ParamGroup]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assigned = [(n, p, group_of(n, self.patterns)) for n, p in named]
        present = {g for _, _, g in assigned}
        empty = [g for g in [*self.patterns, *self.lr] if g not in present]
        if empty:
            sample = ", ".join(n for n, _ in named[:6])
            raise MethodError(f"layer_lr: group(s) {sorted(set(empty))} match no trainable parameter of this model "
                              f"(parameter names look like: {sample}, ...)")
        depth = max((int(m.group(1)) for n, _ in named if (m := LAYER_INDEX.search(n))), default=-1) + 1
        groups: dict[str, ParamGroup] = {}
        base = float(cfg.train.learning_rate)
        for n, p, g in assigned:
            lr, key = float(self.lr.get(g, base)), g
            if self.layer_decay is not None:
                m = LAYER_INDEX.search(n)
                if m:
                    i = int(m.group(1))
                    lr *= self.layer_decay ** (depth - 1 - i)
                    key = f"{g}.{i}"
                elif g == "embeddings":
                    lr *= self.layer_decay ** depth
            groups.setdefault(key, ParamGroup(key, [], lr)).params.append(p)
        return list(groups.values())
