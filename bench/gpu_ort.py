"""The export half of bench/gpu_check.py: the trained MiniLM exported with nbtune.export, its fp32 parity on
CUDA-trained weights, and batch-1/32 latency on ONNX Runtime's CPU, CUDA and TensorRT execution providers
(those the installed onnxruntime offers; a provider that silently falls back is reported as skipped).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nbtune.engine.run import Run

TRT = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


def onnxruntime_info() -> dict[str, Any]:
    """Which onnxruntime is installed and which execution providers it offers."""
    import importlib.metadata as md
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("the export check needs onnxruntime: pip install 'nbtune[export]'") from exc
    dists = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            dists.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    providers = ort.get_available_providers()
    return {"distributions": dists, "providers_available": providers, "tensorrt_present": TRT in providers,
            "cuda_ep_present": CUDA_EP in providers}


def ep_session(path: Path, provider: str, seq_len: int, cache_dir: Path, max_batch: int = 32):
    """An onnxruntime session on one execution provider. TensorRT gets one optimisation profile covering batch
    1..max_batch at the padded length (no engine rebuild between batch sizes) and an engine cache, with CUDA as
    the fallback for nodes TensorRT does not take. Returns (session, providers the session really uses)."""
    import onnxruntime as ort
    if provider == TRT:
        def shape(b: int) -> str:
            return f"input_ids:{b}x{seq_len},attention_mask:{b}x{seq_len}"
        providers: list = [(TRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                                  "trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(max_batch),
                                  "trt_profile_max_shapes": shape(max_batch)}), CUDA_EP]
    else:
        providers = [provider]
    session = ort.InferenceSession(str(path), providers=providers)
    return session, session.get_providers()


def p50_ms(infer: Callable[[], Any], calls: int, warmup: int = 5) -> float:
    """Median wall milliseconds of `calls` calls after `warmup` untimed ones (each call returns host data)."""
    ms = []
    for _ in range(warmup + calls):
        start = time.perf_counter()
        infer()
        ms.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(ms[warmup:], 50))


def latency_batches(run: Run, sizes: tuple[int, ...] = (1, 32)) -> dict[int, dict[str, torch.Tensor]]:
    """Test rows collated as the run collates them (padded to max_length): {batch size: input_ids, mask}."""
    rows = run.data.rows["test"]
    out = {}
    for size in sizes:
        batch = run.collate([i % len(rows) for i in range(size)], rows)
        out[size] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}  # (B, T)
    return out


def export_figures(run: Run, output_dir: Path, calls: int = 50, max_parity_rows: int = 256) -> dict[str, Any]:
    """run.export (fp32 ONNX, no int8, no latency, no Triton), its fp32 parity against the trained weights, then
    p50 latency at batch 1 / 32 (see time_backends).

    The graph is exported unoptimised (`optimize=False`): ORT's BERT fusion writes com.microsoft contrib ops
    that TensorRT cannot take, while TensorRT fuses the plain graph itself."""
    from nbtune.export import ParityError
    started = time.perf_counter()
    try:
        report = run.export("onnx", quantize=None, output_dir=output_dir / "export", latency=False, triton=False,
                            optimize=False, max_parity_rows=max_parity_rows)
    except ParityError as exc:
        report = exc.report
    fp32 = report.parity_of("onnx-fp32")
    out: dict[str, Any] = {"graph": report.files.get("onnx-fp32"), "parity_passed": report.passed,
                           "parity_failures": report.failures, "parity": dataclasses.asdict(fp32) if fp32 else None,
                           "trained_on": str(run.device), **onnxruntime_info()}
    out.update(time_backends(run, Path(report.files["onnx-fp32"]), out["providers_available"], output_dir, calls))
    out["tensorrt_used"] = TRT in out["latency_p50_ms"]
    out["wall_s"] = time.perf_counter() - started
    return out


def time_backends(run: Run, graph: Path, available: list[str], output_dir: Path, calls: int) -> dict[str, Any]:
    """p50 ms at batch 1 and 32 of PyTorch eager on the run's device and of the graph on the CPU, CUDA and
    TensorRT execution providers, and each EP's max |logit diff| from eager at batch 32 (TF32 shows there). An EP
    this onnxruntime lacks, or one whose session fell back to another EP (onnxruntime-gpu lists TensorRT even
    when its libraries are missing), gets a line in `skipped` instead."""
    out: dict[str, Any] = {"latency_p50_ms": {}, "max_abs_logit_diff_vs_eager": {}, "session_providers": {},
                           "skipped": []}
    batches = latency_batches(run)
    seq_len = int(batches[1]["input_ids"].shape[1])
    model = run.raw_model.eval()
    on_device = {b: {k: v.to(run.device) for k, v in t.items()} for b, t in batches.items()}

    def eager(b: int) -> Callable[[], Any]:
        def infer():
            with torch.inference_mode():
                return model(**on_device[b]).logits.float().cpu()  # (B, C) on the host, like ORT's output
        return infer
    out["latency_p50_ms"][f"pytorch-eager-{run.device.type}"] = {str(b): p50_ms(eager(b), calls) for b in batches}
    reference = eager(32)().numpy()                                 # (32, C)
    cache = output_dir / "trt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    for provider in ("CPUExecutionProvider", CUDA_EP, TRT):
        if provider not in available:
            out["skipped"].append(f"{provider}: not offered by this onnxruntime (providers {available}); "
                                  + ("it needs onnxruntime-gpu" if provider == CUDA_EP else
                                     "it needs onnxruntime-gpu and the TensorRT libraries"))
            continue
        session, used = ep_session(graph, provider, seq_len, cache)
        out["session_providers"][provider] = used
        if used[0] != provider:
            out["skipped"].append(f"{provider}: offered, but the session runs on {used} (libraries missing?)")
            continue
        feeds = {b: {i.name: t[i.name].numpy() for i in session.get_inputs()} for b, t in batches.items()}
        out["latency_p50_ms"][provider] = {str(b): p50_ms(lambda b=b: session.run(["logits"], feeds[b]), calls)
                                           for b in batches}
        got = session.run(["logits"], feeds[32])[0]
        out["max_abs_logit_diff_vs_eager"][provider] = float(np.abs(got - reference).max())
    out["latency_seq_len"] = seq_len
    return out
