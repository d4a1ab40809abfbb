"""Multi-task demo: intents (35 classes) and movie sentiment (2) sharing one MiniLM encoder, trained three ways
with the same rows, steps and seed: the plain sum of task losses, PCGrad, and GradNorm. Prints each run's
per-task test accuracy, its conflict rate (the share of steps whose two task gradients had negative cosine on
the encoder, measured before any projection) and mean cosine, and GradNorm's final task weights.

Run (from the repository root):
    .venv/bin/python bench/demo_multitask.py --threads 1             # 80 steps of 16 per run: ~5 CPU-min in all
    .venv/bin/python bench/demo_multitask.py --steps 4 --batch-size 8 --train-rows-per-task 64 --eval-rows 32
    .venv/bin/python bench/demo_multitask.py --balances sum,pcgrad --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time

import torch

import nbtune.methods.multitask  # noqa: F401  (registers the method)
from nbtune import assets
from nbtune.config import RunConfig
from nbtune.engine.run import Run
from nbtune.methods.multitask_data import combine_tasks, task_accuracy


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--train-rows-per-task", type=int, default=1280)
    p.add_argument("--eval-rows", type=int, default=400, help="validation and test rows (both tasks, mixed)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--balances", default="sum,pcgrad,gradnorm")
    p.add_argument("--pooling", default="mean", help="minilm was trained as a mean-pooled sentence encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--json", default=None, help="write every figure to this file")
    return p.parse_args(argv)


def one_run(balance: str, dataset, args: argparse.Namespace, output_dir: str) -> dict:
    cfg = RunConfig().with_overrides([
        "task=classification", "model.name=minilm", "data.dataset=intents-en+movie-sentiment",
        f"data.max_eval_samples={args.eval_rows}", f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}", f"train.learning_rate={args.lr}", "train.warmup_ratio=0.1",
        f"train.seed={args.seed}", "train.progress_bar=false", "train.tensorboard=false",
        "train.save_total_limit=1", f"output_dir={output_dir}", f"run_name=multitask-{balance}"])
    cfg.methods = [{"name": "multitask", "balance": balance, "pooling": args.pooling, "measure_conflicts": True}]
    started = time.perf_counter()
    run = Run(cfg, dataset)
    run.start()
    seconds = time.perf_counter() - started
    steps = [r for r in map(json.loads, (run.run_dir / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "step"]
    figures = [s["methods"] for s in steps]
    method = run.methods[0]
    cosines = [f["multitask/cosine"] for f in figures if "multitask/cosine" in f]
    return {
        "test_accuracy": task_accuracy(run, "test"),
        "test_loss": run.results["test"]["loss"],
        "final_loss": steps[-1]["loss"],
        "conflict_rate": statistics.fmean(f["multitask/conflict"] for f in figures),
        "mean_cosine": statistics.fmean(cosines) if cosines else math.nan,   # steps that held both tasks
        "weights": method.task_weights(),
        "steps": len(steps),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = combine_tasks({"intent": assets.load_dataset("intents-en"),
                             "sentiment": assets.load_dataset("movie-sentiment")},
                            max_train_rows_per_task=args.train_rows_per_task, seed=args.seed)
    print(f"minilm, intents-en + movie-sentiment: {len(dataset['train'])} train rows, {args.steps} steps of "
          f"{args.batch_size}, lr {args.lr}, pooling {args.pooling}, seed {args.seed}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for balance in args.balances.split(","):
            results[balance] = one_run(balance, dataset, args, args.output_dir or tmp)
    print(f"\n{'balance':<10}{'intent acc':>11}{'sentiment acc':>14}{'test loss':>10}{'conflict rate':>14}"
          f"{'mean cos':>9}{'seconds':>9}")
    for balance, r in results.items():
        acc = r["test_accuracy"]
        print(f"{balance:<10}{acc['intent']:>11.3f}{acc['sentiment']:>14.3f}{r['test_loss']:>10.3f}"
              f"{r['conflict_rate']:>14.2f}{r['mean_cosine']:>9.3f}{r['seconds']:>9.0f}")
    if "gradnorm" in results:
        weights = ", ".join(f"{t}={w:.3f}" for t, w in results["gradnorm"]["weights"].items())
        print(f"\nfinal gradnorm weights: {weights}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
