"""What a fine-tuning method may do: four hooks, all optional, called by the engine at fixed points.

- ``prepare(model, cfg)``: after the model is built, before the optimizer: freeze, wrap or inject modules.
  Returns None, parameter groups (``list[ParamGroup]``) for the optimizer, or a replacement model (an
  ``nn.Module`` wrapping the one it was given, e.g. an encoder with a BiLSTM+CRF head).
- ``loss_terms(batch, outputs, ctx)``: extra loss terms, ``{name: tensor}``, added to the task loss of each
  training micro-batch. ``ctx`` (a LossContext) holds the task loss, the model, the row indices, and
  ``task_weight``, which a method may lower (distillation weighs the task loss by 1 - alpha).
- ``on_step(state, optimizer)``: after each optimizer step and at epoch boundaries (schedules such as
  unfreezing); may return an edit record that the engine logs and draws.
- ``sampler(data, plan)``: the micro-batches of one epoch (curriculum, domain mixing); None keeps the default.

A method with state that must survive a resume (adaptive loss weights) also implements ``state_dict()`` and
``load_state_dict()`` with JSON-able values; the engine saves them in each checkpoint.

A method is one file in nbtune/methods/, one ``@register`` line, and one row in tests/test_methods.py.
Methods compose: each is configured by a dict in ``RunConfig.methods``, e.g.
``[{"name": "layer_lr", "lr": {"embeddings": 1e-6, "attention": 5e-5}}]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


class MethodError(ValueError):
    """A method's configuration cannot work with this model: raised before training starts."""


@dataclass
class ParamGroup:
    """A named set of parameters with its own peak LR (the schedule scales it like every other group)."""
    name: str
    params: list[Any] = field(default_factory=list)
    lr: float | None = None          # None: train.learning_rate


@dataclass
class LossContext:
    """What ``loss_terms`` may read (and the two things it may write: ``task_weight`` and ``log``)."""
    model: Any                      # the module the loop calls (DDP-wrapped under a distributed launch)
    raw_model: Any                  # the unwrapped module (parameters, embeddings, hooks)
    task: str                       # classification | token-classification | causal-lm
    step: int                       # optimizer steps done
    loss: Any                       # this micro-batch's task loss (a tensor with a graph)
    rows: list[int]                 # train-row indices of this micro-batch (a logits cache keys on them)
    label_names: list[str] = field(default_factory=list)
    class_weights: Any = None       # the run's per-class loss weights (train.class_weights), or None
    task_weight: float = 1.0        # the task loss is multiplied by this before the terms are added
    metrics: dict[str, Any] = field(default_factory=dict)

    def log(self, name: str, value: Any) -> None:
        """A per-step figure (tensor or float) for the sinks, averaged over the accumulation window."""
        self.metrics[name] = value


@dataclass
class PlanState:
    """What ``sampler`` may read to build one epoch's micro-batches (lists of train-row indices)."""
    epoch: int
    batch_size: int
    seed: int
    rank: int
    world: int
    steps_per_epoch: int | None     # None while the run is still being built (the first plan sets it)
    default: Callable[[], list[list[int]]]   # the engine's own plan for this epoch


class Method:
    """Base class: every hook is a no-op, so a method implements only the doors it needs."""

    name: ClassVar[str] = ""
    # A method whose prepare returns a new model (a head, an adapter wrapper) is prepared before the others,
    # whatever the config order, so groups and unfreezing blocks are taken from the final model.
    wraps_model: ClassVar[bool] = False

    def prepare(self, model: Any, cfg: Any) -> Any:
        return None

    def loss_terms(self, batch: dict, outputs: Any, ctx: LossContext) -> dict[str, Any]:
        return {}

    def on_step(self, state: Any, optimizer: Any) -> dict | None:
        return None

    def sampler(self, data: Any, plan: PlanState) -> list[list[int]] | None:
        return None

    def set_option(self, option: str, value: Any, state: Any) -> Any:
        """A live edit "<method>.<option>" through Control; returns the old value. None are live by default."""
        raise ValueError(f"{self.name} has no live option {option!r}")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
