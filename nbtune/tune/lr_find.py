"""The LR range test, calibrated for fine-tuning transformers: ``lr_find(run)`` (``run.lr_find()``).

A fresh AdamW (the run's groups, weight decay and clipping) trains on the run's own batches while the LR grows
exponentially over a range suited to full fine-tuning or to LoRA. The run is left exactly as it was: weights,
gradients, RNG, method state and train/eval modes are restored bit for bit; the run's optimizer and scheduler
are never touched.

Why not the naive rule. The steepest descent of the smoothed loss comes late in a transformer's sweep, when a
new classification head learns fast at an LR that is already wrecking the pretrained encoder; that rule
suggests ~1e-3 where 1e-5..1e-4 is right (transformers declined such a finder for this reason). Ours takes the
LR at the minimum of the smoothed loss, a stable landmark (the raw loss starts to spike around it: the edge of
stability), and steps 1.5 decades below it (``lr_at_min / 30``), then keeps it within a factor of 2 of the
mode's usual range. Calibration, measured with bench/lr_find_minilm.py on MiniLM-L6 / intents-en (100 steps, two seeds):
the minimum sits at 3.1e-3..3.5e-3, so ours is 1.0e-4..1.2e-4 before any clipping, while the steepest slope is
at 1.0e-3..1.6e-3; fastai's ``/ 10`` would give 3e-4, above the range. Both values are reported.

    >>> result = lr_find(run)                                           # doctest: +SKIP
    >>> result.suggestion, result.naive_suggestion, result.usual_range  # doctest: +SKIP
    (0.000104, 0.00156, (1e-05, 0.0001))
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import html
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

MODES = ("auto", "full", "lora")
# (default sweep start, end) and the usual fine-tuning range per mode.
SWEEP = {"full": (1e-7, 1e-2), "lora": (1e-6, 1e-1)}
USUAL = {"full": (1e-5, 1e-4), "lora": (1e-4, 1e-3)}
ADAPTER_METHODS = ("lora", "prompt_tuning")
STEPS_BELOW_MIN = 30.0      # ours = LR at the smoothed minimum / this (1.5 decades)
CLIP_FACTOR = 2.0           # ours stays within [usual_lo / 2, usual_hi * 2]
NOTE = ("A starting point, not a tuned value: the sweep is {n} short AdamW steps, so confirm it with a "
        "validation run (or a search around it).")


@dataclass
class LRFindResult:
    """The measured curve and the suggestions. ``lrs[i]`` is the LR of sweep step i, ``losses[i]`` that step's
    training loss (measured before its update) and ``smoothed[i]`` the bias-corrected moving average."""
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float              # ours: the starting point to use
    suggestion_unclipped: float    # ours before keeping it near the usual range
    naive_suggestion: float        # steepest descent of the smoothed curve, for comparison
    lr_at_min: float               # the LR where the smoothed loss is lowest
    rule: str
    mode: str                      # full | lora
    usual_range: tuple[float, float]
    stopped_early: bool            # the smoothed loss exceeded diverge x its minimum
    warmup_steps: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usual_range"] = list(self.usual_range)
        return d

    def points(self, n: int = 10) -> list[tuple[float, float]]:
        """About n (lr, smoothed loss) pairs spread evenly over the curve, for a printed summary."""
        if not self.lrs:
            return []
        idx = sorted({round(i * (len(self.lrs) - 1) / max(1, n - 1)) for i in range(n)})
        return [(self.lrs[i], self.smoothed[i]) for i in idx]

    def summary(self) -> str:
        rows = "\n".join(f"  lr {lr:9.2e}  smoothed loss {loss:.4f}" for lr, loss in self.points())
        lo, hi = self.usual_range
        stop = ", stopped on divergence" if self.stopped_early else ""
        return (f"LR range test ({self.mode}, {len(self.lrs)} steps{stop})\n"
                f"{rows}\n  suggested starting point {self.suggestion:.2e} ({self.rule}); naive steepest slope "
                f"{self.naive_suggestion:.2e}; usual {self.mode} range {lo:.0e}..{hi:.0e}\n  {self.note}")

    def _repr_html_(self) -> str:
        lo, hi = self.usual_range
        rows = "".join(f"<tr><td>{lr:.2e}</td><td>{loss:.4f}</td></tr>" for lr, loss in self.points())
        e = html.escape
        return (f"<div><b>LR range test</b> ({e(self.mode)})<br>{_svg(self)}"
                f"<p><b>Suggested starting point: {self.suggestion:.2e}</b> ({e(self.rule)})<br>"
                f"usual range for {e(self.mode)}: {lo:.0e} to {hi:.0e}; naive steepest-slope finder: "
                f"{self.naive_suggestion:.2e}</p><p><i>{e(self.note)}</i></p>"
                f"<table><tr><th>lr</th><th>smoothed loss</th></tr>{rows}</table></div>")


def _svg(result: LRFindResult, width: int = 360, height: int = 160) -> str:
    """The smoothed curve on a log-LR axis, the usual range shaded and the suggestion marked."""
    if len(result.lrs) < 2:
        return ""
    x0, x1 = math.log10(result.lrs[0]), math.log10(result.lrs[-1])
    finite = [v for v in result.smoothed if math.isfinite(v)]
    y0, y1 = min(finite), max(finite)
    sx = lambda lr: (math.log10(lr) - x0) / max(x1 - x0, 1e-12) * width  # noqa: E731
    sy = lambda v: height - (min(v, y1) - y0) / max(y1 - y0, 1e-12) * height  # noqa: E731
    pts = " ".join(f"{sx(lr):.1f},{sy(v):.1f}" for lr, v in zip(result.lrs, result.smoothed) if math.isfinite(v))
    lo, hi = (min(max(sx(v), 0), width) for v in result.usual_range)
    s = min(max(sx(result.suggestion), 0), width)
    return (f'<svg width="{width}" height="{height}" style="border:1px solid #ccc">'
            f'<rect x="{lo:.1f}" y="0" width="{hi - lo:.1f}" height="{height}" fill="#e8f0fe"/>'
            f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
            f'<line x1="{s:.1f}" x2="{s:.1f}" y1="0" y2="{height}" stroke="#d62728" stroke-dasharray="4"/></svg>')


def resolve_mode(run: Any, mode: str) -> str:
    """auto -> "lora" when the run trains adapters (lora, prompt_tuning), else "full"."""
    if mode not in MODES:
        close = difflib.get_close_matches(str(mode), MODES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"lr_find: mode must be one of {', '.join(MODES)}, got {mode!r}.{hint}")
    if mode != "auto":
        return mode
    names = {m.name for m in getattr(run, "methods", ())}
    return "lora" if names & set(ADAPTER_METHODS) else "full"


def _check(start_lr: float, end_lr: float, num_steps: int, smooth: float, diverge: float) -> None:
    if not (start_lr > 0 and end_lr > 0):
        raise ValueError(f"lr_find: start_lr and end_lr must be > 0, got start_lr={start_lr}, end_lr={end_lr}")
    if start_lr >= end_lr:
        raise ValueError(f"lr_find: start_lr must be below end_lr, got start_lr={start_lr} >= end_lr={end_lr}")
    if not isinstance(num_steps, int) or num_steps < 10:
        raise ValueError(f"lr_find: num_steps must be a whole number >= 10 (a curve needs points), got {num_steps!r}")
    if not 0 <= smooth < 1:
        raise ValueError(f"lr_find: smooth (the moving-average factor) must be in [0, 1), got {smooth}")
    if not diverge > 1:
        raise ValueError(f"lr_find: diverge (stop when the loss exceeds this x its minimum) must be > 1, got {diverge}")


def suggest(lrs: list[float], smoothed: list[float], usual: tuple[float, float]) -> dict[str, float]:
    """Ours (minimum / 30, kept within CLIP_FACTOR of the usual range) and the naive steepest slope."""
    loss = np.asarray(smoothed, dtype=float)
    log_lr = np.log10(np.asarray(lrs, dtype=float))
    i_min = int(np.nanargmin(loss))
    lr_at_min = float(lrs[i_min])
    raw = lr_at_min / STEPS_BELOW_MIN
    ours = min(max(raw, usual[0] / CLIP_FACTOR), usual[1] * CLIP_FACTOR)
    # Naive: the steepest descent of the smoothed loss against log LR, anywhere on the curve.
    naive = float(lrs[int(np.nanargmin(np.gradient(loss, log_lr)))]) if len(lrs) > 2 else lr_at_min
    return {"suggestion": float(ours), "suggestion_unclipped": float(raw), "naive_suggestion": naive,
            "lr_at_min": lr_at_min}


@contextlib.contextmanager
def _untouched(run: Any):
    """Snapshot what a sweep changes (weights, buffers, grads, RNG, method state, module modes); restore it
    exactly afterwards, in place, so the optimizer's references to the parameters stay valid."""
    model = run.raw_model
    tensors = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    grads = {p: None if p.grad is None else p.grad.detach().clone() for p in model.parameters()}
    modes = [(m, m.training) for m in model.modules()]
    methods = [(m, copy.deepcopy(m.state_dict())) for m in getattr(run, "methods", ())]
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        with torch.no_grad():
            live = model.state_dict(keep_vars=True)
            for name, saved in tensors.items():
                live[name].copy_(saved)
        for p, g in grads.items():
            p.grad = g
        for m, training in modes:
            m.training = training
        for m, state in methods:
            m.load_state_dict(state)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])


def _sweep_optimizer(run: Any) -> tuple[torch.optim.Optimizer, list[float]]:
    """A new AdamW over the run's parameter groups (same weight decay, betas, eps), and each group's LR as a
    multiple of train.learning_rate (layer_lr's ratios hold during the sweep)."""
    base = run.cfg.train.learning_rate
    ratios = [b / base for b in run.scheduler.base_lrs]
    d = run.optimizer.defaults
    groups = [{"params": list(g["params"]), "weight_decay": g["weight_decay"]} for g in run.optimizer.param_groups]
    fast = {"fused": True} if run.device.type in ("cuda", "cpu") else {"foreach": True}
    opt = torch.optim.AdamW(groups, lr=base, betas=d["betas"], eps=d["eps"], **fast)
    return opt, ratios


def _batches(run: Any):
    """The run's own micro-batches, epoch after epoch (the plan is a pure function of the epoch)."""
    epoch = 0
    while True:
        plan = run.epoch_plan(epoch)
        if not plan:
            raise RuntimeError("lr_find: the run's data plan has no batches")
        yield from plan
        epoch += 1


def _one_step(run: Any, opt, batches, lr: float, ratios: list[float], scaler) -> float:
    """One optimizer step over a window of gradient_accumulation_steps micro-batches; returns its mean loss."""
    from nbtune.engine import loop
    accum = run.cfg.train.gradient_accumulation_steps
    total = 0.0
    for _ in range(accum):
        rows = next(batches)
        batch = {k: v.to(run.device) for k, v in run.collate(rows, run.data.rows["train"]).items()}
        with loop.autocast(run):
            loss, _ = loop.training_loss(run, batch, rows)
            loss = loss / accum
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
    for group, ratio in zip(opt.param_groups, ratios):
        group["lr"] = lr * ratio
    if scaler is not None:
        scaler.unscale_(opt)
    if run.max_grad_norm is not None:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, run.max_grad_norm)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def lr_find(run: Any, start_lr: float | None = None, end_lr: float | None = None, num_steps: int = 100,
            mode: str = "auto", smooth: float = 0.98, diverge: float = 4.0,
            warmup_steps: int | None = None) -> LRFindResult:
    """Sweep the LR exponentially from start_lr to end_lr over num_steps AdamW steps on the run's batches and
    suggest a starting LR. The run is unchanged afterwards (weights, RNG, optimizer, scheduler, state).

    mode: "full" (sweep 1e-7..1e-2, usual 1e-5..1e-4), "lora" (1e-6..1e-1, usual 1e-4..1e-3) or "auto" (lora
    when the run has a lora or prompt_tuning method). smooth: moving-average factor of the loss. diverge: stop
    when the smoothed loss exceeds this multiple of its minimum. warmup_steps: steps at start_lr before the
    recorded sweep, so AdamW's moment estimates are settled (default: 5% of num_steps, at least 2).

        >>> r = lr_find(run, num_steps=80)          # doctest: +SKIP
        >>> print(r.summary())                      # doctest: +SKIP
    """
    mode = resolve_mode(run, mode)
    start_lr = SWEEP[mode][0] if start_lr is None else start_lr
    end_lr = SWEEP[mode][1] if end_lr is None else end_lr
    _check(start_lr, end_lr, num_steps, smooth, diverge)
    warmup_steps = max(2, num_steps // 20) if warmup_steps is None else warmup_steps
    if getattr(run, "is_running", False) or run.state.status in ("running", "paused"):
        raise RuntimeError(f"lr_find: the run is {run.state.status}; run the LR range test before training starts")

    grid = [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, False
    with _untouched(run):
        run.model.train()
        opt, ratios = _sweep_optimizer(run)
        scaler = torch.amp.GradScaler("cuda") if run.scaler is not None else None
        batches = _batches(run)
        for _ in range(warmup_steps):
            _one_step(run, opt, batches, start_lr, ratios, scaler)
        for i, lr in enumerate(grid):
            loss = _one_step(run, opt, batches, lr, ratios, scaler)
            if not math.isfinite(loss):
                stopped = True
                break
            avg = smooth * avg + (1 - smooth) * loss
            value = avg / (1 - smooth ** (i + 1))   # bias-corrected, like Adam's moments
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if i >= 5 and value > diverge * best:
                stopped = True
                break
        del opt
    if len(lrs) < 3:
        raise RuntimeError(f"lr_find: the loss diverged after {len(lrs)} steps; lower start_lr (was {start_lr})")
    usual = USUAL[mode]
    picks = suggest(lrs, smoothed, usual)
    rule = (f"LR at the smoothed-loss minimum ({picks['lr_at_min']:.1e}) / {STEPS_BELOW_MIN:g}, kept within "
            f"x{CLIP_FACTOR:g} of the usual range")
    return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed, rule=rule, mode=mode, usual_range=usual,
                        stopped_early=stopped, warmup_steps=warmup_steps, note=NOTE.format(n=len(lrs)), **picks)
