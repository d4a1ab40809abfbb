"""Result objects and errors of the export room: what `run.export(...)` returns and raises.

Compute -> info -> render: the export pipeline fills an `ExportReport` (plain dataclasses, JSON-ready); the
ExportPanel and the CLI only render it.

Example:
    >>> p = Parity("onnx-fp32", rows=10, max_abs_logit_diff=2e-7, mean_abs_logit_diff=1e-8, label_agreement=1.0,
    ...            metric_name="accuracy", metric=0.9, reference_metric=0.9)
    >>> round(p.metric_drop, 6)
    0.0
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("pytorch", "onnx-fp32", "onnx-int8")


class ExportError(RuntimeError):
    """An export step failed or was asked for something it cannot do (the message says which and why)."""


class ParityError(ExportError):
    """The exported model disagrees with PyTorch beyond a threshold; `report` holds every figure."""

    def __init__(self, message: str, report: "ExportReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Parity:
    """One exported variant against the PyTorch model on held-out rows (tokens, for tagging)."""
    variant: str                  # "onnx-fp32" | "onnx-int8"
    rows: int                     # rows compared
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    label_agreement: float        # share of rows (tokens for tagging, next tokens for LMs) with the same argmax
    metric_name: str              # accuracy (classification), entity_f1 (tagging), next_token_accuracy (causal LM)
    metric: float                 # the task metric of this variant
    reference_metric: float       # the same metric of the PyTorch model on the same rows
    generation_agreement: float | None = None  # causal LM: share of prompts with the same greedy continuation

    @property
    def metric_drop(self) -> float:
        return self.reference_metric - self.metric


@dataclass
class Latency:
    """Speed of one backend on the same held-out texts, same thread count, measured in one process."""
    backend: str                  # one of BACKENDS
    batch1_p50_ms: float
    batch1_p95_ms: float
    batch32_samples_per_second: float
    sequence_length: int          # tokens per row (the texts are padded to this length)
    threads: int


@dataclass
class ExportReport:
    """Everything `run.export` did and measured. `passed` is False when a parity threshold was missed."""
    task: str
    model_name: str
    output_dir: str
    files: dict[str, str] = field(default_factory=dict)      # "merged", "onnx-fp32", "onnx-int8", "triton", "report"
    parity: list[Parity] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)        # one sentence per missed threshold
    notes: list[str] = field(default_factory=list)           # what was skipped and why

    @property
    def passed(self) -> bool:
        return not self.failures

    def parity_of(self, variant: str) -> Parity | None:
        return next((p for p in self.parity if p.variant == variant), None)

    def latency_of(self, backend: str) -> Latency | None:
        return next((t for t in self.latency if t.backend == backend), None)

    def speedup(self, backend: str, batch: int = 1) -> float | None:
        """How many times faster than PyTorch eager: p50 latency ratio at batch 1, throughput ratio at 32."""
        base, other = self.latency_of("pytorch"), self.latency_of(backend)
        if base is None or other is None:
            return None
        if batch == 1:
            return base.batch1_p50_ms / other.batch1_p50_ms
        return other.batch32_samples_per_second / base.batch32_samples_per_second

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        out["speedups"] = {b: {"batch1": self.speedup(b, 1), "batch32": self.speedup(b, 32)}
                           for b in BACKENDS[1:] if self.latency_of(b)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExportReport":
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        kept["parity"] = [Parity(**p) for p in data.get("parity", [])]
        kept["latency"] = [Latency(**t) for t in data.get("latency", [])]
        return cls(**kept)

    def write(self, path: str | Path) -> Path:
        """report.json, written atomically."""
        from nbtune.fileio import atomic_write_text
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    def summary(self) -> str:
        """A plain-text table for the console and the CLI."""
        lines = [f"export of {self.model_name} ({self.task}) -> {self.output_dir}: "
                 + ("parity OK" if self.passed else "PARITY FAILED")]
        for p in self.parity:
            lines.append(f"  {p.variant:10s} max|dlogit| {p.max_abs_logit_diff:.2e}  mean {p.mean_abs_logit_diff:.2e}"
                         f"  agreement {p.label_agreement:.2%}  {p.metric_name} {p.metric:.4f} "
                         f"(pytorch {p.reference_metric:.4f}, drop {p.metric_drop * 100:+.2f} pt)"
                         + (f"  greedy same {p.generation_agreement:.0%}" if p.generation_agreement is not None
                            else ""))
        for t in self.latency:
            s1, s32 = self.speedup(t.backend, 1), self.speedup(t.backend, 32)
            lines.append(f"  {t.backend:10s} batch 1 p50 {t.batch1_p50_ms:.2f} ms p95 {t.batch1_p95_ms:.2f} ms  "
                         f"batch 32 {t.batch32_samples_per_second:.1f}/s  x{s1:.2f} / x{s32:.2f} vs eager")
        lines += [f"  FAILED: {f}" for f in self.failures] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
