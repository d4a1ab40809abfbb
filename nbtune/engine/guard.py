"""The divergence guard and the out-of-memory backoff: non-finite steps skipped, loss spikes rolled back, a run
that keeps failing halted, micro-batches halved when memory runs out.

Why it costs no host sync per step:
- **Skip on the device.** `optimizer_step` measures the total gradient norm anyway; `skip = ~isfinite(norm) |
  ~isfinite(loss)` stays a device tensor and goes to the fused AdamW kernel as `found_inf`, the door GradScaler
  uses: when it is 1 the kernel leaves the weights, exp_avg and exp_avg_sq untouched and the optimizer's step count
  is put back, bit for bit. Under fp16 the GradScaler's own `found_inf` does the same and lowers the loss scale. An
  optimizer without that door (foreach AdamW, used on devices other than CPU and CUDA) reads the flag instead:
  one sync per step there. Clipping a non-finite norm turns gradients into NaN (`clip_coef` = max_norm / inf = 0,
  and inf * 0 = NaN), which is harmless because that step is skipped. Under fp16 an overflow skip (finite loss,
  non-finite scaled gradients) is the scaler's normal start-up: counted, but not toward the halt streak.
- **A skipped step still counts** (the documented policy): `state.step` and the LR scheduler advance as for any
  step, so the schedule and the data plan stay functions of the step number, and a skipped step costs one step of
  the budget. The scheduler therefore steps once per step, applied or not.
- **Decide at the flush.** Every `sync_every_n_steps` the loop reads its step records to the host; `review` reads
  the guard's flags and losses in the same place (one more transfer of already computed scalars): it counts
  skipped steps, marks their step records `skipped: True`, folds the loss into an EMA, sends `{"kind": "guard"}`
  records, and returns a verdict: halt after `max_consecutive_skips` divergent skips in a row (the status names
  the step where the limit was reached; the loop stops at that flush, having applied no update since), or roll
  back after a spike. A cadence checkpoint (save_every_n_steps) is always preceded by a flush, so none is written
  while a skip streak or a spike is open. A Stop or "checkpoint now" command saves before the loop flushes: such
  a checkpoint holds the guard's counts as of the previous flush (the steps since are in metrics.jsonl).
- **Rollback restores the newest checkpoint on disk** saved before the spike step (exact, through the resume
  code: weights, optimizer, scheduler, RNG, position; no in-memory copy of the weights is kept), multiplies the
  LR by `spike_lr_factor` through `run._set_lr` (logged as an "lr" edit), and leaves the spike window's batches
  out of that epoch's plan from then on. Needs `save_every_n_steps`; single process only.
- **Out-of-memory backoff** keeps the data plan as it is (batches of `train.batch_size`) and runs each planned
  batch as chunks of a smaller micro-batch, each chunk's loss weighted by its share of the task loss's denominator
  (rows, class weights or label tokens), so the effective batch and the gradient stay the whole batch's
  (micro-batch x chunks = batch size). The failed window is started again from its first micro-batch with its
  gradients dropped. The chunk size lives in `TrainState.guard`, so checkpoints save it and a resume replays it.
  It covers forward and backward (not the optimizer step or evaluation), in a single process. An OOM that leaves
  the loop has its traceback's frames cleared (`release`), so a notebook's last error pins no tensors.

Example:
    >>> g = GuardState()
    >>> g.skipped_steps, g.micro_batch_size
    (0, None)
"""
from __future__ import annotations

import gc
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nbtune.config import ConfigError
from nbtune.engine import checkpoint as ckpt, tasks


class NoBatchSizeFitsError(RuntimeError):
    """Out of memory at every micro-batch size down to the floor; the message lists the sizes tried."""


@dataclass
class GuardState:
    """What the guard has done so far; part of TrainState, so checkpoints save it and a resume continues it."""
    skipped_steps: int = 0            # steps whose update was skipped (non-finite loss or gradient)
    consecutive_skips: int = 0        # divergent skips in a row (fp16 overflow skips neither add nor reset)
    diverged_at: int | None = None    # the step where the run was halted
    rollbacks: int = 0
    loss_ema: float | None = None     # EMA of the step loss, for spike detection
    ema_steps: int = 0                # losses folded into the EMA
    skipped_batches: list = field(default_factory=list)  # [[epoch, [row, ...]], ...] left out after a rollback
    micro_batch_size: int | None = None  # None: the planned batch as a whole (no OOM backoff yet)
    oom_failed_sizes: list = field(default_factory=list)  # micro-batch sizes that ran out of memory


@dataclass
class _Noted:
    step: int
    skip: torch.Tensor | None   # () bool on the device
    loss: torch.Tensor          # () the window loss on the device
    epoch: int
    batches: list               # the window's micro-batches (row indices)


class Guard:
    """One run's guard: the policy from TrainConfig plus the steps noted since the last flush. Its lasting state
    is `run.state.guard` (a GuardState)."""

    def __init__(self, train_cfg, world_size: int = 1) -> None:
        t = train_cfg
        self.skip_nonfinite = t.skip_nonfinite_steps
        self.max_consecutive = t.max_consecutive_skips
        self.spike_factor = t.spike_factor
        self.alpha = 2.0 / (t.spike_ema_steps + 1)  # the usual N-step EMA
        self.ema_steps = t.spike_ema_steps
        self.lr_factor = t.spike_lr_factor
        self.max_rollbacks = t.max_rollbacks
        self.oom_backoff = t.oom_backoff and world_size == 1  # one rank halving alone would desynchronise DDP
        self.min_micro = t.min_micro_batch_size
        _check(t, world_size)
        self.verdict: str | None = None   # "halt" | "rollback", set by review, taken by the loop
        self.attempting = 0               # rows in the chunk being computed (what an OOM failed on)
        self._noted: list[_Noted] = []
        self._spike: dict | None = None
        self._class_weights: list[float] | None = None  # host copy, for chunk weights after a backoff

    # ---- non-finite steps (called by optimizer_step; no sync) ----
    def skip_flag(self, total_norm: torch.Tensor, loss: torch.Tensor) -> torch.Tensor | None:
        """() bool on the device: the step must not be applied. None when skipping is off."""
        if not self.skip_nonfinite:
            return None
        return ~torch.isfinite(total_norm) | ~torch.isfinite(loss.to(total_norm.device))

    def step(self, optimizer: torch.optim.Optimizer, skip: torch.Tensor | None) -> None:
        """optimizer.step(), leaving weights and optimizer state untouched when `skip` is set (see the module doc)."""
        if skip is None:
            optimizer.step()
        elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused: the kernel reads found_inf
            optimizer.found_inf = skip.float()
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        elif not bool(skip):  # no found_inf door: decided on the host (one sync per step)
            optimizer.step()

    def note_step(self, step: int, skip: torch.Tensor | None, loss: torch.Tensor, epoch: int, batches: list) -> None:
        """Remember one finished step's flag and loss (device tensors) until the next flush."""
        if self.skip_nonfinite or self.spike_factor:
            self._noted.append(_Noted(step, skip, loss, epoch, batches))

    # ---- at the loop's flush ----
    def review(self, run, records: list[dict]) -> None:
        """Read the noted steps to the host in one transfer, count skips, watch for spikes, set the verdict."""
        noted, self._noted = self._noted, []
        if not noted:
            return
        zero = torch.zeros((), device=noted[0].loss.device)
        values = torch.stack([torch.stack([(n.skip if n.skip is not None else zero).float().to(zero.device),
                                           n.loss.float()]) for n in noted]).tolist()
        by_step = {r["step"]: r for r in records}
        g = run.state.guard
        for n, (skip, loss) in zip(noted, values):
            if skip:
                self._skipped(run, n, loss, by_step.get(n.step))
            elif self.spike_factor and self.verdict is None:
                if self._watch_loss(run, n, loss):
                    break  # the steps after a spike are abandoned by the rollback, and replayed after it
            else:
                g.consecutive_skips = 0

    def _skipped(self, run, n: _Noted, loss: float, record: dict | None) -> None:
        g = run.state.guard
        g.skipped_steps += 1
        reason = "loss" if not math.isfinite(loss) else "gradient"
        if run.scaler is not None and reason == "gradient":
            reason = "overflow"  # fp16: the scaler lowers its scale; part of its normal start-up
        else:
            g.consecutive_skips += 1
        if record is not None:
            record["skipped"] = True
        run.emit({"kind": "guard", "step": n.step, "event": "nan_skipped", "reason": reason, "loss": loss,
                  "skipped_steps": g.skipped_steps, "consecutive_skips": g.consecutive_skips, "time": time.time()})
        if self.max_consecutive and g.consecutive_skips >= self.max_consecutive and self.verdict is None:
            self._halt(run, n.step, f"{g.consecutive_skips} steps in a row had a non-finite loss or gradient "
                                    f"(steps {n.step - g.consecutive_skips + 1}-{n.step}); no update was applied")

    def _watch_loss(self, run, n: _Noted, loss: float) -> bool:
        """Fold the loss into the EMA, or flag a spike. Returns True when a verdict was set."""
        g = run.state.guard
        g.consecutive_skips = 0
        if not math.isfinite(loss):  # with skipping off a NaN loss is applied; it must not poison the EMA
            return False
        if g.loss_ema is not None and g.ema_steps >= self.ema_steps and loss > self.spike_factor * g.loss_ema:
            ratio = loss / g.loss_ema
            if g.rollbacks >= self.max_rollbacks:
                self._halt(run, n.step, f"loss spike {loss:.4g} = {ratio:.2f}x its EMA after {g.rollbacks} "
                                        f"rollbacks (train.max_rollbacks={self.max_rollbacks})")
            else:
                self.verdict = "rollback"
                self._spike = {"step": n.step, "loss": loss, "ema": g.loss_ema, "ratio": ratio, "epoch": n.epoch,
                               "batches": n.batches}
            return True
        g.loss_ema = loss if g.loss_ema is None else g.loss_ema + self.alpha * (loss - g.loss_ema)
        g.ema_steps += 1
        return False

    def _halt(self, run, step: int, why: str) -> None:
        self.verdict = "halt"
        run.state.guard.diverged_at = step
        run.emit({"kind": "guard", "step": step, "event": "halted", "status": self.status(run), "time": time.time(),
                  "message": f"diverged at step {step}: {why}. Training stopped; the newest checkpoint holds the "
                             f"last good state. Lower the learning rate or check the data around this step."})

    def status(self, run) -> str:
        return f"diverged at step {run.state.guard.diverged_at}"

    def safe_to_save(self, run) -> bool:
        """False while a verdict is open or the newest step was skipped: a checkpoint there would resume into the
        same fault (the newest reviewed step is the current one, since every save follows a flush)."""
        if self.verdict is None and run.state.guard.consecutive_skips == 0:
            return True
        run.emit({"kind": "guard", "step": run.state.step, "event": "save_skipped", "time": time.time(),
                  "message": "checkpoint not written: the newest step was skipped or is being rolled back"})
        return False

    # ---- spike rollback ----
    def roll_back(self, run) -> bool:
        """Restore the newest checkpoint before the spike, scale the LR, leave the spike's batches out. False when
        there is no checkpoint before the spike (it is reported, and training goes on)."""
        spike, self._spike, self.verdict = self._spike, None, None
        path = newest_checkpoint_before(run.run_dir, spike["step"])
        if path is None:  # a spike before the first checkpoint: nothing to restore, training goes on
            run.emit({"kind": "guard", "step": spike["step"], "event": "spike_ignored", "time": time.time(),
                      "ratio": spike["ratio"], "message": "loss spike before the first checkpoint: not rolled back"})
            return False
        kept = run.state.guard
        run.load_checkpoint(path)  # weights, optimizer, scheduler, RNG, position, edit log: as saved
        kept.rollbacks += 1
        kept.skipped_batches += [[spike["epoch"], list(rows)] for rows in spike["batches"]]
        run.state.guard = kept  # the guard's history is the run's, not the checkpoint's
        run.state.status = "running"
        old, new = run._set_lr(run.optimizer.param_groups[0]["lr"] * self.lr_factor)
        run.emit(run.control.log(run.state.step, "lr", old, new))
        run.emit({"kind": "guard", "step": spike["step"], "event": "spike_rollback", "ratio": spike["ratio"],
                  "loss": spike["loss"], "ema": spike["ema"], "checkpoint": str(path), "restored_step": run.state.step,
                  "lr": new, "rollbacks": kept.rollbacks, "skipped_batches": len(spike["batches"]),
                  "time": time.time()})
        return True

    def plan(self, run, epoch: int) -> list[list[int]]:
        """The epoch's micro-batches, without those a rollback left out."""
        batches = run.epoch_plan(epoch)
        drop = {tuple(rows) for e, rows in run.state.guard.skipped_batches if e == epoch}
        return [b for b in batches if tuple(b) not in drop] if drop else batches

    # ---- out-of-memory backoff ----
    def chunks(self, run, rows: list[int]) -> list[tuple[list[int], float]]:
        """The planned micro-batch as (rows, weight) chunks: [(rows, 1.0)] until a backoff lowered the size."""
        size = run.state.guard.micro_batch_size
        if size is None or size >= len(rows):
            return [(rows, 1.0)]
        parts = [rows[i:i + size] for i in range(0, len(rows), size)]
        if self._class_weights is None and getattr(run, "class_weights", None) is not None:
            self._class_weights = run.class_weights.tolist()
        shares = [loss_denominator(run, part, self._class_weights) for part in parts]
        total = sum(shares)
        return [(part, share / total) for part, share in zip(parts, shares) if share > 0]

    def back_off(self, run, exc: BaseException) -> bool:
        """Called with an error from a micro-batch. True: the micro-batch size was halved, retry the window.
        False: not an out-of-memory error, or backoff is off (re-raise it). Raises NoBatchSizeFitsError at the
        floor. An OOM's traceback frames are cleared first, so nothing keeps the failed step's tensors alive."""
        if not is_out_of_memory(exc):
            return False
        release(exc)
        if not self.oom_backoff:
            return False
        g, failed = run.state.guard, self.attempting or run.cfg.train.batch_size
        g.oom_failed_sizes.append(failed)
        tried = ",".join(str(s) for s in g.oom_failed_sizes)
        if failed <= self.min_micro:
            raise NoBatchSizeFitsError(
                f"no batch size fits: tried {tried} (train.batch_size={run.cfg.train.batch_size} split down to "
                f"train.min_micro_batch_size={self.min_micro}); the last error was: {_first_line(exc)}. Lower "
                f"data.max_length, train in bf16, or use a smaller model.") from None
        g.micro_batch_size = max(self.min_micro, failed // 2)
        chunks = math.ceil(run.cfg.train.batch_size / g.micro_batch_size)
        accum = run.cfg.train.gradient_accumulation_steps * chunks
        run.emit({"kind": "guard", "step": run.state.step, "event": "oom_backoff", "failed_micro_batch_size": failed,
                  "micro_batch_size": g.micro_batch_size, "gradient_accumulation_steps": accum,
                  "effective_batch_size": g.micro_batch_size * accum, "tried": list(g.oom_failed_sizes),
                  "message": _first_line(exc), "time": time.time()})
        return True


def _check(t, world_size: int) -> None:
    """Refuse guard settings that cannot work, naming the key (RunConfig.validate does not know them)."""
    if t.max_consecutive_skips is not None and t.max_consecutive_skips < 1:
        raise ConfigError(f"train.max_consecutive_skips must be >= 1 or null, got {t.max_consecutive_skips!r}")
    if t.min_micro_batch_size < 1:
        raise ConfigError(f"train.min_micro_batch_size must be >= 1, got {t.min_micro_batch_size!r}")
    if t.spike_factor is None:
        return
    if t.spike_factor <= 1:
        raise ConfigError(f"train.spike_factor must be > 1 (a loss this many times its EMA is a spike), "
                          f"got {t.spike_factor!r}")
    if t.spike_ema_steps < 1 or t.max_rollbacks < 0 or not 0 < t.spike_lr_factor <= 1:
        raise ConfigError(f"spike rollback needs train.spike_ema_steps >= 1, train.max_rollbacks >= 0 and "
                          f"0 < train.spike_lr_factor <= 1; got {t.spike_ema_steps!r}, {t.max_rollbacks!r}, "
                          f"{t.spike_lr_factor!r}")
    if not t.save_every_n_steps:
        raise ConfigError("train.spike_factor rolls back to the newest checkpoint before a spike: set "
                          "train.save_every_n_steps (e.g. 10) so there is one")
    if world_size > 1:
        raise ConfigError("train.spike_factor (spike rollback) works in a single process; each rank sees its own "
                          "loss, so ranks could disagree. Set it to null under a distributed launch")


def loss_denominator(run, rows: list[int], class_weights: list[float] | None = None) -> float:
    """What the task loss averages over for these rows: rows (or the sum of their class weights, as a weighted
    cross-entropy does), or label tokens. Methods' loss terms are weighted the same way (exact for row means)."""
    data = run.data.rows["train"]
    if run.cfg.task == "classification":
        if class_weights is None:
            return float(len(rows))
        return float(sum(class_weights[data[i]["labels"]] for i in rows))
    start = 1 if run.cfg.task == "causal-lm" else 0  # the model shifts causal-LM labels by one
    return float(sum(sum(1 for y in data[i]["labels"][start:] if y != tasks.IGNORE) for i in rows))


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or a RuntimeError accelerate recognises as one (CPU, MPS, XPU allocators)."""
    from accelerate.utils.memory import should_reduce_batch_size
    return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)


def release(exc: BaseException) -> None:
    """Drop what a failed step's traceback holds (activations in finished frames), then return cached memory.
    A notebook keeps the last error: without this it would pin the failed step's CUDA tensors."""
    traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def newest_checkpoint_before(run_dir: Path, step: int) -> Path | None:
    """The newest complete checkpoint saved at a step before `step`."""
    root = Path(run_dir) / "checkpoints"
    for candidate in sorted(root.glob("step-*"), reverse=True):
        if int(candidate.name.split("-")[1]) >= step:
            continue
        try:
            ckpt.verify(candidate)
            return candidate
        except ckpt.CheckpointError:
            continue
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
