"""GPU check: bf16 training throughput and MFU of MiniLM full fine-tuning and SmolLM2 LoRA, MiniLM in fp16 with
a GradScaler, peak CUDA memory, and the export's CUDA / TensorRT execution-provider path: one JSON object, printed
and written to --out. CI never runs this; a GPU machine does when one is lent (a few minutes on an H200).

    python bench/gpu_check.py                      # CUDA: minilm 60 steps x 64 x 128 tokens (bf16, fp16), smollm2
                                                   # LoRA r=16 on chatterbot-sft 40 steps x 8 x 512 tokens (bf16)
    python bench/gpu_check.py --dry-run            # CPU, fp32, tiny-bert / tiny-llama, 6 steps: the code paths
    python bench/gpu_check.py --peak-tflops 362    # a GPU that is not in PEAK_BF16_DENSE

Throughput comes from the run's step records (a MemorySink). The loop reads metrics to the host every
train.sync_every_n_steps steps and stamps each record of that window with the window's mean rate; the sync window
is set to the warm-up, so the first window (CUDA context, cuBLAS heuristics, allocator growth) is dropped whole
and the others are weighted by wall time. `tokens_per_second` counts real tokens, as the engine logs them; with
data.pad_to_max_length every step computes batch x max_length positions: `padded_tokens_per_second`.

FLOPs per token: N = weights of every nn.Linear (a tied LM head counts as the matmul it is; embedding lookups,
norms and biases are left out), N_t = the trainable ones. Forward 2N + backward through activations 2N + weight
gradients 2N_t = 4N + 2N_t: 6N for full fine-tuning, the 4N + 2N_trainable approximation for LoRA. Attention
scores (QK^T, AV) add 12 x layers x heads x head_dim x T, reported apart (`mfu_with_attention`).
MFU = FLOPs/token x padded tokens/s / peak, the spec-sheet dense bf16 FLOP/s (fp16 peaks the same on these
GPUs); `mfu_vs_measured_matmul` divides by a measured 8192^3 matmul in the same dtype instead.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
from nbtune.engine.sinks import MemorySink  # noqa: E402

# (fragment of torch.cuda.get_device_name, dense bf16 tensor-core FLOP/s, which part): first match wins
PEAK_BF16_DENSE = (("H200 NVL", 835e12, "H200 NVL"), ("H200", 989e12, "H200 SXM"),
                   ("H100 NVL", 835e12, "H100 NVL"), ("H100 PCIe", 756e12, "H100 PCIe"),
                   ("H100", 989e12, "H100 SXM"), ("A100", 312e12, "A100"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the export half, bench/gpu_ort.py
from gpu_ort import CUDA_EP, TRT, export_figures, onnxruntime_info  # noqa: E402,F401


@dataclass
class Workload:
    """One training measurement: what to train, how long, in which precision."""
    name: str
    model: str
    dataset: str
    task: str = "classification"
    precision: str = "bf16"
    steps: int = 60
    warmup_steps: int = 10          # also the metric sync window: the first window is exactly the warm-up
    batch_size: int = 64
    max_length: int = 128
    learning_rate: float = 5e-5
    methods: list = field(default_factory=list)
    max_train_samples: int | None = None
    max_eval_samples: int | None = 256
    tokenizer: str | None = None    # dry run: tiny-llama borrows SmolLM2's tokenizer (chat template, 49k vocab)
    config_overrides: dict = field(default_factory=dict)
    export: bool = False            # export the trained classifier and time the execution providers


def workloads(dry_run: bool, args: argparse.Namespace | None = None) -> list[Workload]:
    """The three workloads at full size, or tiny CPU stand-ins (fp32, tiny-bert / tiny-llama) for --dry-run.

        >>> [w.name for w in workloads(dry_run=True)]
        ['tiny-bert-full-fp32', 'tiny-bert-full-fp16', 'tiny-llama-lora-fp32']
    """
    a = args or parse_args([])
    lora = [{"name": "lora", "r": 16}]
    if dry_run:  # every code path, tiny: 6 steps, 2 of them warm-up, whole batches only
        small = dict(steps=6, warmup_steps=2, max_eval_samples=32)
        return [Workload("tiny-bert-full-fp32", "tiny-bert", "intents-en", precision="fp32", batch_size=8,
                         max_length=32, max_train_samples=64, export=True, **small),
                Workload("tiny-bert-full-fp16", "tiny-bert", "intents-en", precision="fp16", batch_size=8,
                         max_length=32, max_train_samples=64, **small),
                Workload("tiny-llama-lora-fp32", "tiny-llama", "chatterbot-sft", "causal-lm", "fp32", batch_size=2,
                         max_length=64, learning_rate=1e-3, methods=lora, max_train_samples=32,
                         tokenizer="smollm2", config_overrides={"vocab_size": 49152}, **small)]
    minilm = dict(steps=a.minilm_steps, warmup_steps=a.warmup_steps, batch_size=a.minilm_batch_size,
                  max_length=a.minilm_max_length)
    return [Workload("minilm-full-bf16", "minilm", "intents-en", precision="bf16", export=True, **minilm),
            Workload("minilm-full-fp16", "minilm", "intents-en", precision="fp16", **minilm),
            Workload("smollm2-lora-bf16", "smollm2", "chatterbot-sft", "causal-lm", "bf16", steps=a.lm_steps,
                     warmup_steps=a.warmup_steps, batch_size=a.lm_batch_size, max_length=a.lm_max_length,
                     learning_rate=1e-3, methods=lora)]


def config_for(w: Workload, output_dir: Path) -> RunConfig:
    """The RunConfig of a workload: static shapes, every step record kept, sync window = warm-up."""
    if w.warmup_steps < 1 or w.steps <= w.warmup_steps:
        raise ValueError(f"{w.name}: need 1 <= warmup_steps < steps, got warmup_steps={w.warmup_steps}, "
                         f"steps={w.steps}")
    cfg = RunConfig().with_overrides([
        f"task={w.task}", f"model.name={w.model}", f"data.dataset={w.dataset}", f"data.max_length={w.max_length}",
        "data.pad_to_max_length=true", f"data.max_train_samples={w.max_train_samples or 'null'}",
        f"data.max_eval_samples={w.max_eval_samples or 'null'}", f"train.batch_size={w.batch_size}",
        f"train.max_steps={w.steps}", f"train.learning_rate={w.learning_rate}", f"train.precision={w.precision}",
        "train.log_every_n_steps=1", f"train.sync_every_n_steps={w.warmup_steps}", "train.progress_bar=false",
        "train.tensorboard=false", f"output_dir={output_dir}", f"run_name={w.name}"])
    cfg.methods = [dict(m) for m in w.methods]
    cfg.model.tokenizer, cfg.model.config_overrides = w.tokenizer, dict(w.config_overrides)
    return cfg


# ------------------------------------------------------------------------------------------------ figures
def peak_flops(device_name: str, peak_tflops: float | None = None) -> tuple[float | None, str]:
    """Dense bf16 peak FLOP/s for a GPU name, or the --peak-tflops override; (None, why) when unknown.

        >>> peak_flops("NVIDIA H200")
        (989000000000000.0, 'spec sheet: H200 SXM dense bf16')
    """
    if peak_tflops:
        return peak_tflops * 1e12, "--peak-tflops"
    for fragment, flops, part in PEAK_BF16_DENSE:
        if fragment.lower() in device_name.lower():
            return flops, f"spec sheet: {part} dense bf16"
    return None, f"no peak FLOP/s known for {device_name!r}: pass --peak-tflops (dense bf16 TFLOP/s)"


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """Best measured FLOP/s of an (n, n) @ (n, n) matmul (2 n^3 FLOPs) on `device`, after 3 warm-up products."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = []
    for _ in range(3 + repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        seconds.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(seconds[3:])


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) weights of nn.Linear modules. Walking modules, not parameters(), counts a tied LM head
    (one tensor shared with the embedding) as the matmul it is; peft's lora_A / lora_B are Linear too.

        >>> matmul_params(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3)))
        (12, 12)
    """
    total = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel()
            trainable += module.weight.numel() if module.weight.requires_grad else 0
    return total, trainable


def flops_per_token(model: torch.nn.Module, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token: dense 4N + 2N_t (module docstring), attention 12 L (heads x head_dim) T."""
    n, n_trainable = matmul_params(model)
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"matmul_params": n, "matmul_params_trainable": n_trainable, "dense": 4.0 * n + 2.0 * n_trainable,
            "attention": 12.0 * config.num_hidden_layers * heads * head_dim * seq_len}


def measured_throughput(steps: list[dict], warmup_steps: int, batch_size: int) -> dict[str, float]:
    """Time-weighted samples/s and real tokens/s over the step records after warm-up.

    Records of one flush window carry the same rates; consecutive records with equal rates form a window,
    whose wall time is its samples / its samples/s (whole batches: the workloads stay inside one epoch).

        >>> recs = [{"step": s, "samples_per_second": r, "tokens_per_second": 10 * r} for s, r in
        ...         [(1, 1.0), (2, 1.0), (3, 4.0), (4, 4.0), (5, 2.0), (6, 2.0)]]
        >>> measured_throughput(recs, warmup_steps=2, batch_size=8)["samples_per_second"]
        2.6666666666666665
    """
    kept = [r for r in steps if r["step"] > warmup_steps]
    if not kept:
        raise ValueError(f"no step records after the {warmup_steps} warm-up steps ({len(steps)} records): "
                         "train more steps than warm-up steps")
    windows: list[list[dict]] = []
    for r in kept:
        rates = (r["samples_per_second"], r["tokens_per_second"])
        if windows and (windows[-1][0]["samples_per_second"], windows[-1][0]["tokens_per_second"]) == rates:
            windows[-1].append(r)
        else:
            windows.append([r])
    seconds = samples = tokens = 0.0
    for window in windows:
        n = len(window) * batch_size
        t = n / window[0]["samples_per_second"]
        seconds, samples, tokens = seconds + t, samples + n, tokens + window[0]["tokens_per_second"] * t
    return {"measured_steps": len(kept), "windows": len(windows), "measured_seconds": seconds,
            "samples_per_second": samples / seconds, "tokens_per_second": tokens / seconds}


# ----------------------------------------------------------------------------------------------- training
def train_workload(w: Workload, output_dir: Path, peak: float | None = None,
                   measured_peak: float | None = None) -> tuple[dict[str, Any], Run]:
    """Train one workload and return its figures and the finished Run.

        >>> figures, run = train_workload(workloads(True)[0], Path("/tmp/gc"))   # doctest: +SKIP
        >>> figures["tokens_per_second"] > 0                                      # doctest: +SKIP
        True
    """
    sink = MemorySink()
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    if cuda:  # earlier workloads were freed: the peak below is this run's weights + optimizer + activations
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else 0
    run = Run(config_for(w, output_dir), sinks=[sink])
    run.start()
    peak_memory = torch.cuda.max_memory_allocated() if cuda else None
    steps = sink.of_kind("step")
    rate = measured_throughput(steps, w.warmup_steps, w.batch_size)
    flops = flops_per_token(run.raw_model, w.max_length)
    padded = rate["samples_per_second"] * w.max_length  # (B, T) positions computed per second
    figures = {
        "name": w.name, "model": w.model, "dataset": w.dataset, "task": w.task, "device": str(run.device),
        "precision": run.precision.name, "grad_scaler": run.scaler is not None,
        "grad_scale_final": run.scaler.get_scale() if run.scaler is not None else None,
        "method": ", ".join(f"{m['name']} r={m.get('r')}" for m in w.methods) or "full fine-tuning",
        "steps": w.steps, "warmup_steps": w.warmup_steps, "batch_size": w.batch_size, "max_length": w.max_length,
        "params_total": sum(p.numel() for p in run.raw_model.parameters()), "params_trainable": run.trainable_count(),
        **rate, "padded_tokens_per_second": padded, "real_token_share": rate["tokens_per_second"] / padded,
        "matmul_params": flops["matmul_params"], "matmul_params_trainable": flops["matmul_params_trainable"],
        "flops_per_token_dense": flops["dense"], "flops_per_token_attention": flops["attention"],
        "achieved_tflops": flops["dense"] * padded / 1e12,
        "mfu": flops["dense"] * padded / peak if peak else None,
        "mfu_with_attention": (flops["dense"] + flops["attention"]) * padded / peak if peak else None,
        "mfu_real_tokens": flops["dense"] * rate["tokens_per_second"] / peak if peak else None,
        "mfu_vs_measured_matmul": flops["dense"] * padded / measured_peak if measured_peak else None,
        "peak_cuda_memory_gib": peak_memory / 2 ** 30 if peak_memory is not None else None,
        "cuda_memory_before_gib": baseline / 2 ** 30 if cuda else None,
        "loss_first": steps[0]["loss"], "loss_last": steps[-1]["loss"], "status": run.state.status,
        "validation": {k: v for k, v in run.results.get("validation", {}).items() if isinstance(v, (int, float))},
        "wall_s": time.perf_counter() - started}
    return figures, run


def release_memory() -> None:
    """Collect dropped runs (call after the last reference is gone) so the next workload's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def oom_backoff_status() -> dict[str, Any]:
    """Whether nbtune.engine has an out-of-memory batch backoff to exercise (DESIGN.md plans one in guard.py)."""
    engine = ROOT / "nbtune" / "engine"
    hits = [f"{p.name}:{i}" for p in sorted(engine.glob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if "OutOfMemory" in line or re.search(r"\boom\b", line, re.IGNORECASE)]
    if not hits:
        return {"exists": False, "exercised": False,
                "note": "nbtune.engine has no OOM batch backoff (no OutOfMemoryError handling; DESIGN.md's "
                        "engine/guard.py is not written), so there is nothing to exercise"}
    return {"exists": True, "exercised": False, "references": hits,
            "note": "OOM handling found in nbtune.engine, but this script has no exercise for it yet: add one"}


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, fp32, tiny models, 6 steps: prove the code paths")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="where the JSON goes")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak TFLOP/s of a GPU not in the table")
    p.add_argument("--work-dir", type=Path, default=None, help="run directories (default: a temporary directory)")
    p.add_argument("--warmup-steps", type=int, default=10, help="steps dropped from throughput (one sync window)")
    p.add_argument("--latency-calls", type=int, default=50, help="timed calls per backend and batch size")
    for name, default in (("minilm-steps", 60), ("minilm-batch-size", 64), ("minilm-max-length", 128),
                          ("lm-steps", 40), ("lm-batch-size", 8), ("lm-max-length", 512)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    return p.parse_args(argv)


def device_info(dry_run: bool, peak_tflops: float | None) -> dict[str, Any]:
    """The device, its peak FLOP/s (table or --peak-tflops) and a measured matmul in the workloads' dtype."""
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak, source = peak_flops(name, peak_tflops) if cuda or peak_tflops else (None, "CPU: MFU needs --peak-tflops")
    dtype, n = (torch.bfloat16, 8192) if cuda else (torch.float32, 512)
    return {"name": name, "cuda": cuda, "torch": torch.__version__, "dry_run": dry_run,
            "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
            "peak_flops": peak, "peak_source": source, "measured_matmul_dtype": str(dtype).split(".")[-1],
            "measured_matmul_flops": matmul_flops(torch.device("cuda" if cuda else "cpu"), dtype, n)}


def _stage(report: dict, key: str, fn: Callable[[], Any]) -> Any:
    """Run one stage; a failure is recorded (and makes the exit code 1) instead of ending the check."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every figure that can be had is worth more than a stack trace
        report["errors"].append({"stage": key, "error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc(limit=6)})
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device here. Run it on a GPU machine, or pass --dry-run to prove the "
                         "code paths on the CPU with tiny models.")
    started = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nbtune-gpu-check-"))
    device = device_info(args.dry_run, args.peak_tflops)
    report: dict[str, Any] = {"device": device, "flops_formula": "dense FLOPs/token = 4N + 2N_trainable (N = "
                              "nn.Linear weights; = 6N for full fine-tuning); attention 12 L d_attn T reported apart; "
                              "MFU = FLOPs/token x padded tokens/s / peak", "training": [], "skipped": [],
                              "errors": [], "export": None, "oom_backoff": oom_backoff_status()}
    for w in workloads(args.dry_run, args):
        if w.precision == "fp16" and not device["cuda"]:
            report["skipped"].append(f"{w.name}: fp16 with a GradScaler needs CUDA (skipped on the CPU)")
            continue
        trained = _stage(report, w.name, lambda w=w: train_workload(w, work, device["peak_flops"],
                                                                    device["measured_matmul_flops"]))
        if trained is None:
            continue
        figures, run = trained
        report["training"].append(figures)
        if w.export:
            report["export"] = _stage(report, "export", lambda: export_figures(run, work, args.latency_calls))
        del trained, run
        release_memory()
    report["wall_s"] = time.perf_counter() - started
    text = json.dumps(report, indent=1, default=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
