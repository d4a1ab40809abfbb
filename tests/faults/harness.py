"""Fault injection for nbtune's training, checkpoint and resume code, reusable by any test:
  * training phases in a child process (a fork, or a fresh interpreter) that trace every micro-batch's sample
    indices and every optimizer step's LRs, and SIGKILL themselves at an exact (step, micro-batch) position;
  * named fault points in the checkpoint writer (`os._exit(137)` before / half-way through / after each file,
    around the directory rename and deletes), and ENOSPC half-way through a file;
  * damaged files (truncated, flipped bytes) and a re-signed manifest, to reach the loaders behind the SHA-256
    check as someone who controls the directory can; a pickle whose unpickling creates a marker file; malformed
    safetensors files.

Example:
    >>> killed = run_phase({"overrides": OVERRIDES, "run_dir": str(tmp / "run"), "kill_at": [13, 0]})
    >>> killed.returncode, killed.trace.steps[-1]     # a forked child trained 13 steps, then SIGKILLed itself
    (-9, 13)

As a script (`python tests/faults/harness.py '<json spec>'`) it runs `phase(spec)` and prints its summary.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

KILLED = -signal.SIGKILL  # a child's return code after SIGKILL, as subprocess reports it
CRASH_EXIT = 137          # what fault points exit with (the shell's code for a SIGKILLed process)


# ------------------------------------------------------------------------------------------- child processes
@dataclass
class Forked:
    returncode: int          # 0, the child's exit code, or -signal
    value: Any = None        # what the function returned (JSON-able), when it returned
    error: str = ""          # the child's traceback, when it raised


def in_fork(fn: Callable[[], Any], timeout_s: float = 300.0) -> Forked:
    """Run `fn()` in a forked child and wait for it. The child shares nothing with the parent afterwards, dies
    without cleanup when it is killed or calls os._exit, and never runs the parent's atexit or pytest teardown.
    Note that Python reseeds its global `random` in every forked child (torch's and NumPy's RNGs are inherited).

    Example:
        >>> in_fork(lambda: 6 * 7).value
        42
    """
    fd, out = tempfile.mkstemp(suffix=".json", prefix="fork-")
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            value = fn()
            Path(out).write_text(json.dumps({"value": value}))
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent
            Path(out).write_text(json.dumps({"error": traceback.format_exc()}))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"forked child {pid} ran longer than {timeout_s} s")
        time.sleep(0.005)
    text = Path(out).read_text()
    os.unlink(out)
    report = json.loads(text) if text else {}
    return Forked(os.waitstatus_to_exitcode(status), report.get("value"), report.get("error", ""))


# ------------------------------------------------------------------------------------------- training phases
@dataclass
class Trace:
    """What one phase trained, in order: read from the file it wrote line by line (so a killed phase has one)."""
    batches: list[list[int]] = field(default_factory=list)   # sample indices of each training micro-batch
    steps: list[int] = field(default_factory=list)           # optimizer steps run (1-based step numbers)
    lrs: list[list[float]] = field(default_factory=list)     # every param group's LR at each of those steps

    def batches_before(self, step: int, micro_step: int = 0) -> list[list[int]]:
        """The micro-batches run before position (optimizer step, micro-batch in window): what a checkpoint saved
        there covers."""
        return [e["mb"] for e in self._entries if "mb" in e and (e["step"], e["micro"]) < (step, micro_step)]

    _entries: list[dict] = field(default_factory=list, repr=False)


@dataclass
class Phase:
    returncode: int
    result: dict | None       # phase()'s summary; None when the child was killed
    trace: Trace
    error: str = ""


def read_trace(path: Path) -> Trace:
    trace = Trace()
    if not Path(path).exists():
        return trace
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        trace._entries.append(entry)
        if "mb" in entry:
            trace.batches.append(entry["mb"])
        else:
            trace.steps.append(entry["opt"])
            trace.lrs.append(entry["lr"])
    return trace


def trace_run(run, path: Path, kill_at: tuple[int, int] | None = None) -> io.TextIOBase:
    """Record `run`'s training micro-batches and optimizer steps to `path` (one JSON line each, written through
    at once), and SIGKILL the process when the loop reaches (optimizer step, micro-batch in window) `kill_at`,
    i.e. after `kill_at[0]` optimizer steps and `kill_at[1]` micro-batches of the next window. Returns the open
    trace file; close it when the run is done.

    Example:
        >>> trace_run(run, tmp / "trace.jsonl"); run.start(); read_trace(tmp / "trace.jsonl").steps[:3]
        [1, 2, 3]
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered: every line reaches the OS at once
    collate, service = run.collate, run.service_control

    def traced_collate(indices, rows):
        if rows is run.data.rows["train"]:  # evaluation batches are not part of the training stream
            out.write(json.dumps({"mb": list(indices), "step": run.state.step, "micro": run.state.micro_step}) + "\n")
        return collate(indices, rows)

    def killing_service_control():
        if kill_at is not None and (run.state.step, run.state.micro_step) == tuple(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return service()

    opt = run.optimizer
    step = opt.step

    @functools.wraps(step)
    def traced_step(*args, **kwargs):
        out.write(json.dumps({"opt": run.state.step + 1, "lr": [g["lr"] for g in opt.param_groups]}) + "\n")
        return step(*args, **kwargs)

    run.collate, run.service_control, opt.step = traced_collate, killing_service_control, traced_step
    return out


def phase(spec: dict) -> dict:
    """Build (or resume) a run from `spec`, schedule its edits and stop, trace it, train. Keys: overrides, run_dir,
    resume (checkpoint or run dir), edits [[step, name, value]], stop_at [step, micro], kill_at [step, micro],
    trace (path), dataset (optional, in-process only)."""
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    torch.set_num_threads(1)  # the same arithmetic as the test process (conftest), so results compare bit for bit
    cfg = RunConfig().with_overrides(spec["overrides"])
    if spec.get("resume"):
        run = Run.resume(spec["resume"], cfg, spec.get("dataset"))
    else:
        run = Run(cfg, spec.get("dataset"), run_dir=spec["run_dir"])
    start_step = run.state.step
    logged = {(e["step"], e["name"]) for e in run.control.edits}  # a resumed run's edit log, from its checkpoint
    for step, name, value in spec.get("edits", []):
        if step >= run.state.step and (step, name) not in logged:
            run.control.set(name, value, at_step=step)
    if spec.get("stop_at"):
        run.control.stop(at_step=spec["stop_at"][0], at_micro_step=spec["stop_at"][1])
    with trace_run(run, Path(spec["trace"]), spec.get("kill_at")):
        run.start()
    return {"status": run.state.status, "step": run.state.step, "start_step": start_step,
            "run_dir": str(run.run_dir), "samples_seen": run.state.samples_seen}


def run_phase(spec: dict, *, fresh_interpreter: bool = False, timeout_s: float = 600.0) -> Phase:
    """`phase(spec)` in a child process: a fork of this process (cheap: nothing to import), or a fresh
    interpreter. Returns its exit code, summary and trace; a child killed by `kill_at` has returncode KILLED."""
    Path(spec["run_dir"]).parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="phase-", dir=Path(spec["run_dir"]).parent))
    spec = {**spec, "trace": str(work / "trace.jsonl")}
    if fresh_interpreter:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        out = subprocess.run([sys.executable, __file__, json.dumps(spec)], capture_output=True, text=True,
                             timeout=timeout_s, env=env)
        result = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        return Phase(out.returncode, result, read_trace(work / "trace.jsonl"), out.stderr[-3000:])
    forked = in_fork(lambda: phase(spec), timeout_s)
    return Phase(forked.returncode, forked.value, read_trace(work / "trace.jsonl"), forked.error)


# ------------------------------------------------------------------------------------- comparing final states
def final_state(run_dir: Path) -> tuple[dict, dict, dict]:
    """(weights, state.pt contents, trainer state) of the newest complete checkpoint under `run_dir`."""
    from safetensors.torch import load_file
    from nbtune.engine import checkpoint as ckpt
    path = ckpt.latest(Path(run_dir))
    assert path is not None, f"no complete checkpoint under {run_dir}"
    return load_file(str(path / "model.safetensors")), ckpt.load_torch(path / "state.pt"), ckpt.verify(path)


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| over every tensor in two equally shaped nests of dicts/lists; other leaves must be equal."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        return max([max_abs_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([max_abs_diff(x, y) for x, y in zip(a, b)] or [0.0])
    assert a == b, (a, b)
    return 0.0


def step_losses(run_dir: Path) -> dict[int, float]:
    """Per-step training loss from metrics.jsonl; a resumed run appends to the same file, so later lines win."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r.get("kind") == "step"}


# ------------------------------------------------------------------------------ checkpoint-writer fault points
def _writer_targets() -> list[tuple[Any, str, int, str]]:
    """(owner, attribute, position of the path argument, its keyword) of every primitive the writer writes with."""
    from nbtune.engine import checkpoint as ckpt, state_io
    return [(torch, "save", 1, "f"), (state_io, "save_file", 1, "filename"), (state_io, "save_model", 1, "filename"),
            (ckpt, "write_json", 0, "path")]


@contextlib.contextmanager
def writer_hooks(hook: Callable[[str, str, Path], None]) -> Iterator[None]:
    """Call `hook(event, kind, path)` around everything the checkpoint writer does to the file system: event is
    "before" or "after"; kind is "write" (a file), "rename" (os.replace; path = the destination) or "delete"
    (shutil.rmtree). The hook may raise or exit to inject a fault there. Restores the originals on exit."""
    saved: list[tuple[Any, str, Any]] = []

    def patch(owner, name, pos, key, kind):
        real = getattr(owner, name)

        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            path = Path(args[pos] if len(args) > pos else kwargs[key])
            hook("before", kind, path)
            out = real(*args, **kwargs)
            hook("after", kind, path)
            return out
        saved.append((owner, name, real))
        setattr(owner, name, wrapper)

    for owner, name, pos, key in _writer_targets():
        patch(owner, name, pos, key, "write")
    patch(os, "replace", 1, "dst", "rename")
    patch(shutil, "rmtree", 0, "path", "delete")
    try:
        yield
    finally:
        for owner, name, real in reversed(saved):
            setattr(owner, name, real)


@contextlib.contextmanager
def fault_points(at: str | None = None) -> Iterator[list[str]]:
    """Name every fault point the checkpoint writer passes, in order (the yielded list), and `os._exit(137)` at
    the one named `at`. Names: "before write model.safetensors", "torn write state.pt" (half the file on disk),
    "after write manifest.json", "before rename step-000150", "after rename step-000150", "before delete X",
    "torn delete X" (some of X's files gone). With at=None nothing crashes: use it to list the points.

    Example:
        >>> with fault_points() as points:            # a clean save, listing the points
        ...     run.save_checkpoint()
        >>> def crash():
        ...     with fault_points(at="torn write state.pt"):
        ...         run.save_checkpoint()
        >>> in_fork(crash).returncode
        137
    """
    seen: list[str] = []

    def hook(event: str, kind: str, path: Path) -> None:
        names = [f"{event} {kind} {path.name}"]
        if event == "after" and kind == "write":
            names.insert(0, f"torn write {path.name}")
        if event == "before" and kind == "delete" and path.is_dir():
            names.append(f"torn delete {path.name}")
        for name in names:
            seen.append(name)
            if name != at:
                continue
            if name.startswith("torn write"):
                truncate(path, 0.5)
            elif name.startswith("torn delete"):
                for child in sorted(path.iterdir())[::2]:  # every other file: a delete cut short
                    child.unlink()
            os._exit(CRASH_EXIT)

    with writer_hooks(hook):
        yield seen


@contextlib.contextmanager
def disk_full(match: Callable[[Path], bool], fraction: float = 0.5) -> Iterator[list[Path]]:
    """Every checkpoint file for which `match(path)` is true gets only `fraction` of its bytes written, then the
    write raises OSError(ENOSPC), as on a full disk. Yields the paths it failed.

    Example:
        >>> with disk_full(lambda p: p.name == "state.pt" and "step-000015" in str(p)):
        ...     run.start()       # the step-15 save fails half-way through the optimizer state
    """
    failed: list[Path] = []

    def hook(event: str, kind: str, path: Path) -> None:
        if kind == "write" and event == "after" and match(path):
            truncate(path, fraction)
            failed.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with writer_hooks(hook):
        yield failed


# --------------------------------------------------------------------------------------------- damaged files
def truncate(path: Path, fraction: float = 0.5) -> int:
    """Cut `path` to `fraction` of its size; returns the bytes kept."""
    keep = int(Path(path).stat().st_size * fraction)
    os.truncate(path, keep)
    return keep


def flip_bytes(path: Path, n: int = 16, seed: int = 0) -> list[int]:
    """Invert `n` distinct bytes at seeded random offsets; returns the offsets."""
    data = bytearray(Path(path).read_bytes())
    offsets = sorted(random.Random(seed).sample(range(len(data)), n))
    for i in offsets:
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return offsets


def rehash(checkpoint: Path) -> None:
    """Rewrite the manifest to match the files as they are now: what someone who controls the directory can do.
    Lets a test reach the loaders that sit behind the SHA-256 check."""
    from nbtune.engine import checkpoint as ckpt
    manifest_path = Path(checkpoint) / ckpt.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["files"]:
        file = Path(checkpoint) / name
        manifest["files"][name] = {"sha256": ckpt.sha256_file(file), "bytes": file.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=1))


# -------------------------------------------------------------------------------------------- hostile inputs
class _CreatesFile:
    """Unpickling this object calls open(path, "w"): a harmless stand-in for an attacker's code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious_pickle(sentinel: Path, fmt: str = "torch") -> bytes:
    """Bytes whose unpickling (torch.load with weights_only=False, or pickle.loads) creates `sentinel`. fmt "torch"
    is a torch.save zip archive shaped like nbtune's state.pt; "raw" is a bare pickle stream.

    Example:
        >>> pickle.loads(malicious_pickle(tmp / "x", fmt="raw")); (tmp / "x").exists()   # doctest: +SKIP
        True
    """
    payload = _CreatesFile(sentinel)
    if fmt == "raw":
        return pickle.dumps(payload, protocol=2)
    buffer = io.BytesIO()
    torch.save({"optimizer": payload, "scheduler": {}, "scaler": None}, buffer)
    return buffer.getvalue()


SAFETENSORS_FUZZ = ("length-2^63", "header-101MB", "non-json", "no-brace", "overlapping-offsets",
                    "offsets-past-end")


def crafted_safetensors(kind: str, path: Path) -> Path:
    """Write a malformed safetensors file of one SAFETENSORS_FUZZ kind (the format: an 8-byte little-endian header
    length, a JSON header, then the tensor bytes). The 101 MB header is a sparse file, so it costs no disk."""
    def tensors(**specs) -> bytes:
        return json.dumps({k: {"dtype": "F32", "shape": [n], "data_offsets": list(o)} for k, (n, o) in
                           specs.items()}).encode()

    headers = {"non-json": b"{not json at all", "no-brace": b'["a", 1]',
               "overlapping-offsets": tensors(a=(2, (0, 8)), b=(2, (4, 12))),
               "offsets-past-end": tensors(a=(4, (0, 16)))}
    data = {"overlapping-offsets": bytes(12), "offsets-past-end": bytes(8)}
    with open(path, "wb") as fh:
        if kind == "length-2^63":
            fh.write(struct.pack("<Q", 2 ** 63) + b"{}")
        elif kind == "header-101MB":
            size = 101 * 1024 * 1024
            fh.write(struct.pack("<Q", size) + b"{")
            fh.truncate(8 + size)
        else:
            fh.write(struct.pack("<Q", len(headers[kind])) + headers[kind] + data.get(kind, b""))
    return Path(path)


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak_rss() -> bool:
    """Make the peak RSS equal the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    print(json.dumps(phase(json.loads(sys.argv[1]))))
