"""Mixed precision on this machine: bf16 autocast against fp32, training the same steps side by side.

Each precision trains in its own process (so peak memory is its own), alternating fp32 / bf16 for `--repeats`
rounds; the medians are printed with the ratio. On CPUs without native bf16 (no AVX512-BF16 / AMX) bf16 matmuls
are emulated, which is why nbtune's `precision=auto` picks fp32 there.

    python bench/precision_cpu.py --steps 8 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one(precision: str, steps: int, batch_size: int) -> dict:
    import warnings

    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    from nbtune.engine.sinks import MetricSink
    warnings.simplefilter("ignore")
    times: list[float] = []

    class Clock(MetricSink):
        def write(self, record):
            if record.get("kind") == "step":
                times.append(time.perf_counter())

    cfg = RunConfig().with_overrides([
        "model.name=minilm", "data.dataset=intents-en", f"train.batch_size={batch_size}", f"train.max_steps={steps}",
        f"train.precision={precision}", "train.sync_every_n_steps=1", "train.progress_bar=false",
        "train.tensorboard=false", "data.max_eval_samples=16", "output_dir=/tmp/nbtune-bench-precision"])
    run = Run(cfg, sinks=[Clock()])
    run.start()
    per_step = statistics.median(b - a for a, b in zip(times, times[1:]))  # the first step (warm-up) left out
    return {"precision": precision, "s_per_step": per_step, "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "final_loss": run.last_step_record["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.steps, a.batch_size)))
        return
    from nbtune.envcheck import cpu_supports_bf16
    results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for _ in range(a.repeats):
        for precision in results:
            out = subprocess.run([sys.executable, __file__, "--one", precision, "--steps", str(a.steps),
                                  "--batch-size", str(a.batch_size)], capture_output=True, text=True, check=True)
            results[precision].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("s_per_step", "peak_rss_mb", "final_loss")}
           for p, rs in results.items()}
    print(f"minilm on intents-en, batch {a.batch_size}, {a.steps} steps, CPU native bf16: {cpu_supports_bf16()}")
    for p, m in med.items():
        print(f"  {p}: {m['s_per_step']:.3f} s/step, peak RSS {m['peak_rss_mb']:.0f} MB, final loss {m['final_loss']:.6f}")
    print(f"  bf16/fp32 step time: {med['bf16']['s_per_step'] / med['fp32']['s_per_step']:.1f}x, "
          f"peak RSS: {med['bf16']['peak_rss_mb'] / med['fp32']['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
