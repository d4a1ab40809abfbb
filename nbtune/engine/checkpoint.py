"""Atomic checkpoints: everything needed to continue a run bit-for-bit, or nothing at all.

Layout of `<run>/checkpoints/step-000120/`:
    model.safetensors   all weights (tied weights stored once)
    grads.safetensors   gradients accumulated so far, only when saved inside an accumulation window
    state.pt            optimizer, scheduler, scaler state (torch.save; loads with weights_only=True)
    rng-rank<r>.pt      each process's RNG states
    trainer_state.json  position, edit log, current hyperparameters, config and dataset fingerprint
    manifest.json       SHA-256 and size of every file above; written last

The directory is written under a temporary name beside its final one and renamed into place, so a crash
never leaves a directory that looks complete. A directory without a valid manifest is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, corrupt, or made for a different run; the message says which file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def finalize(staging: Path, final: Path) -> Path:
    """Hash every file into the manifest, fsync, and rename the staging dir into place atomically."""
    files = sorted(p for p in staging.iterdir() if p.is_file())
    manifest = {"format_version": FORMAT_VERSION,
                "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files}}
    for p in files:
        _fsync_file(p)
    write_json(staging / MANIFEST, manifest)
    _fsync_file(staging / MANIFEST)
    _fsync_dir(staging)
    if final.exists():
        # Replacing a checkpoint of the same step (e.g. "checkpoint now" twice): move the old one aside first.
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(final.parent)
    return final


def verify(path: Path) -> dict:
    """Check every file against the manifest; return the trainer state. Raises CheckpointError naming the file,
    with the expected and actual SHA-256 for a damaged one, and the previous complete checkpoint to use instead.

    Example:
        >>> verify(Path("runs/demo/checkpoints/step-000120"))["state"]["step"]   # doctest: +SKIP
        120
    """
    path = Path(path)
    try:
        return _verify(path)
    except CheckpointError as exc:
        previous = _previous_complete(path)
        if previous is None:
            raise
        raise CheckpointError(f"{exc}\nThe previous complete checkpoint is {previous} (step "
                              f"{_verify(previous)['state']['step']}): resume from it with "
                              f"Run.resume({str(previous)!r}).") from None


def _verify(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is incomplete (was the save interrupted?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{manifest_path}: not valid JSON ({exc})") from None
    for name, meta in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the manifest but missing")
        size = file.stat().st_size
        actual = sha256_file(file)
        if size != meta["bytes"] or actual != meta["sha256"]:
            raise CheckpointError(
                f"{file}: SHA-256 {actual} ({size} bytes) does not match the {meta['sha256']} ({meta['bytes']} "
                f"bytes) recorded in {MANIFEST}: the file is corrupt or truncated")
    for required in ("model.safetensors", "state.pt", TRAINER_STATE):
        if required not in manifest.get("files", {}):
            raise CheckpointError(f"{path}: the manifest lists no {required}")
    return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))


def _first_complete(candidates) -> Path | None:
    """The first candidate directory that verifies (the caller orders them newest first)."""
    for candidate in candidates:
        try:
            _verify(candidate)
            return candidate
        except CheckpointError:
            continue
    return None


def _previous_complete(path: Path) -> Path | None:
    """The newest complete sibling checkpoint older than `path` (only looked for when `path` failed)."""
    return _first_complete(sorted((p for p in path.parent.glob("step-*") if p.name < path.name), reverse=True))


def moved_aside_name(path: Path) -> str:
    """`.old-step-000015-4242` (a complete checkpoint `finalize` moved aside to replace it) -> `step-000015`."""
    return path.name[len(".old-"):].rsplit("-", 1)[0]


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under `run_dir/checkpoints` (incomplete ones are skipped). A checkpoint that
    a crash left moved aside in the middle of being replaced by one of the same step counts too (it is complete;
    `tidy` renames it back). Read-only: safe while another process saves."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    candidates = [(p.name, 1, p) for p in root.glob("step-*")]
    candidates += [(moved_aside_name(p), 0, p) for p in root.glob(".old-step-*")]
    return _first_complete(p for _, _, p in sorted(candidates, key=lambda c: c[:2], reverse=True))


def tidy(root: Path) -> dict[Path, Path]:
    """Clear what interrupted saves left under `root` (a checkpoints dir): delete `.tmp-*` staging directories,
    and put back a checkpoint moved aside as `.old-step-N-PID` unless a complete `step-N` replaced it.
    Returns {moved-aside path: where it is now}. Call it only when no save is in progress: on resume, or after
    this process's own save was renamed."""
    for path in sorted(Path(root).glob(".tmp-*")):
        shutil.rmtree(path, ignore_errors=True)
    restored: dict[Path, Path] = {}
    for old in sorted(Path(root).glob(".old-step-*")):
        target = old.parent / moved_aside_name(old)
        if _first_complete([old]) is None or _first_complete([target]) is not None:
            shutil.rmtree(old, ignore_errors=True)  # damaged, or its replacement is complete
        else:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(old, target)
            _fsync_dir(old.parent)
            restored[old] = target
    return restored


def prune(run_dir: Path, keep: int | None) -> None:
    """Delete all but the newest `keep` step checkpoints, and staging dirs left by interrupted saves."""
    root = Path(run_dir) / "checkpoints"
    if keep is None or not root.is_dir():
        return
    tidy(root)  # called after our own staging dir was renamed: these are from crashes
    complete = sorted(root.glob("step-*"))
    for old in complete[:-keep] if keep > 0 else complete:
        shutil.rmtree(old, ignore_errors=True)


# ---- RNG ----
def rng_state() -> dict:
    """Python, NumPy and torch RNG states in types that torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_torch(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers: a crafted pickle cannot run code. There is no
    fallback to weights_only=False, and torch older than 2.6 is refused (CVE-2025-32434 lets a file run code
    through torch.load even with weights_only=True there). Errors are CheckpointErrors naming the file.

    Example:
        >>> load_torch(Path("runs/demo/checkpoints/step-000120/state.pt"))["scheduler"]["last_epoch"]  # doctest: +SKIP
        120
    """
    from torch.torch_version import TorchVersion
    if TorchVersion(torch.__version__) < (2, 6):
        raise CheckpointError(f"{path}: refusing torch.load on torch {torch.__version__}: before 2.6 a crafted file "
                              "can run code even with weights_only=True (CVE-2025-32434). Upgrade torch to >= 2.6; "
                              "weights in .safetensors files are not affected.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        cause = next((line.strip() for line in str(exc).splitlines() if "Unpickler error" in line),
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise CheckpointError(f"{path}: unsafe pickle: weights-only load failed ({cause}). nbtune writes only "
                              "tensors and plain values here and never retries with weights_only=False; "
                              "this file was not written by nbtune or was altered.") from None
    except (RuntimeError, EOFError, ValueError) as exc:  # torn zip archives, truncated pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch file ({first})") from None


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter's bytes, in name order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
