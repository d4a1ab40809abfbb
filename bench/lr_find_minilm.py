"""The LR range test on MiniLM-L6 / intents-en: the full curve, our suggestion and the naive steepest-slope one.

Run (from the repository root):
    .venv/bin/python bench/lr_find_minilm.py                                   # 100 sweep steps, batch 16
    .venv/bin/python bench/lr_find_minilm.py --steps 60 --batch-size 8 --max-length 32 --threads 1

The acceptance line of issue 6: the suggestion lies within [1e-5, 2e-4] (full fine-tuning's usual range is
1e-5..1e-4); a naive finder on the same curve suggests a much larger LR. The run's weights are restored
afterwards (checked here with a weight digest). The last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine.checkpoint import weights_digest  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
from nbtune.tune.lr_find import lr_find  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="recorded sweep steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--mode", default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig().with_overrides([
            "task=classification", "model.name=minilm", "data.dataset=intents-en",
            f"data.max_train_samples={args.train_samples}", "data.max_eval_samples=16",
            f"data.max_length={args.max_length}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
            "train.progress_bar=false", "train.tensorboard=false", f"output_dir={out}"])
        run = Run(cfg)
        before = weights_digest(run.raw_model)
        start = time.perf_counter()
        result = lr_find(run, num_steps=args.steps, mode=args.mode)
        seconds = time.perf_counter() - start
        restored = weights_digest(run.raw_model) == before
    print(f"minilm / intents-en: {args.train_samples} train rows, batch {args.batch_size}, max_length "
          f"{args.max_length}, {result.warmup_steps} warmup + {len(result.lrs)} sweep steps in {seconds:.0f} s "
          f"on {run.device}")
    print(f"{'step':>4} {'lr':>9} {'loss':>8} {'smoothed':>9}")
    for i, (lr, loss, sm) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
        print(f"{i:4d} {lr:9.2e} {loss:8.4f} {sm:9.4f}")
    print(result.summary())
    lo, hi = 1e-5, 2e-4
    print(f"ours {result.suggestion:.2e} (before clipping {result.suggestion_unclipped:.2e}) within "
          f"[{lo:.0e}, {hi:.0e}]: {lo <= result.suggestion <= hi}; naive steepest slope "
          f"{result.naive_suggestion:.2e}; weights restored bit-identically: {restored}")
    summary = {"suggestion": result.suggestion, "suggestion_unclipped": result.suggestion_unclipped,
               "naive_suggestion": result.naive_suggestion, "lr_at_min": result.lr_at_min,
               "stopped_early": result.stopped_early, "steps": len(result.lrs), "seconds": round(seconds, 1),
               "restored": restored, "points": result.points()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
