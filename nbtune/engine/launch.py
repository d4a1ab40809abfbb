"""Train one config in N processes from a notebook (or any Python process), through accelerate's
`notebook_launcher`: each process builds its own `Run(config)` and trains its shard under DDP; rank 0 writes the
one metrics.jsonl and checkpoint, and its summary comes back to the caller.

The limits are those of forking a process that may already hold device state:
- CUDA must not be initialised in the calling process (no model moved to the GPU, no `torch.cuda` call that
  creates a context): forked children cannot use a CUDA context their parent created. Restart the kernel and
  call `launch` first. On a CPU-only machine nothing can go wrong here.
- One process per GPU: on a GPU machine `num_processes` must not exceed the GPUs visible.
- The calling process must not itself be a rank of a distributed job (torchrun / accelerate launch).
- An accelerate state left in the kernel by an earlier *single-process* Run is set aside for the launch and put
  back afterwards (accelerate keeps it in class-level dicts that forked children would inherit and refuse);
  a distributed one cannot be, and is refused.
- Linux/macOS only (fork); the call blocks until every process has finished.

Example:
    >>> from nbtune import RunConfig
    >>> from nbtune.engine.launch import launch
    >>> cfg = RunConfig().with_overrides(["model.name=tiny-bert", "data.dataset=trec", "run_name=ddp"])
    >>> summary = launch(cfg, num_processes=2)                          # doctest: +SKIP
    >>> summary["status"], summary["world_size"]                        # doctest: +SKIP
    ('finished', 2)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

import torch

PRECISIONS = ("no", "fp16", "bf16")


class LaunchError(RuntimeError):
    """A launch that cannot start here, or whose processes failed (`summaries`: what each rank reported)."""

    def __init__(self, message: str, summaries: dict[int, dict] | None = None) -> None:
        super().__init__(message)
        self.summaries = summaries or {}


def launch(config, num_processes: int = 2, *, dataset=None, mixed_precision: str = "no",
           run_dir: str | Path | None = None, **options: Any) -> dict:
    """Run `Run(config, dataset).start()` in `num_processes` processes; returns rank 0's summary.

    Args:
        config: the RunConfig every process builds its run from.
        num_processes: processes to start (one per GPU on a GPU machine; CPU processes use gloo).
        dataset: a DatasetDict to train on instead of `config.data.dataset` (handed to the children by fork).
        mixed_precision: "no" keeps `config.train.precision`; "fp16"/"bf16" set it (nbtune's loop does the
            autocast, not accelerate).
        run_dir: where the run writes; default `<output_dir>/<run_name or model-dataset-time>`. Knowing it in
            advance lets another cell follow the run live: `TrainPanel.follow(run_dir)`.
        **options: passed to `accelerate.notebook_launcher` (use_port, master_addr, ...). `use_port` defaults
            to a free local port, so a second launch in the same kernel does not collide with the first.

    Returns:
        rank 0's `Run.summary()` (run_dir, status, step, results, ...) plus `world_size`.

    Raises:
        ValueError: num_processes below 1 or an unknown mixed_precision.
        LaunchError: the launch cannot start in this process (see the module docstring), or a process failed;
            the message names the rank and its error.

    Example:
        >>> summary = launch(cfg, num_processes=2, run_dir="runs/ddp")      # doctest: +SKIP
    """
    from accelerate import notebook_launcher
    from accelerate.utils import patch_environment
    cfg = _checked_config(config, num_processes, mixed_precision)
    check_can_launch(num_processes)
    options.setdefault("use_port", str(_free_port()))
    exchange = Path(tempfile.mkdtemp(prefix="nbtune-launch-"))
    try:
        # Children of a process that used the fast tokenizers' thread pool would warn and disable it anyway.
        env = {} if "TOKENIZERS_PARALLELISM" in os.environ else {"TOKENIZERS_PARALLELISM": "false"}
        with _accelerate_state_set_aside(), patch_environment(**env):
            try:
                notebook_launcher(_worker, args=(cfg, dataset, run_dir, str(exchange)),
                                  num_processes=num_processes, **options)
            except Exception as exc:  # noqa: BLE001 - re-raised with what the ranks reported
                summaries = _read_summaries(exchange)
                raise LaunchError(_failure_message(exc, summaries), summaries) from exc
        summaries = _read_summaries(exchange)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)
    if 0 not in summaries:
        raise LaunchError(f"the launch returned but rank 0 reported no summary; a process may have exited "
                          f"without training (ranks that reported: {sorted(summaries)})", summaries)
    return summaries[0]


def check_can_launch(num_processes: int) -> None:
    """Raise LaunchError when a launch of `num_processes` cannot work from this process; nothing is changed.

    Example:
        >>> check_can_launch(2)      # a CPU machine, fresh interpreter: no error    # doctest: +SKIP
    """
    if torch.cuda.is_initialized():
        raise LaunchError("CUDA is already initialised in this process, and forked training processes cannot use "
                          "it: restart the kernel and call launch before anything touches the GPU (building a "
                          "Run, moving a model with .to('cuda'), torch.cuda calls). On a GPU, launch from a "
                          "fresh kernel; Run.launch works there only if that Run was never built on the GPU.")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise LaunchError("this process is already a rank of a torch.distributed job (started by torchrun or "
                          "accelerate launch?); launching more processes from it would nest jobs. Call "
                          "Run(config).start() there instead: the launcher already runs one per rank.")
    gpus = _visible_gpus()
    if gpus and num_processes > gpus:
        raise LaunchError(f"num_processes={num_processes} but this machine has {gpus} visible GPU(s): nbtune "
                          f"trains one process per GPU. Use num_processes<={gpus} (CUDA_VISIBLE_DEVICES selects "
                          f"which).")
    from accelerate.state import PartialState
    state = PartialState._shared_state
    if state and (state.get("num_processes", 1) > 1 or state.get("distributed_type") not in (None, "NO")):
        raise LaunchError(f"an accelerate state for {state.get('num_processes')} processes "
                          f"({state.get('distributed_type')}) is already set up in this process; it cannot be set "
                          f"aside safely. Restart the kernel and call launch before building a distributed "
                          f"Accelerator.")


def _checked_config(config, num_processes: Any, mixed_precision: str):
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a whole number >= 1 (one process per rank), got {num_processes!r}")
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {mixed_precision!r}; "
                         f"nbtune applies it as train.precision")
    if mixed_precision != "no":
        return config.with_overrides([f"train.precision={mixed_precision}"])
    return config


@contextlib.contextmanager
def _accelerate_state_set_aside() -> Iterator[None]:
    """Give accelerate empty shared state for the launch and put the old one back afterwards.

    accelerate keeps its PartialState/AcceleratorState/GradientState in class-level dicts (the Borg pattern);
    an earlier Run in this kernel filled them for one process, and notebook_launcher refuses to fork while they
    are filled (the children would inherit a one-process state). check_can_launch has already refused a
    distributed state, and a one-process CPU state holds no process group or device context, so the children
    can start from empty dicts. Existing Accelerator objects keep their own dict (their `__dict__` is the old
    object), and the classes get it back on exit, so the earlier Run stays usable after the launch."""
    from accelerate.state import AcceleratorState, GradientState, PartialState
    classes = (PartialState, AcceleratorState, GradientState)
    saved = {cls: cls.__dict__["_shared_state"] for cls in classes}
    try:
        for cls in classes:
            cls._shared_state = {}
        yield
    finally:
        for cls, held in saved.items():
            cls._shared_state = held


def _worker(cfg, dataset, run_dir: str | None, exchange: str) -> None:
    """One rank: build and train its own Run, then report its summary (or its error) to the caller."""
    from nbtune.engine.run import Run
    rank = int(os.environ.get("RANK", "0"))
    try:
        run = Run(cfg, dataset, run_dir=run_dir)
        run.start()
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then re-raised so elastic sees it
        _write_summary(exchange, rank, {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc()})
        raise
    summary = run.summary()
    summary["world_size"] = run.accelerator.num_processes
    _write_summary(exchange, rank, summary)


def _write_summary(exchange: str, rank: int, summary: dict) -> None:
    path = Path(exchange) / f"summary-rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, default=str), encoding="utf-8")
    os.replace(tmp, path)  # the caller never reads half a file


def _read_summaries(exchange: Path) -> dict[int, dict]:
    found = {}
    for path in sorted(exchange.glob("summary-rank*.json")):
        found[int(path.stem.removeprefix("summary-rank"))] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _failure_message(exc: BaseException, summaries: dict[int, dict]) -> str:
    failed = {r: s for r, s in summaries.items() if s.get("status") == "error"}
    if not failed:
        return f"the launched processes failed before reporting: {type(exc).__name__}: {exc}"
    rank = min(failed)
    others = f" (ranks that failed: {sorted(failed)})" if len(failed) > 1 else ""
    return (f"the launched run failed on rank {rank}{others}: {failed[rank]['error']}"
            f"\n--- rank {rank} traceback ---\n{failed[rank]['traceback']}")


def _visible_gpus() -> int:
    """GPUs visible to this process, counted through NVML so that CUDA stays uninitialised (fork-safe)."""
    from accelerate.utils import patch_environment
    with patch_environment(PYTORCH_NVML_BASED_CUDA_CHECK="1"):
        return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
