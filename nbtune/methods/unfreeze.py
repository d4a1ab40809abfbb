"""Progressive unfreezing: train the top of the network first, then open it block by block downwards.

Blocks, top-down: the head (and every parameter outside the numbered layers and the embeddings), the last
layer, ..., the first layer, the embeddings. ``schedule="progressive"`` opens one more block every
`every_n_steps` optimizer steps (or every `every_n_epochs` epochs); ``"freeze_then_unfreeze"`` (fastai) trains
only the first `start_with` blocks for one interval, then everything. The trainable set is a pure function of
the step and epoch, so a resumed run freezes exactly what the uninterrupted one did; each change is logged
as a ``unfreeze`` edit (drawn on the charts).

    >>> Unfreeze(every_n_steps=100).trainable_blocks(step=250, epoch=0, n_blocks=5)
    3
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nbtune.methods import register
from nbtune.methods.base import Method, MethodError
from nbtune.methods.layer_lr import LAYER_INDEX, PRESETS

SCHEDULES = ("progressive", "freeze_then_unfreeze")
TARGETS = ("all", "embeddings", "attention", "ffn", "norm", "head", "layer N")


def targets(model: Any) -> list[str]:
    """The live freeze/unfreeze targets this model has: "all", the preset groups present, "layer N" per layer."""
    names = [n for n, _ in model.named_parameters()]
    found = [t for t in ("embeddings", "attention", "ffn", "norm", "head")
             if any(re.search(PRESETS[t], n, flags=re.IGNORECASE) for n in names)]
    layers = sorted({int(m.group(1)) for n in names if (m := LAYER_INDEX.search(n))})
    return ["all", *found, *(f"layer {i}" for i in layers)]


def select(model: Any, target: str, allowed: set[int] | None = None) -> list[Any]:
    """The parameters a live freeze/unfreeze target names: "all", a preset group ("embeddings", "attention",
    "ffn", "norm", "head") or "layer N". `allowed` (parameter ids the optimizer holds) limits the choice."""
    t = target.strip().lower()
    layer = re.fullmatch(r"layer\s*(\d+)", t)
    picked = []
    for n, p in model.named_parameters():
        if allowed is not None and id(p) not in allowed:
            continue
        m = LAYER_INDEX.search(n)
        if t == "all" or (layer and m and int(m.group(1)) == int(layer.group(1))) or (
                t in PRESETS and not layer and re.search(PRESETS[t], n, flags=re.IGNORECASE)):
            picked.append(p)  # a preset matches the whole module: "embeddings" includes its LayerNorm
    if not picked:
        raise MethodError(f"freeze/unfreeze target {target!r} matches no trainable parameter of this model; "
                          f"targets: {', '.join(TARGETS)}")
    return picked


@register
@dataclass
class Unfreeze(Method):
    """Args: schedule ("progressive" or "freeze_then_unfreeze"), every_n_steps or every_n_epochs (one of them),
    start_with: blocks trainable at the start (1 = the head only)."""

    name: ClassVar[str] = "unfreeze"
    schedule: str = "progressive"
    every_n_steps: int | None = None
    every_n_epochs: int | None = None
    start_with: int = 1
    blocks: list[list[Any]] = field(default_factory=list, repr=False)
    block_names: list[str] = field(default_factory=list, repr=False)
    _open: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise MethodError(f"unfreeze: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if (self.every_n_steps is None) == (self.every_n_epochs is None):
            raise MethodError("unfreeze: give exactly one of every_n_steps or every_n_epochs")
        interval = self.every_n_steps if self.every_n_steps is not None else self.every_n_epochs
        if not isinstance(interval, int) or interval < 1:
            raise MethodError(f"unfreeze: the interval must be a whole number >= 1, got {interval!r}")
        if self.start_with < 1:
            raise MethodError(f"unfreeze: start_with must be >= 1, got {self.start_with}")

    def prepare(self, model: Any, cfg: Any) -> None:
        layers: dict[int, list[Any]] = {}
        top, embeddings = [], []
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue  # frozen by something else (e.g. LoRA): never opened here
            m = LAYER_INDEX.search(n)
            if m:
                layers.setdefault(int(m.group(1)), []).append(p)
            elif re.search(PRESETS["embeddings"], n, flags=re.IGNORECASE):  # with the embeddings' own norm
                embeddings.append(p)
            else:
                top.append(p)
        if not layers:
            raise MethodError("unfreeze: found no numbered layers (…layer.N… / …layers.N…) in this model")
        order = sorted(layers, reverse=True)
        self.blocks = [b for b in [top, *(layers[i] for i in order), embeddings] if b]
        self.block_names = (["head"] if top else []) + [f"layer {i}" for i in order] + (
            ["embeddings"] if embeddings else [])
        self._open = None
        return None

    def trainable_blocks(self, step: int, epoch: int, n_blocks: int) -> int:
        elapsed = step // self.every_n_steps if self.every_n_steps is not None else epoch // self.every_n_epochs
        if self.schedule == "progressive":
            return min(n_blocks, self.start_with + elapsed)
        return n_blocks if elapsed >= 1 else min(n_blocks, self.start_with)

    def on_step(self, state: Any, optimizer: Any) -> dict | None:
        n = self.trainable_blocks(state.step, state.epoch, len(self.blocks))
        if n == self._open:
            return None
        old, self._open = self._open, n
        for i, block in enumerate(self.blocks):
            for p in block:
                p.requires_grad_(i < n)
        return {"kind": "edit", "step": state.step, "name": "unfreeze", "old": old,
                "new": f"{n}/{len(self.blocks)} blocks: down to {self.block_names[n - 1]}"}
