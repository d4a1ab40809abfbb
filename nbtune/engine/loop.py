"""The training loop, readable top to bottom.

One optimizer step = `gradient_accumulation_steps` micro-batches (fewer at the end of an epoch). Between
micro-batches the loop polls Control, so pause/stop/checkpoint act within one micro-batch. Metrics stay on
the device as tensors and are read to the host every `sync_every_n_steps` steps, so a CUDA run does not
stall on a `.item()` each step. The guard (nbtune.engine.guard) skips non-finite steps on the device, reviews
the steps at each flush (halt, spike rollback), and halves the micro-batch after an out-of-memory error.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from nbtune.engine import tasks
from nbtune.engine.batching import eval_batches
from nbtune.engine.guard import GuardState, NoBatchSizeFitsError, is_out_of_memory, release


@dataclass
class TrainState:
    """Where the run is. Saved in checkpoints; everything else about the position is derived from it."""
    step: int = 0                 # optimizer steps done
    epoch: int = 0                # current epoch (0-based)
    batch_index: int = 0          # next micro-batch in this epoch's batch list
    micro_step: int = 0           # micro-batches already accumulated in the current window
    window_loss: float = 0.0      # sum of loss/window_len over those micro-batches (for the step's log line)
    window_figures: dict = field(default_factory=dict)  # the same for the methods' figures
    samples_seen: int = 0
    tokens_seen: int = 0
    status: str = "ready"         # ready | running | paused | stopped | finished | error | diverged at step N
    guard: GuardState = field(default_factory=GuardState)  # skipped steps, rollbacks, loss EMA, OOM micro-batch

    def __post_init__(self) -> None:
        if isinstance(self.guard, dict):  # read back from trainer_state.json
            self.guard = GuardState(**self.guard)


@dataclass
class _Pending:
    """Step records whose numbers are still device tensors, flushed in one host transfer."""
    records: list[dict] = field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    since: float = field(default_factory=time.perf_counter)


def autocast(run) -> contextlib.AbstractContextManager:
    dtype = run.precision.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=dtype)


def train(run) -> str:
    """Run until the planned steps are done or Control stops it. Returns the final status.

    An out-of-memory error leaves the loop with its traceback's frames cleared: a notebook keeps the last error,
    and the frames of the failed step would otherwise keep its (CUDA) tensors alive until the kernel restarts."""
    try:
        return _train(run)
    except RuntimeError as exc:  # torch.OutOfMemoryError and NoBatchSizeFitsError are RuntimeErrors
        if isinstance(exc, NoBatchSizeFitsError) or is_out_of_memory(exc):
            release(exc)
        raise


def _train(run) -> str:
    """The loop itself, from wherever `run.state` is (a fresh run, a resume, a rollback's checkpoint)."""
    st, cfg, guard = run.state, run.cfg, run.guard
    accum = cfg.train.gradient_accumulation_steps
    pending = _Pending()
    # Kept on the run so a mid-window checkpoint can save it; read to the host only then.
    run.window_loss = window_loss = torch.tensor(st.window_loss, device=run.device)
    run.window_figures = window_figures = {k: torch.tensor(v, device=run.device)
                                           for k, v in st.window_figures.items()}
    run.model.train()
    _method_steps(run, start=True)  # the trainable set for this step (a resumed run starts where the first one was)
    while st.step < run.total_steps:
        batches = guard.plan(run, st.epoch)  # the epoch's batches, less any a spike rollback left out
        while st.batch_index < len(batches) and st.step < run.total_steps:
            if run.service_control():
                _sync(run, pending)
                return "stopped"
            if run.replan:  # a live sampler option (domain_mix.ratio) changed the batches from here on
                batches, run.replan = guard.plan(run, st.epoch), False
            window_len = min(accum, len(batches) - (st.batch_index - st.micro_step))
            last_micro = st.micro_step + 1 == window_len
            rows = batches[st.batch_index]
            try:
                loss, figures, n_tokens = forward_backward(run, rows, window_len, last_micro)
            except Exception as exc:  # noqa: BLE001 - out of memory: halve the micro-batch, retry; others raise
                if not guard.back_off(run, exc):
                    raise
                _restart_window(run, batches, pending)
                continue
            pending.samples += len(rows)
            pending.tokens += n_tokens
            st.samples_seen += len(rows)
            st.tokens_seen += n_tokens
            window_loss += loss
            for name, value in figures.items():  # method figures: the window's mean, still on the device
                window_figures[name] = window_figures[name] + value if name in window_figures else value
            st.batch_index += 1
            st.micro_step += 1
            if not last_micro:
                continue

            record = optimizer_step(run, window_loss)
            st.step += 1
            _method_steps(run)
            st.micro_step = 0
            record.update(kind="step", step=st.step, epoch=st.epoch + st.batch_index / len(batches),
                          loss=window_loss.clone(), methods=window_figures)
            guard.note_step(st.step, record.pop("skip"), record["loss"], st.epoch,
                            batches[st.batch_index - window_len:st.batch_index])
            window_loss.zero_()
            run.window_figures = window_figures = {}
            pending.records.append(record)
            if st.step % cfg.train.sync_every_n_steps == 0 or st.step == run.total_steps:
                _sync(run, pending)
            _after_step(run, pending, epoch_end=False)
            if guard.verdict and (outcome := _obey_guard(run)):
                return outcome
        if st.batch_index >= len(batches):
            st.epoch += 1
            st.batch_index = 0
            _method_steps(run)  # epoch-based schedules change at the boundary
            _sync(run, pending)
            _after_step(run, pending, epoch_end=True)
            if guard.verdict and (outcome := _obey_guard(run)):
                return outcome
    _sync(run, pending)
    return "finished"


def _obey_guard(run) -> str | None:
    """Act on the guard's verdict from the last flush. Too many skips end the run as diverged (the status names
    the step). A spike rolls back to a checkpoint and training goes on from there, through a fresh `_train` as
    after a resume; with no checkpoint before the spike it goes on where it is (None)."""
    if run.guard.verdict == "halt":
        run.guard.verdict = None  # taken: a deliberate restart goes on (and halts again on the next skip)
        return run.guard.status(run)
    return _train(run) if run.guard.roll_back(run) else None


def _restart_window(run, batches: list[list[int]], pending: _Pending) -> None:
    """After an out-of-memory backoff: drop the window's gradients, loss and counts, and start it again from its
    first micro-batch at the smaller micro-batch size (the data is the same)."""
    st, data = run.state, run.data.rows["train"]
    start = st.batch_index - st.micro_step
    for rows in batches[start:st.batch_index]:  # micro-batches already counted in this window
        tokens = sum(len(data[i]["input_ids"]) for i in rows)  # what attention_mask.sum() counted
        st.samples_seen -= len(rows)
        st.tokens_seen -= tokens
        pending.samples, pending.tokens = max(0, pending.samples - len(rows)), max(0, pending.tokens - tokens)
    st.batch_index, st.micro_step = start, 0
    run.optimizer.zero_grad(set_to_none=True)
    run.window_loss.zero_()
    run.window_figures.clear()


def _method_steps(run, start: bool = False) -> None:
    """Each method's on_step hook; a record it returns (e.g. an unfreeze edit) goes to the sinks. Live
    freeze/unfreeze edits from the log are applied on top of any schedule change (and at the start, so a
    resumed run trains exactly the parameters the first one did)."""
    changed = start
    for method in getattr(run, "methods", ()):
        record = method.on_step(run.state, run.optimizer)
        if record:
            run.control.edits.append(record)
            run.emit(record)
            changed = True
    if changed:
        for edit in run.control.edits:
            if edit.get("name") in ("freeze", "unfreeze") and edit.get("target"):
                run.apply_trainable_edit(edit["name"], edit["target"])


def training_loss(run, batch: dict, rows: list[int]) -> tuple[torch.Tensor, dict]:
    """The task loss plus every method's loss terms. Returns the total and the figures to log per step
    (each term, and whatever a method logged through its context)."""
    methods = getattr(run, "methods", ())
    if not methods:
        return compute_loss(run, batch), {}
    from nbtune.methods.base import LossContext
    outputs = {}
    loss = compute_loss(run, batch, outputs)
    ctx = LossContext(model=run.model, raw_model=run.raw_model, task=run.cfg.task, step=run.state.step, loss=loss,
                      rows=list(rows), label_names=run.data.label_names,
                      class_weights=getattr(run, "class_weights", None))
    terms = {}
    for method in methods:
        for name, term in method.loss_terms(batch, outputs["out"], ctx).items():
            terms[name] = terms[name] + term if name in terms else term
    if ctx.task_weight == 0.0 and terms:  # a method replaced the task loss (multitask): no zero backward
        total = sum(terms.values())
    else:
        total = loss * ctx.task_weight if ctx.task_weight != 1.0 else loss
        for term in terms.values():
            total = total + term
    figures = {**{f"loss/{k}": v for k, v in terms.items()}, **ctx.metrics}
    if terms:
        figures["loss/task"] = loss
    return total, figures


def forward_backward(run, rows: list[int], window_len: int, last_micro: bool) -> tuple[torch.Tensor, dict, int]:
    """Forward and backward for one planned micro-batch. Returns its share of the window loss (detached), its
    method figures (the same share) and its token count. After an out-of-memory backoff the rows run as chunks of
    the guard's micro-batch size, each loss weighted by the chunk's share, so the gradient is the whole batch's.

    Example: ``loss, figures, n_tokens = forward_backward(run, [0, 1, 2, 3], window_len=1, last_micro=True)``
    """
    chunks = run.guard.chunks(run, rows)  # [(rows, 1.0)] unless a backoff lowered the micro-batch size
    total, figures, n_tokens = None, {}, 0
    for i, (part, weight) in enumerate(chunks):
        run.guard.attempting = len(part)
        batch = run.collate(part, run.data.rows["train"])
        n_tokens += int(batch["attention_mask"].sum())  # counted on the host, before the copy
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}  # each (B, T)
        # DDP all-reduces gradients only on the window's last backward.
        last = last_micro and i == len(chunks) - 1
        sync = contextlib.nullcontext() if last else run.accelerator.no_sync(run.model)
        with sync:
            with autocast(run):
                loss, parts = training_loss(run, batch, part)
                loss = loss / window_len if weight == 1.0 else loss * weight / window_len
            if run.scaler is not None:
                run.scaler.scale(loss).backward()
            else:
                loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
        for name, value in parts.items():  # the window's mean, still on the device
            value = torch.as_tensor(value, device=run.device).detach().float() / window_len
            value = value if weight == 1.0 else value * weight
            figures[name] = figures[name] + value if name in figures else value
    return total, figures, n_tokens


def compute_loss(run, batch: dict, keep: dict | None = None) -> torch.Tensor:
    """The model's own loss, or a class-weighted cross-entropy when the run has class weights."""
    weights = getattr(run, "class_weights", None)
    if weights is None:
        out = run.model(**batch)
        if keep is not None:
            keep["out"] = out
        return out.loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = run.model(**inputs)
    if keep is not None:
        keep["out"] = out
    logits = out.logits
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=weights)


def optimizer_step(run, window_loss: torch.Tensor) -> dict:
    """Unscale, measure pre-clip gradient norms per group, clip, step, schedule. Returns device tensors, and
    `skip`: the guard's () bool flag (None when skipping is off); a skipped step leaves weights and optimizer
    state untouched, and the scheduler advances on every step, skipped or not."""
    opt = run.optimizer
    if run.scaler is not None:
        run.scaler.unscale_(opt)
    group_norms = {}
    for group in opt.param_groups:
        grads = [p.grad for p in group["params"] if p.grad is not None]
        if grads:
            group_norms[group["name"]] = torch.nn.utils.get_total_norm(grads)
    total = torch.nn.utils.get_total_norm(list(group_norms.values()))
    skip = run.guard.skip_flag(total, window_loss)  # on the device: no sync
    clipped = torch.zeros((), dtype=torch.bool, device=total.device)
    if run.max_grad_norm is not None:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grads_with_norm_(params, run.max_grad_norm, total)
        clipped = total > run.max_grad_norm
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}  # the LR this step uses
    if run.scaler is not None:
        run.scaler.step(opt)  # GradScaler skips a non-finite step itself (found_inf) and lowers its scale
        run.scaler.update()
    else:
        run.guard.step(opt, skip)
    run.scheduler.step()
    opt.zero_grad(set_to_none=True)
    return {"grad_norm": total, "grad_norm_groups": group_norms, "lr": lrs, "clipped": clipped, "skip": skip}


def _sync(run, pending: _Pending) -> None:
    """The guard reviews the pending steps (it may mark records `skipped` and set a verdict), then `_flush`."""
    run.guard.review(run, pending.records)
    _flush(run, pending)


def _flush(run, pending: _Pending) -> None:
    """One host transfer for all pending step records, then hand them to the sinks.

    Under several processes every rank reaches each flush at the same step (flushes follow the step count, the
    epoch ends and the eval/save cadence, which all ranks share), so one all-gather per flush brings every
    rank's per-step losses and sample/token counts to every rank: the records then carry `loss` = the mean over
    ranks (what a 1-process run with gradient_accumulation_steps=W logs), `loss_by_rank`, `world_size`, and
    throughput summed over ranks. A 1-process record is unchanged (no extra keys)."""
    if not pending.records:
        pending.since = time.perf_counter()
        return
    elapsed = max(time.perf_counter() - pending.since, 1e-9)
    tensors = [r[k] for r in pending.records for k in ("loss", "grad_norm", "clipped")]
    tensors += [v for r in pending.records for v in r["grad_norm_groups"].values()]
    tensors += [v.reshape(()) for r in pending.records for v in r.get("methods", {}).values()]
    world = run.accelerator.num_processes
    stacked = torch.stack([t.float() for t in tensors])
    if world > 1:
        ranks = _gather_ranks(run, pending)  # (W * (n + 2),) float64: n step losses, samples, tokens per rank
        stacked = torch.cat([stacked.double(), ranks])
    values = iter(stacked.tolist())
    host = []
    for r in pending.records:
        host.append({**r, "loss": next(values), "grad_norm": next(values), "clipped": bool(next(values))})
    for h in host:
        h["grad_norm_groups"] = {g: next(values) for g in h["grad_norm_groups"]}
    for h in host:
        if h.get("methods"):
            h["methods"] = {g: next(values) for g in h["methods"]}
        else:
            h.pop("methods", None)
    samples, tokens = pending.samples, pending.tokens
    if world > 1:
        samples, tokens = _merge_ranks(host, list(values), world)
    every = run.cfg.train.log_every_n_steps
    for h in host:
        # Throughput is averaged over the flush window: per-step wall time is meaningless without a sync.
        h.update(samples_per_second=samples / elapsed, tokens_per_second=tokens / elapsed, time=time.time())
        if h["step"] % every == 0 or h["step"] == run.total_steps:
            run.emit(h)
    pending.records, pending.samples, pending.tokens = [], 0, 0
    pending.since = time.perf_counter()
    run.last_step_record = host[-1]


def _gather_ranks(run, pending: _Pending) -> torch.Tensor:
    """This rank's pending step losses (n,) and its sample and token counts, gathered from every rank in one
    collective. float64 keeps token counts exact; the tensor stays on the device until the caller's transfer."""
    mine = torch.cat([torch.stack([r["loss"].double() for r in pending.records]),
                      torch.tensor([pending.samples, pending.tokens], dtype=torch.float64, device=run.device)])
    return run.accelerator.gather(mine)  # (W * (n + 2),), rank-major


def _merge_ranks(host: list[dict], gathered: list[float], world: int) -> tuple[int, int]:
    """Put every rank's loss into the step records (mean over ranks as `loss`); returns the summed counts."""
    n = len(host)
    by_rank = [gathered[r * (n + 2):(r + 1) * (n + 2)] for r in range(world)]
    for i, h in enumerate(host):
        losses = [row[i] for row in by_rank]
        h.update(loss=sum(losses) / world, loss_by_rank=losses, world_size=world)
    return int(sum(row[n] for row in by_rank)), int(sum(row[n + 1] for row in by_rank))


def _after_step(run, pending: _Pending, epoch_end: bool) -> None:
    """Evaluate and checkpoint on the configured cadence (epoch ends when no step cadence is set)."""
    t, step = run.cfg.train, run.state.step
    every_eval = t.eval_every_n_steps
    due_eval = (epoch_end and every_eval is None) or (not epoch_end and every_eval and step % every_eval == 0)
    due_save = not epoch_end and t.save_every_n_steps and step % t.save_every_n_steps == 0
    if (due_eval or due_save) and not epoch_end:
        _sync(run, pending)
    if run.guard.verdict:  # a rollback or halt comes first: no evaluation or checkpoint of that state
        return
    if due_eval and step < run.total_steps:  # the final evaluation is done by Run after the loop
        run.evaluate("validation")
    if due_save and run.guard.safe_to_save(run):
        run.save_checkpoint()
    if due_eval or due_save:
        pending.since = time.perf_counter()  # keep eval/save time out of the throughput figures


@torch.no_grad()
def evaluate(run, split: str) -> dict:
    """Loss and task metrics on one split; every rank scores its shard and rank 0 combines them."""
    rows = run.data.rows[split]
    lengths = [len(r["input_ids"]) for r in rows]
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    parts, loss_sum, count = [], 0.0, 0
    run.model.eval()
    for idx in eval_batches(lengths, run.cfg.train.batch_size * 2, rank, world):
        batch = {k: v.to(run.device) for k, v in run.collate(idx, rows).items()}
        with autocast(run):
            out = run.model(**batch)
        labels = batch["labels"]
        logits = out.logits
        if getattr(out, "predictions", None) is not None:  # a decoding head (CRF): its best path is the answer
            logits = torch.nn.functional.one_hot(out.predictions.clamp(min=0), logits.shape[-1]).float()
        if run.cfg.task == "causal-lm":
            n = int((labels[:, 1:] != tasks.IGNORE).sum())  # the model shifts labels by one
        elif run.cfg.task == "token-classification":
            n = int((labels != tasks.IGNORE).sum())
        else:
            n = labels.shape[0]
        loss_sum += float(out.loss) * n
        count += n
        parts.append(tasks.score(run.cfg.task, logits.float(), labels.cpu(), run.data.label_names))
    run.model.train()
    if world > 1:
        from accelerate.utils import gather_object
        gathered = gather_object([(parts, loss_sum, count)])
        parts = [p for g in gathered for p in g[0]]
        loss_sum, count = sum(g[1] for g in gathered), sum(g[2] for g in gathered)
    return tasks.summarize(run.cfg.task, parts, loss_sum, count)
