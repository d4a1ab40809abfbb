"""Live edits applied to a running Run at a step boundary: the commands `run.control` queues (lr, clipping,
weight decay, freeze/unfreeze, pause/resume, checkpoint, a method's option) and the LR rescale they share with
the divergence guard's rollback.

Example:
    >>> run.control.set("lr", 5e-5)     # queued; at the next boundary the loop calls apply_command  # doctest: +SKIP
"""
from __future__ import annotations

import time

from nbtune.engine import build


def apply_command(run, cmd) -> None:
    """Apply one due command (not stop: the loop handles it) and send the edit record to the sinks."""
    step = run.state.step
    if cmd.name == "checkpoint":
        run.save_checkpoint()
        return
    if cmd.name in ("pause", "resume"):
        record = run.control.log(step, cmd.name, None, None)
    elif cmd.name in ("freeze", "unfreeze"):
        before = run.trainable_count()
        apply_trainable_edit(run, cmd.name, cmd.value)
        record = run.control.log(step, cmd.name, before, run.trainable_count())
        record["target"] = cmd.value
    elif "." in cmd.name:  # a method's live option, e.g. domain_mix.ratio
        method_name, option = cmd.name.split(".", 1)
        method = next((m for m in run.methods if m.name == method_name), None)
        try:
            if method is None:
                raise ValueError(f"no method '{method_name}' in this run "
                                 f"({', '.join(m.name for m in run.methods) or 'no methods'})")
            old = method.set_option(option, cmd.value, run.state)
        except ValueError as exc:  # a refused live edit is reported, and training goes on
            run.emit({"kind": "warning", "step": step, "time": time.time(),
                      "message": f"{cmd.name}={cmd.value!r} refused: {exc}"})
            return
        record = run.control.log(step, cmd.name, old, cmd.value)
        run.replan = True  # a sampler option: the rest of this epoch's batches may change
    elif cmd.name == "lr":
        record = run.control.log(step, "lr", *set_lr(run, cmd.value))
    elif cmd.name == "max_grad_norm":
        record = run.control.log(step, "max_grad_norm", run.max_grad_norm, cmd.value)
        run.max_grad_norm = cmd.value
    else:  # weight_decay: groups that decay get the new value; no-decay groups stay at 0
        groups = [g for g in run.optimizer.param_groups
                  if g["name"] != "no_decay" and not g["name"].endswith("(no decay)")]
        record = run.control.log(step, "weight_decay", groups[0]["weight_decay"] if groups else None, cmd.value)
        for g in groups:
            g["weight_decay"] = cmd.value
    run.emit(record)


def apply_trainable_edit(run, name: str, target: str) -> None:
    """Freeze or unfreeze a group now. Only parameters the optimizer holds can be opened again."""
    from nbtune.methods.unfreeze import select
    held = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    for p in select(run.raw_model, target, held):
        p.requires_grad_(name == "unfreeze")


def check_target(run, target: str) -> None:
    """Raise now (not at the step boundary) for a freeze target the model does not have, or a live freeze DDP
    cannot follow."""
    from nbtune.methods.unfreeze import select
    if run.accelerator.num_processes > 1 and not build.changes_trainable_set(run.cfg):
        raise RuntimeError("a live freeze under a distributed launch needs DDP's find_unused_parameters: add "
                           "the unfreeze method to the config (it turns that on), or freeze before launching")
    select(run.raw_model, target, {id(p) for g in run.optimizer.param_groups for p in g["params"]})


def set_lr(run, new: float) -> tuple[float, float]:
    """Scale every group's current LR and the scheduler's base LRs by one factor, so group ratios hold and the
    schedule continues from the new value. Returns (old, new) of the first group."""
    groups = run.optimizer.param_groups
    old = groups[0]["lr"]
    factor = new / old if old > 0 else new / run.scheduler.base_lrs[0]
    for i, g in enumerate(groups):
        g["lr"] *= factor
        g["initial_lr"] = g.get("initial_lr", run.scheduler.base_lrs[i]) * factor
    run.scheduler.base_lrs = [b * factor for b in run.scheduler.base_lrs]
    run.scheduler._last_lr = [g["lr"] for g in groups]
    return old, groups[0]["lr"]
