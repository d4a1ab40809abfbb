"""What a fine-tuning method may do: four hooks, all optional, called by the engine at fixed points.

- ``prepare(model, cfg)``: after the model is built, before the optimizer: freeze or wrap modules, and
  optionally return parameter groups (``list[ParamGroup]``) that the optimizer should use.
- ``loss_terms(batch, outputs, ctx)``: extra loss terms, ``{name: tensor}``, added to the task loss.
- ``on_step(state, optimizer)``: after each optimizer step (schedules such as unfreezing).
- ``sampler(dataset, state)``: the order of training rows (curriculum, domain mixing).

A method is one file in nbtune/methods/, one ``@register`` line, and one row in tests/test_methods.py.
Methods compose: each is configured by a dict in ``RunConfig.methods``, e.g.
``[{"name": "layer_lr", "lr": {"embeddings": 1e-6, "attention": 5e-5}}]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


class MethodError(ValueError):
    """A method's configuration cannot work with this model: raised before training starts."""


@dataclass
class ParamGroup:
    """A named set of parameters with its own peak LR (the schedule scales it like every other group)."""
    name: str
    params: list[Any] = field(default_factory=list)
    lr: float | None = None          # None: train.learning_rate


class Method:
    """Base class: every hook is a no-op, so a method implements only the doors it needs."""

    name: ClassVar[str] = ""

    def prepare(self, model: Any, cfg: Any) -> list[ParamGroup] | None:
        return None

    def loss_terms(self, batch: dict, outputs: Any, ctx: Any) -> dict[str, Any]:
        return {}

    def on_step(self, state: Any, optimizer: Any) -> None:
        return None

    def sampler(self, dataset: Any, state: Any) -> Any:
        return None
