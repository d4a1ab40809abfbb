"""ONNX Runtime fp32 and int8 against PyTorch eager, measured side by side in one run, on the fine-tuned
MiniLM intents classifier, with the parity figures that make the speed-up worth having.

Run (from the repository root):
    .venv/bin/python bench/export_latency.py                        # fine-tunes minilm on intents-en first (demo settings)
    .venv/bin/python bench/export_latency.py --run-dir runs/x       # or a run directory with a checkpoint (nbtune demo)
    .venv/bin/python bench/export_latency.py --threads 1 --calls 200

What it does: `run.export("onnx", quantize="int8")` (merge -> ONNX with dynamic axes -> onnxruntime's transformer
graph optimiser for fp32 -> dynamic int8 of the MatMuls, per channel -> parity on the whole test split ->
latency). Latency: p50/p95 of single-row calls (rows of the test split at their natural length) and rows/s over
batches of 32, with rounds that interleave the three backends, all on the same thread count. Targets of the
issue: fp32 max |logit diff| <= 1e-4 with 100% label agreement; int8 agreement >= 99% and accuracy drop <= 1
point; speed-up at batch 1 fp32 >= 2.5x, int8 >= 8x. The machine's load average is printed with the results:
on a shared machine only the side-by-side ratios mean much.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune.cli import DEMO_OVERRIDES  # noqa: E402
from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
from nbtune.export.types import ParityError  # noqa: E402

TARGETS = {"fp32_batch1": 2.5, "int8_batch1": 8.0}


def trained_run(args) -> Run:
    if args.run_dir:
        return Run.resume(args.run_dir)
    cfg = RunConfig(output_dir=args.output_dir).with_overrides(
        DEMO_OVERRIDES + ["train.progress_bar=false", "train.tensorboard=false", "run_name=export-bench",
                          f"train.precision={args.precision}"])
    started = time.perf_counter()
    run = Run(cfg).start()
    print(f"fine-tuned {cfg.model.name} on {cfg.data.dataset} in {time.perf_counter() - started:.0f} s: "
          f"test accuracy {run.results['test']['accuracy']:.4f}", flush=True)
    return run


def fixed_length_latency(run: Run, report, length: int, calls: int) -> dict:
    """The same three backends on test rows tiled to `length` tokens: the per-call overhead that dominates
    ~10-token intents weighs less here, and the int8 MatMuls carry more of the time."""
    from nbtune.export import latency as lat
    from nbtune.export.merge import merged_model
    from nbtune.export.onnx import OnnxRunner
    rows = []
    for r in run.data.rows["test"][:256]:
        body = r["input_ids"][1:-1] or r["input_ids"]
        rows.append({"input_ids": [r["input_ids"][0]] + (body * length)[:length - 2] + [r["input_ids"][-1]],
                     "labels": r["labels"]})
    backends = {"pytorch": lat.eager(merged_model(run)),
                **{k: OnnxRunner(report.files[k]).logits for k in ("onnx-fp32", "onnx-int8")}}
    timed = {t.backend: t for t in lat.measure(backends, rows, run.collate, batch1_calls=calls)}
    base = timed["pytorch"]
    out = {k: {"batch1_p50_ms": t.batch1_p50_ms, "batch32_samples_per_second": t.batch32_samples_per_second,
               "speedup_batch1": base.batch1_p50_ms / t.batch1_p50_ms,
               "speedup_batch32": t.batch32_samples_per_second / base.batch32_samples_per_second}
           for k, t in timed.items()}
    print(f"at {length} tokens per row: " + ", ".join(
        f"{k} p50 {v['batch1_p50_ms']:.2f} ms (x{v['speedup_batch1']:.2f}), batch 32 x{v['speedup_batch32']:.2f}"
        for k, v in out.items()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", help="a run directory with a checkpoint (default: fine-tune one first)")
    p.add_argument("--output-dir", default="runs", help="where a fresh fine-tuning run goes (runs)")
    p.add_argument("--precision", default="auto", help="precision of the fresh fine-tuning run (auto)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, the same for every backend (2)")
    p.add_argument("--calls", type=int, default=120, help="single-row calls timed per backend (120)")
    p.add_argument("--fixed-length", type=int, default=64, help="also time rows tiled to this many tokens "
                   "(64; 0 skips)")
    p.add_argument("--out", default="bench/results-export-latency-cpu-2core.json", help="results JSON")
    args = p.parse_args()
    run = trained_run(args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        report = run.export("onnx", quantize="int8", output_dir=Path(run.run_dir) / "export-bench", triton=True,
                            latency_calls=args.calls, on_stage=lambda s: print(f"  {s}", flush=True))
    except ParityError as exc:
        report = exc.report
    print(report.summary())
    ratios = {"fp32_batch1": report.speedup("onnx-fp32", 1), "int8_batch1": report.speedup("onnx-int8", 1),
              "fp32_batch32": report.speedup("onnx-fp32", 32), "int8_batch32": report.speedup("onnx-int8", 32)}
    fixed = fixed_length_latency(run, report, args.fixed_length, args.calls) if args.fixed_length else None
    met = {k: ratios[k] >= v for k, v in TARGETS.items()}
    load = os.getloadavg()
    print(f"speed-ups vs eager: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items())
          + f"\ntargets met: {met}; load average {load[0]:.2f}; export took {time.perf_counter() - started:.0f} s")
    results = {"command": "python " + " ".join(sys.argv), "threads": args.threads, "load_average_1min": load[0],
               "run_dir": str(run.run_dir), "test_accuracy": run.results.get("test", {}).get("accuracy"),
               "report": report.to_dict(), "speedups": ratios, "targets": TARGETS, "targets_met": met,
               "parity_passed": report.passed, "fixed_length": fixed}
    Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
