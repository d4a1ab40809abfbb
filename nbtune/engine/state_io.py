"""Save and restore a Run's full state through the atomic checkpoint format in checkpoint.py."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from nbtune.config import config_diff
from nbtune.engine import checkpoint as ckpt


def _barrier(run) -> None:
    if run.accelerator.num_processes > 1:
        run.accelerator.wait_for_everyone()


def save_run_state(run) -> Path:
    """Rank 0 writes weights and optimizer state; every rank writes its RNG and any partial gradients."""
    st, acc = run.state, run.accelerator
    st.window_loss = float(run.window_loss)
    st.window_figures = {k: float(v) for k, v in getattr(run, "window_figures", {}).items()}
    final = run.run_dir / "checkpoints" / f"step-{st.step:06d}"
    staging = final.parent / f".tmp-{final.name}"  # same name on every rank
    if acc.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier(run)
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
    _barrier(run)
    if acc.is_main_process:
        ckpt.finalize(staging, final)
        ckpt.prune(run.run_dir, run.cfg.train.save_total_limit)
    _barrier(run)
    return final


def check_compatible(run, saved: dict, path: Path) -> None:
    """Refuse a checkpoint made for another config, dataset or process count; list what differs."""
    diff = config_diff(saved["config"], run.cfg.to_dict())
    if diff:
        lines = "\n".join(f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in diff.items())
        raise ckpt.CheckpointError(f"{path} was saved with a different config; differing keys:\n{lines}")
    if saved["dataset_fingerprint"] != run.dataset_fingerprint:
        raise ckpt.CheckpointError(
            f"{path} was saved with different training data (dataset fingerprint "
            f"{saved['dataset_fingerprint'][:12]} vs {run.dataset_fingerprint[:12]} for {run.data_where})")
    if saved["world_size"] != run.accelerator.num_processes:
        raise ckpt.CheckpointError(f"{path} was saved by {saved['world_size']} processes; this run has "
                                   f"{run.accelerator.num_processes}, so its data order would differ")


def load_run_state(run, path: Path) -> None:
    saved = ckpt.verify(path)
    check_compatible(run, saved, path)
    rank = run.accelerator.process_index
    load_model(run.raw_model, str(path / "model.safetensors"), strict=True, device=str(run.device))
    states = ckpt.load_torch(path / "state.pt")
    run.optimizer.load_state_dict(states["optimizer"])
    run.scheduler.load_state_dict(states["scheduler"])
    if run.scaler is not None and states["scaler"] is not None:
        run.scaler.load_state_dict(states["scaler"])
    st = saved["state"]
    run.state = type(run.state)(**{**st, "status": "ready"})
    run.window_loss = torch.tensor(run.state.window_loss, device=run.device)
    if run.state.micro_step > 0:
        grads = load_file(str(path / f"grads-rank{rank}.safetensors"), device=str(run.device))
        for name, p in run.raw_model.named_parameters():
            if name in grads:
                p.grad = grads[name].to(p.dtype)
    run.max_grad_norm = saved["max_grad_norm"]
    for method, state in zip(getattr(run, "methods", ()), saved.get("methods", [])):
        method.load_state_dict(state)
    run.control.edits = list(saved["edits"])
    run.control.drop_applied(run.control.edits, run.state.step)
    ckpt.set_rng_state(ckpt.load_torch(path / f"rng-rank{rank}.pt"))
