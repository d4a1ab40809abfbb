"""Adversarial training on the input embeddings: FGM and PGD as an extra loss term, and NEFTune noise.

A forward hook on ``model.get_input_embeddings()`` does all the work, so any model with an embedding layer
takes part (BERT, Llama, DeepSeek-V3, a wrapped model) and nothing is added to its parameters.

- ``fgm`` (Miyato et al. 2017): the gradient g of the task loss with respect to the embedding output gives
  the perturbation r = epsilon * g / ||g||, normalised PER EXAMPLE over its (T, d) embedding matrix (padding
  excluded), so every example moves by exactly epsilon whatever the batch size or its share of the mean
  loss. A second forward with r added gives the adversarial loss; the term is ``weight`` x that loss.
- ``pgd`` (Madry et al. 2018): `steps` normalised ascent steps of `step_size` from the clean gradient, each
  projected back onto the per-example epsilon ball, then the adversarial loss. ``steps=1,
  step_size=epsilon`` is FGM.
- ``neftune`` (Jain et al. 2023): uniform noise in [-1, 1] x alpha / sqrt(L * d) on the embeddings of the
  training forward, L being each example's non-padding length; padding gets none. No loss term. It is
  refused for classification and tagging: its scale and evidence are for instruction-tuned generation, and
  FGM/PGD are the embedding perturbations studied for classifiers.

Evaluation (``model.eval()``) adds nothing. The adversarial forwards call the unwrapped model, so a DDP
run still sees one wrapped forward per backward; their gradients reach the same parameters.

    >>> g = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[0.0, 0.5], [9.0, 9.0]]])   # (B=2, T=2, d=2)
    >>> mask = torch.tensor([[1, 0], [1, 0]])                                     # second position padding
    >>> r = fgm_delta(g, mask, epsilon=0.5)
    >>> r[0, 0].tolist(), r[1, 0].tolist(), float(r[:, 1].abs().sum())
    ([0.30000001192092896, 0.4000000059604645], [0.0, 0.5], 0.0)
    >>> project(torch.full((1, 2, 2), 1.0), epsilon=1.0).flatten(1).norm(dim=1).tolist()
    [1.0]
"""
from __future__ import annotations

import difflib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from nbtune.methods import register
from nbtune.methods.base import LossContext, Method, MethodError

KINDS = ("fgm", "pgd", "neftune")
# option -> the kinds it applies to, and its default
OPTIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "epsilon": (("fgm", "pgd"), 1.0),
    "weight": (("fgm", "pgd"), 1.0),
    "steps": (("pgd",), 3),
    "step_size": (("pgd",), None),         # None: 2.5 * epsilon / steps (Madry et al.'s rule of thumb)
    "noise_alpha": (("neftune",), 5.0),
}

LIVE = ("epsilon", "weight", "step_size", "noise_alpha")


def _positive(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MethodError(f"adversarial: {option} must be a number > 0, got {value!r}")
    return float(value)


def _mask3(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, T) attention mask -> (B, T, 1) in `like`'s dtype; all ones when there is none."""
    if mask is None or mask.shape != like.shape[:2]:
        return torch.ones(like.shape[:2] + (1,), dtype=like.dtype, device=like.device)
    return mask.to(like.dtype).unsqueeze(-1)


def example_norms(x: torch.Tensor) -> torch.Tensor:
    """(B, T, d) -> (B,): the L2 norm of each example's embedding perturbation."""
    return x.flatten(1).norm(dim=1)


def fgm_delta(grad: torch.Tensor, mask: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    """epsilon * g / ||g|| per example, over the non-padding positions; an example with no gradient stays put.
    Computed in float32 (a bf16 model's gradient norms would be coarse); the hook casts back."""
    grad = grad.float()
    grad = grad * _mask3(mask, grad)
    norms = example_norms(grad).clamp_min(1e-12)           # (B,)
    return epsilon * grad / norms[:, None, None]


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each example whose perturbation is longer than epsilon back onto the epsilon ball."""
    scale = (epsilon / example_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale[:, None, None]


def neftune_noise(embeds: torch.Tensor, mask: torch.Tensor | None, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform noise in [-m_i, m_i], m_i = alpha / sqrt(L_i * d), zero on padding. Returns (noise, m) with m (B,)."""
    m3 = _mask3(mask, embeds)
    lengths = m3.sum(dim=(1, 2)).clamp_min(1.0)            # (B,) non-padding tokens
    magnitude = alpha / torch.sqrt(lengths * embeds.shape[-1])
    noise = (torch.rand_like(embeds) * 2 - 1) * magnitude[:, None, None] * m3
    return noise, magnitude


def input_embeddings(model: Any) -> torch.nn.Module:
    """The model's token embedding layer, also inside a wrapper that does not forward get_input_embeddings."""
    for module in [model, *model.modules()]:
        getter = getattr(module, "get_input_embeddings", None)
        if getter is not None:
            try:
                found = getter()
            except NotImplementedError:
                continue
            if isinstance(found, torch.nn.Module):
                return found
    raise MethodError(f"adversarial: {type(model).__name__} has no input embedding layer "
                      "(get_input_embeddings()), so there is nothing to perturb")


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()


@register
@dataclass(eq=False)
class Adversarial(Method):
    """Args:
        kind: "fgm", "pgd" or "neftune".
        epsilon: fgm/pgd: L2 norm of each example's embedding perturbation (default 1.0).
        weight: fgm/pgd: multiplier of the adversarial loss term (default 1.0).
        steps: pgd: ascent steps (default 3).
        step_size: pgd: length of each ascent step (default 2.5 * epsilon / steps).
        noise_alpha: neftune: noise scale alpha (default 5).
    """

    name: ClassVar[str] = "adversarial"
    kind: str = "fgm"
    epsilon: float | None = None
    weight: float | None = None
    steps: int | None = None
    step_size: float | None = None
    noise_alpha: float | None = None
    _handles: list = field(default_factory=list, init=False, repr=False)
    _captured: torch.Tensor | None = field(default=None, init=False, repr=False)   # (B, T, d), this step only
    _delta: torch.Tensor | None = field(default=None, init=False, repr=False)      # set during our forwards
    _mask: torch.Tensor | None = field(default=None, init=False, repr=False)       # neftune: this forward's mask
    _noise_scale: torch.Tensor | None = field(default=None, init=False, repr=False)
    _live: dict = field(default_factory=dict, init=False, repr=False)                # option -> live-edited value
    _derived_step_size: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            close = difflib.get_close_matches(str(self.kind), KINDS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise MethodError(f"adversarial: kind {self.kind!r} is not one of {', '.join(KINDS)}.{hint}")
        for option, (kinds, default) in OPTIONS.items():
            value = getattr(self, option)
            if value is not None and self.kind not in kinds:
                raise MethodError(f"adversarial: {option} applies to kind {' or '.join(map(repr, kinds))}, "
                                  f"not {self.kind!r}")
            if value is None and self.kind in kinds:
                setattr(self, option, default)
        if self.kind == "pgd":
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
                raise MethodError(f"adversarial: steps must be a whole number >= 1 for kind 'pgd', got {self.steps!r}")
            self._derived_step_size = self.step_size is None
            if self._derived_step_size:
                self.step_size = 2.5 * _positive("epsilon", self.epsilon) / self.steps
        for option in LIVE:
            if getattr(self, option) is not None:
                setattr(self, option, _positive(option, getattr(self, option)))

    def set_option(self, option: str, value: Any, state: Any) -> Any:
        """A live edit ``adversarial.<option>`` (epsilon, weight, step_size, noise_alpha); returns the old value."""
        if option not in LIVE or self.kind not in OPTIONS[option][0]:
            live = [o for o in LIVE if self.kind in OPTIONS[o][0]]
            raise ValueError(f"adversarial (kind {self.kind!r}) has the live options {live}, not {option!r}")
        try:
            value = _positive(option, value)
        except MethodError as exc:
            raise ValueError(str(exc)) from None
        old = getattr(self, option)
        setattr(self, option, value)
        self._live[option] = value
        if option == "step_size":
            self._derived_step_size = False
        if option == "epsilon" and self.kind == "pgd" and self._derived_step_size:
            self.step_size = 2.5 * value / self.steps
        return old

    def state_dict(self) -> dict[str, Any]:
        return {"live": dict(self._live)}   # only what live edits changed; the config gives the rest

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for option, value in state.get("live", {}).items():
            self.set_option(option, value, None)

    # ---- hooks on the model ----
    def prepare(self, model: Any, cfg: Any) -> None:
        if self.kind == "neftune" and cfg.task != "causal-lm":
            raise MethodError(f"adversarial: kind 'neftune' is for causal-lm (instruction tuning), not task "
                              f"{cfg.task!r}; use kind 'fgm' or 'pgd' for {cfg.task}")
        embed = input_embeddings(model)
        self.remove()
        ref = weakref.ref(self)  # the model must not keep a discarded method (and its hooks) alive

        def on_embeddings(module, args, output):
            method = ref()
            return None if method is None else method._on_embeddings(module, output)

        self._handles = [embed.register_forward_hook(on_embeddings)]
        if self.kind == "neftune":  # the embedding layer never sees the attention mask; the model call does
            def before(module, args, kwargs):
                if (method := ref()) is not None:
                    method._mask = kwargs.get("attention_mask")

            def after(module, args, kwargs, output):
                if (method := ref()) is not None:
                    method._mask = None
            self._handles += [model.register_forward_pre_hook(before, with_kwargs=True),
                              model.register_forward_hook(after, with_kwargs=True, always_call=True)]
        weakref.finalize(self, _remove, list(self._handles))
        return None

    def remove(self) -> None:
        """Take the hooks off the model (also done when the method is garbage-collected)."""
        _remove(self._handles)
        self._handles, self._captured, self._delta, self._mask = [], None, None, None

    def _on_embeddings(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        if self._delta is not None:
            return output + self._delta.to(output.dtype)
        if self.kind == "neftune":
            noise, magnitude = neftune_noise(output, self._mask, float(self.noise_alpha))
            self._noise_scale = magnitude.mean().detach()
            return output + noise
        if torch.is_grad_enabled():
            if not output.requires_grad:  # frozen embeddings (LoRA): the gradient is still needed here
                output.requires_grad_(True)
            self._captured = output
        return None

    # ---- the loss term ----
    def loss_terms(self, batch: dict, outputs: Any, ctx: LossContext) -> dict[str, Any]:
        if self.kind == "neftune":
            if self._noise_scale is not None:
                ctx.log("adversarial/noise_scale", self._noise_scale)
                self._noise_scale = None
            return {}
        delta = self.perturbation(batch, outputs, ctx)
        ctx.log("adversarial/perturbation_norm", example_norms(delta).mean())
        return {"adversarial": self.weight * self._forward_loss(batch, outputs, ctx, delta)}

    def perturbation(self, batch: dict, outputs: Any, ctx: LossContext) -> torch.Tensor:
        """The (B, T, d) embedding perturbation for this micro-batch (FGM or PGD), detached."""
        captured, self._captured = self._captured, None   # never keep this step's graph past the step
        if captured is None:
            raise RuntimeError("adversarial: the input embeddings were not computed in this training forward "
                               "(a model fed inputs_embeds, or a forward outside the hooked model)")
        mask = batch.get("attention_mask")
        (grad,) = torch.autograd.grad(ctx.loss, captured, retain_graph=True)
        if self.kind == "fgm":
            return fgm_delta(grad, mask, self.epsilon).detach()
        delta = project(fgm_delta(grad, mask, self.step_size), self.epsilon).detach()
        for _ in range(self.steps - 1):
            probe = delta.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._forward_loss(batch, outputs, ctx, probe), probe)
            delta = project(delta + fgm_delta(grad, mask, self.step_size), self.epsilon).detach()
        return delta

    def _forward_loss(self, batch: dict, outputs: Any, ctx: LossContext, delta: torch.Tensor) -> torch.Tensor:
        """The engine's kind of task loss on the batch with `delta` added to its embeddings."""
        self._delta = delta
        try:
            weights = ctx.class_weights
            if weights is None:
                return ctx.raw_model(**batch).loss
            logits = ctx.raw_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=weights)
        finally:
            self._delta = None

