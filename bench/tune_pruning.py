"""What pruning saves in nbtune's hyperparameter search: one study budget run with and without a pruner.

Run (from the repository root):
    .venv/bin/python bench/tune_pruning.py --json bench/results-tune-pruning-cpu-2core.json   # the figures
    # defaults: 20 trials x 40 steps, validation (200 rows) every 8 steps, conditions none, median, hyperband;
    # 28 min on the shared 2-core machine at a load average of 2-5
    .venv/bin/python bench/tune_pruning.py --trials 4 --steps 20 --pruners none,median        # a smoke check

Each condition is a `TuneStudy` with the same base config, search space, TPE sampler seed and number of
trials; only the pruner differs:
- none: `pruner=None` (Optuna's NopPruner), every trial trains all `--steps` steps;
- median: `pruner="median"`, Optuna's MedianPruner with its defaults (n_startup_trials=5, n_warmup_steps=0,
  interval_steps=1): once 5 trials have completed, a trial whose best validation accuracy so far is below the
  median of the completed trials' values at the same step is stopped at that evaluation;
- hyperband: `pruner="hyperband"`, Optuna's HyperbandPruner with nbtune's setting (min_resource = one
  evaluation interval, reduction_factor 3, max_resource from the first completed trial).

The task: the bundled pretrained MiniLM-L6 on the bundled TREC question types (6 classes), `--train-samples`
training rows, `--eval-samples` validation rows scored every `--eval-every` steps (the pruner acts at those
evaluations), no intermediate checkpoints (save_every_n_steps=0, keep_checkpoints="none").

The space is wider than the guide's table (GUIDE_SPACE, lr 1e-6..5e-5), which barely moves a model in a few
dozen steps, so every trial would score alike and there would be nothing to prune or to find:
    learning rate  log-uniform [1e-5, 1e-3]
    batch size     {8, 16, 32}
    dropout        uniform [0.0, 0.3]

Compute is counted as optimizer steps trained (the issue's measure) and also as training examples (steps x the
trial's batch size, since batch size is searched). The best score of a condition is the best validation
accuracy of its completed trials (a trial's value is its accuracy after its last step); "within 1 point" is
read as "no more than 1 point below the baseline's best". The test accuracy of each best trial is printed too
(chosen on validation, so unbiased). Wall time includes what pruning cannot save (loading the model for each
trial, evaluations, the end-of-run test evaluation and checkpoint) and moves with the machine's load on a shared
machine: the load averages before and after each condition are recorded. Steps and examples are the
load-independent figures. Trials use one torch thread by default (--threads): on a shared 2-core machine two
intra-op threads spin against the other processes (a 20-step trial took 3x longer with 2 than with 1).
The study directories live in a temporary directory that is removed at the end. The last line printed is a
JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune.config import RunConfig  # noqa: E402
from nbtune.tune import TuneStudy  # noqa: E402

LR_RANGE = (1e-5, 1e-3)
BATCH_SIZES = (8, 16, 32)
DROPOUT_RANGE = (0.0, 0.3)
TARGET_SAVING_PCT = 40.0  # the issue: pruning saves at least 40% of the steps ...
TARGET_POINTS = 1.0       # ... at a best validation score within 1 point
PRUNER_ARGS = {"none": None, "median": "median", "hyperband": "hyperband"}


def space(trial) -> dict:
    """The bench's search space (see the module docstring for why it is wider than the guide's table)."""
    return {"train.learning_rate": trial.suggest_float("learning_rate", *LR_RANGE, log=True),
            "train.batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
            "dropout": trial.suggest_float("dropout", *DROPOUT_RANGE)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20, help="trials per condition")
    p.add_argument("--model", default="minilm", help="bundled model name")
    p.add_argument("--dataset", default="trec", help="bundled classification dataset")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of a trial that is not pruned")
    p.add_argument("--eval-every", type=int, default=8, help="validation evaluations (pruning points) every N steps")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=200, help="validation (and test) rows scored")
    p.add_argument("--max-length", type=int, default=32, help="tokens per row (TREC questions are short)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed, the same for every condition")
    p.add_argument("--train-seed", type=int, default=42, help="weights/dropout/data-order seed of every trial")
    p.add_argument("--pruners", default="none,median,hyperband",
                   help=f"comma-separated conditions from {', '.join(PRUNER_ARGS)}; 'none' is the baseline")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads, the same for every condition (0: torch's default)")
    p.add_argument("--json", default=None, help="write every figure to this file")
    args = p.parse_args(argv)
    args.pruners = [s.strip() for s in args.pruners.split(",") if s.strip()]
    unknown = [s for s in args.pruners if s not in PRUNER_ARGS]
    if unknown or "none" not in args.pruners:
        p.error(f"--pruners needs 'none' (the baseline) and names from {', '.join(PRUNER_ARGS)}; "
                f"got {unknown or args.pruners}")
    return args


def base_config(args: argparse.Namespace, out: str) -> RunConfig:
    return RunConfig().with_overrides([
        "task=classification", f"model.name={args.model}", f"data.dataset={args.dataset}",
        f"data.max_train_samples={args.train_samples}", f"data.max_eval_samples={args.eval_samples}",
        f"data.max_length={args.max_length}", f"train.max_steps={args.steps}",
        f"train.eval_every_n_steps={args.eval_every}", "train.save_every_n_steps=0", f"train.seed={args.train_seed}",
        "train.progress_bar=false", "train.tensorboard=false", f"output_dir={out}"])


def trial_record(t) -> dict:
    steps = int(t.user_attrs.get("steps_trained", 0))
    batch = int(t.params.get("batch_size", 0))
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "steps_trained": steps, "examples_trained": steps * batch,
            "pruned_at_step": t.user_attrs.get("pruned_at_step"),
            "intermediate": {int(s): v for s, v in sorted(t.intermediate_values.items())},
            "error": t.user_attrs.get("error"),
            "seconds": None if t.duration is None else round(t.duration.total_seconds(), 1)}


def print_trial(name: str, r: dict) -> None:
    p = r["params"]
    value = "" if r["value"] is None else f"{100 * r['value']:5.1f}"
    curve = " ".join(f"{100 * v:.0f}" for v in r["intermediate"].values())
    print(f"  {name:9s} #{r['number']:<3d} {r['state']:8s} lr {p.get('learning_rate', 0):.1e} bs "
          f"{p.get('batch_size', 0):>2} drop {p.get('dropout', 0):.2f}  steps {r['steps_trained']:>4}  "
          f"acc {value:>5}  evals [{curve}]  {r['seconds']} s" + (f"  error: {r['error']}" if r["error"] else ""),
          flush=True)


def run_condition(name: str, args: argparse.Namespace, root: str) -> dict:
    """One study of `args.trials` trials with this condition's pruner; per-trial lines as trials finish."""
    base = base_config(args, root)
    study = TuneStudy(base, space, n_trials=args.trials, pruner=PRUNER_ARGS[name], seed=args.seed,
                      study_dir=Path(root) / f"study-{name}", study_name=f"bench-{name}", keep_checkpoints="none")
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    study.run(background=True)
    shown: set[int] = set()
    while True:
        done = not study.is_running
        for t in study.finished_trials:
            if t.number not in shown:
                shown.add(t.number)
                print_trial(name, trial_record(t))
        if done:
            break
        time.sleep(1.0)
    study.wait()  # re-raises an error of the study thread
    wall_s = time.perf_counter() - start
    trials = [trial_record(t) for t in study.trials]
    states = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"]) if complete else {}
    return {"pruner": name, "pruner_class": type(study.study.pruner).__name__,
            "pruner_settings": pruner_settings(study), "trials": len(trials), "states": states,
            "steps_trained": sum(t["steps_trained"] for t in trials),
            "examples_trained": sum(t["examples_trained"] for t in trials), "wall_s": round(wall_s, 1),
            "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "best_value": best.get("value"), "best_trial": best.get("number"), "best_params": best.get("params"),
            "best_test_accuracy": test_accuracy(study.study.trials[best["number"]]) if best else None,
            "trial_records": trials}


def test_accuracy(trial) -> float | None:
    """The test-split accuracy a completed trial's run scored at its end (read from its metrics.jsonl): the
    best trial was chosen on validation, so its test score is the unbiased one."""
    path = Path(trial.user_attrs.get("run_dir", "")) / "metrics.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "end":
            return record.get("results", {}).get("test", {}).get("accuracy")
    return None


def pruner_settings(study: TuneStudy) -> dict:
    """The pruner's settings as Optuna holds them (private attributes: read for the record, never set)."""
    keep = ("_n_startup_trials", "_n_warmup_steps", "_interval_steps", "_percentile", "_min_resource",
            "_max_resource", "_reduction_factor", "_n_min_trials")
    return {k.lstrip("_"): v for k, v in vars(study.study.pruner).items()
            if k in keep and isinstance(v, (int, float, str))}


def compare(baseline: dict, other: dict) -> dict:
    def saved(key: str) -> float:
        return round(100.0 * (1 - other[key] / baseline[key]), 1) if baseline[key] else 0.0
    diff = None
    if baseline["best_value"] is not None and other["best_value"] is not None:
        diff = round(100.0 * (other["best_value"] - baseline["best_value"]), 2)
    steps_saved = saved("steps_trained")
    return {"steps_saved_pct": steps_saved, "examples_saved_pct": saved("examples_trained"),
            "wall_saved_pct": saved("wall_s"), "best_diff_points": diff,
            "meets_target": diff is not None and steps_saved >= TARGET_SAVING_PCT and diff >= -TARGET_POINTS}


def print_summary(results: dict, comparisons: dict) -> None:
    print(f"\n{'pruner':10s} {'complete':>8s} {'pruned':>6s} {'failed':>6s} {'steps':>6s} {'saved':>7s} "
          f"{'examples':>8s} {'saved':>7s} {'best val':>8s} {'diff pt':>7s} {'its test':>8s} {'wall s':>7s} "
          f"{'saved':>7s}")
    for name, r in results.items():
        c = comparisons.get(name, {})
        best = "-" if r["best_value"] is None else f"{100 * r['best_value']:.1f}"
        test = "-" if r["best_test_accuracy"] is None else f"{100 * r['best_test_accuracy']:.1f}"

        def pct(key: str) -> str:
            return f"{c[key]:.1f}%" if key in c else "-"
        diff = "-" if c.get("best_diff_points") is None else f"{c['best_diff_points']:+.1f}"
        print(f"{name:10s} {r['states']['COMPLETE']:>8d} {r['states']['PRUNED']:>6d} {r['states']['FAIL']:>6d} "
              f"{r['steps_trained']:>6d} {pct('steps_saved_pct'):>7s} {r['examples_trained']:>8d} "
              f"{pct('examples_saved_pct'):>7s} {best:>8s} {diff:>7s} {test:>8s} {r['wall_s']:>7.0f} "
              f"{pct('wall_saved_pct'):>7s}")
    for name, r in results.items():
        if r["best_params"]:
            p = r["best_params"]
            print(f"{name} best: trial {r['best_trial']}, lr {p['learning_rate']:.2e}, batch {p['batch_size']}, "
                  f"dropout {p['dropout']:.2f}")
    for name, c in comparisons.items():
        diff = "n/a" if c["best_diff_points"] is None else f"{c['best_diff_points']:+.1f}"
        print(f"{name}: saves {c['steps_saved_pct']:.1f}% of the steps (target >= {TARGET_SAVING_PCT:.0f}%) at a "
              f"best score {diff} points from no pruning (target: no worse than -{TARGET_POINTS:.0f}): "
              f"{'met' if c['meets_target'] else 'NOT met'}")


def warm_up(args: argparse.Namespace, root: str) -> None:
    """Build (not train) one run, untimed, so that imports and the model files' first read from disk are not
    charged to whichever condition happens to run first."""
    from nbtune.engine.run import Run
    from nbtune.tune.objective import free_memory, release
    cfg = base_config(args, root)
    cfg.run_name = "warm-up"
    release(Run(cfg))
    free_memory()


def main(argv=None) -> dict:
    import optuna
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{args.model} / {args.dataset}: {args.trials} trials per condition, {args.steps} steps each unless "
          f"pruned, validation ({args.eval_samples} rows) every {args.eval_every} steps, sampler seed {args.seed}; "
          f"space lr {LR_RANGE[0]:.0e}..{LR_RANGE[1]:.0e} (log), batch {list(BATCH_SIZES)}, dropout "
          f"{DROPOUT_RANGE[0]}..{DROPOUT_RANGE[1]}; torch threads {torch.get_num_threads()}", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="nbtune-tune-bench-") as root:
        warm_up(args, root)
        for name in args.pruners:  # the baseline is listed first by default; each condition runs to its end
            results[name] = run_condition(name, args, root)
    comparisons = {name: compare(results["none"], r) for name, r in results.items() if name != "none"}
    print_summary(results, comparisons)
    summary = {"bench": "tune_pruning", "settings": {k: v for k, v in vars(args).items() if k != "json"},
               "space": {"learning_rate": {"low": LR_RANGE[0], "high": LR_RANGE[1], "log": True},
                         "batch_size": list(BATCH_SIZES),
                         "dropout": {"low": DROPOUT_RANGE[0], "high": DROPOUT_RANGE[1]}},
               "targets": {"steps_saved_pct_at_least": TARGET_SAVING_PCT, "best_diff_points_at_least": -TARGET_POINTS},
               "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "optuna": optuna.__version__, "python": platform.python_version(),
                           "load_average": [round(x, 2) for x in os.getloadavg()]},
               "conditions": results, "comparisons": comparisons}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    print(json.dumps({"comparisons": comparisons, **{n: {k: r[k] for k in ("states", "steps_trained", "best_value",
                                                                           "wall_s")} for n, r in results.items()}}))
    return summary


if __name__ == "__main__":
    main()
