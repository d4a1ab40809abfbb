"""Save and restore a Run's full state through the atomic checkpoint format in checkpoint.py."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from nbtune.config import config_diff
from nbtune.engine import checkpoint as ckpt


def _barrier(run) -> None:
    if run.accelerator.num_processes > 1:
        run.accelerator.wait_for_everyone()


def save_run_state(run) -> Path:
    """Rank 0 writes weights and optimizer state; every rank writes its RNG and any partial gradients. A failed
    write (disk full, ...) on any rank removes the staging directory and raises CheckpointError on every rank,
    naming the step kept: the ranks agree on the outcome instead of waiting at a barrier for a rank that failed."""
    st, acc = run.state, run.accelerator
    st.window_loss = float(run.window_loss)
    st.window_figures = {k: float(v) for k, v in getattr(run, "window_figures", {}).items()}
    final = run.run_dir / "checkpoints" / f"step-{st.step:06d}"
    staging = final.parent / f".tmp-{final.name}"  # same name on every rank
    if acc.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier(run)
    try:
        failed = _failures(run, _attempt(_write_files, run, staging))
        if not failed:
            failed = _failures(run, _attempt(ckpt.finalize, staging, final) if acc.is_main_process else None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # an interrupt: never leave a partial step directory behind
        raise
    if failed:
        if acc.is_main_process:  # every rank is past its writes (they all reached the agreement)
            shutil.rmtree(staging, ignore_errors=True)
        kept = ckpt.latest(run.run_dir)
        keeping = f"kept step {int(kept.name.split('-')[1])} ({kept})" if kept else "no earlier checkpoint to keep"
        reasons = "; ".join(why if acc.num_processes == 1 else f"rank {rank}: {why}" for rank, why, _ in failed)
        raise ckpt.CheckpointError(f"checkpoint save failed: {reasons} — {keeping}; the step-{st.step} save was "
                                   f"removed") from failed[0][2]
    if acc.is_main_process:
        ckpt.prune(run.run_dir, run.cfg.train.save_total_limit)
    _barrier(run)
    return final


def _attempt(fn, *args) -> Exception | None:
    """Run one part of a save; the error it raised, or None."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - every rank must reach the agreement that follows, whatever failed
        return exc
    return None


def _failures(run, error: Exception | None) -> list[tuple[int, str, Exception | None]]:
    """Every rank's error from the same part of a save, known to all ranks after one gather: (rank, reason, the
    error where it is this rank's). With one process, just this one."""
    reason = None if error is None else (error.strerror if isinstance(error, OSError) and error.strerror
                                         else (str(error).strip().splitlines() or [type(error).__name__])[0])
    if run.accelerator.num_processes == 1:
        return [] if error is None else [(0, reason, error)]
    from accelerate.utils import gather_object
    rank = run.accelerator.process_index
    return [(r, why, error if r == rank else None) for r, why in enumerate(gather_object([reason])) if why is not None]


def _write_files(run, staging: Path) -> None:
    st, acc = run.state, run.accelerator
    rank = acc.process_index
    torch.save(ckpt.rng_state(), staging / f"rng-rank{rank}.pt")
    if st.micro_step > 0:
        grads = {n: p.grad.detach().cpu().contiguous() for n, p in run.raw_model.named_parameters()
                 if p.grad is not None}
        save_file(grads, str(staging / f"grads-rank{rank}.safetensors"))
    if acc.is_main_process:
        save_model(run.raw_model, str(staging / "model.safetensors"))
        torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                    "scaler": run.scaler.state_dict() if run.scaler is not None else None},
                   staging / "state.pt")
        ckpt.write_json(staging / ckpt.TRAINER_STATE, {
            "format_version": ckpt.FORMAT_VERSION, "state": dataclasses.asdict(st),
            "max_grad_norm": run.max_grad_norm, "edits": run.control.edits, "total_steps": run.total_steps,
            "world_size": acc.num_processes, "precision": run.precision.name,
            "config": run.cfg.to_dict(), "config_fingerprint": run.cfg.fingerprint(),
            "dataset_fingerprint": run.dataset_fingerprint, "label_names": run.data.label_names,
            "methods": [m.state_dict() for m in getattr(run, "methods", ())]})


def check_compatible(run, saved: dict, path: Path) -> None:
    """Refuse a checkpoint made for another config, dataset, label set or process count; list every difference."""
    # Through RunConfig first: a checkpoint from before a config field existed holds that field's default.
    from nbtune.config import RunConfig
    diff = config_diff(RunConfig.from_dict(saved["config"]).to_dict(), run.cfg.to_dict())
    lines = [f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in diff.items()]
    what = ["a different config"] if diff else []
    old_labels, new_labels = saved.get("label_names"), run.data.label_names
    if old_labels is not None and old_labels != new_labels:
        lines.append(f"  labels: checkpoint has {len(old_labels)} {old_labels}, this run has {len(new_labels)} "
                     f"{new_labels}")
    if saved["dataset_fingerprint"] != run.dataset_fingerprint:
        what.append("different training data")
        lines.append(f"  training data: dataset fingerprint {saved['dataset_fingerprint'][:12]} in the checkpoint, "
                     f"{run.dataset_fingerprint[:12]} for {run.data_where} (rows or labels changed)")
    if saved["world_size"] != run.accelerator.num_processes:
        what.append("another process count")
        lines.append(f"  processes: checkpoint has {saved['world_size']}, this run has "
                     f"{run.accelerator.num_processes}, so its data order would differ")
    if lines:
        raise ckpt.CheckpointError(f"{path} was saved with {' and '.join(what) or 'other labels'}; differing keys:\n"
                                   + "\n".join(lines) + "\nResume with the checkpoint's config and data, or start "
                                   "a new run. Nothing was loaded and no batch was skipped.")


STATE_KEYS = ("optimizer", "scheduler", "scaler")


def load_run_state(run, path: Path) -> None:
    """Restore a run from a verified checkpoint. Every file is read and checked before the run is changed, so a
    bad file (a missing scheduler state, an RNG state torch refuses, a damaged safetensors header) raises a
    CheckpointError naming it and leaves the run as it was, never half-restored."""
    saved = ckpt.verify(path)
    check_compatible(run, saved, path)
    if run.accelerator.is_main_process:  # left by saves a crash interrupted; no save runs while we resume
        ckpt.tidy(path.parent)
    if path.name.startswith(".old-"):  # a checkpoint a crash left moved aside: rank 0 just put it back in place
        run.accelerator.wait_for_everyone()
        path = path.parent / ckpt.moved_aside_name(path)
    rank = run.accelerator.process_index
    states = ckpt.load_torch(path / "state.pt")
    missing = [k for k in STATE_KEYS if not isinstance(states, dict) or k not in states]
    if missing:
        raise ckpt.CheckpointError(f"{path / 'state.pt'}: no {', '.join(missing)} state (expected {list(STATE_KEYS)}); "
                                   "resuming without it would not continue where the run stopped (without the "
                                   "scheduler the LR warmup would start again), so nbtune refuses")
    rng_file = path / f"rng-rank{rank}.pt"
    rng = ckpt.load_torch(rng_file)
    # Applied now to fail before the run is touched, and again last so nothing in between draws from it.
    _restore_rng(rng, rng_file)
    grads = None
    if saved["state"]["micro_step"] > 0:
        grads = _safetensors(path / f"grads-rank{rank}.safetensors", lambda f: load_file(f, device=str(run.device)))
    _safetensors(path / "model.safetensors",
                 lambda f: load_model(run.raw_model, f, strict=True, device=str(run.device)))
    run.optimizer.load_state_dict(states["optimizer"])
    run.scheduler.load_state_dict(states["scheduler"])
    if run.scaler is not None and states["scaler"] is not None:
        run.scaler.load_state_dict(states["scaler"])
    st = saved["state"]
    run.state = type(run.state)(**{**st, "status": "ready"})
    run.window_loss = torch.tensor(run.state.window_loss, device=run.device)
    for name, p in run.raw_model.named_parameters():
        if grads is not None and name in grads:
            p.grad = grads[name].to(p.dtype)
    run.max_grad_norm = saved["max_grad_norm"]
    for method, state in zip(getattr(run, "methods", ()), saved.get("methods", [])):
        method.load_state_dict(state)
    run.control.edits = list(saved["edits"])
    run.control.drop_applied(run.control.edits, run.state.step)
    _restore_rng(rng, rng_file)


def _restore_rng(rng, file: Path) -> None:
    try:
        ckpt.set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise ckpt.CheckpointError(f"{file}: the RNG state cannot be restored ({type(exc).__name__}: {exc}); "
                                   "without it dropout and sampling would differ from the original run, so nbtune "
                                   "refuses to resume") from None


def _safetensors(file: Path, read):
    """`read(str(file))`, with safetensors' format errors turned into a CheckpointError naming the file."""
    try:
        return read(str(file))
    except (SafetensorError, OSError) as exc:
        raise ckpt.CheckpointError(f"{file}: not a valid safetensors file ({exc})") from None
