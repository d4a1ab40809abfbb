"""Command line: `nbtune demo`, `nbtune train run.yaml [section.key=value ...]`, `nbtune tune run.yaml --trials N`,
`nbtune explain RUN_DIR --auto 5`, `nbtune export RUN_DIR [--quantize int8]`, `nbtune env`.

`nbtune train` works unchanged under a launcher, one process per rank (docs/scale-out.md):
    torchrun --nproc_per_node 2 -m nbtune.cli train run.yaml                      # CPU: gloo
    accelerate launch --multi_gpu --num_processes 2 -m nbtune.cli train run.yaml  # GPUs (on a CPU machine: gloo)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The demo: the bundled MiniLM encoder on the bundled English smart-home intents (35 classes).
DEMO_OVERRIDES = [
    "task=classification", "model.name=minilm", "data.dataset=intents-en", "data.max_train_samples=6000",
    "data.max_length=64", "train.learning_rate=2e-4", "train.batch_size=32", "train.num_train_epochs=2",
    "train.warmup_ratio=0.06", "train.eval_every_n_steps=125",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbtune", description="Fine-tune transformer models (headless CLI).")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fine-tune the bundled MiniLM on the bundled intents and write a report")
    demo.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=1")
    demo.add_argument("--output-dir", default="runs", help="where the run directory is created (default: runs)")
    train = sub.add_parser("train", help="run a YAML config")
    train.add_argument("config", help="a run.yaml (see `nbtune demo`'s run directory for a complete example)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=3e-4")
    train.add_argument("--resume", metavar="PATH", help="continue from a checkpoint or run directory")
    train.add_argument("--no-report", action="store_true", help="skip report.html")
    tune = sub.add_parser("tune", help="hyperparameter search (Optuna TPE + pruning) over a YAML config")
    tune.add_argument("config", help="the base run.yaml; each trial changes the searched keys only")
    tune.add_argument("overrides", nargs="*", help="section.key=value overrides of the base config")
    tune.add_argument("--trials", type=int, default=20, help="trials in the study, counting finished ones (20)")
    tune.add_argument("--space", metavar="YAML", help="a hyperopt-style space, e.g. `lr: [loguniform, -13.8, "
                      "-9.9]`, `batch_size: [choice, [8, 16]]` (default: the guide's lr/batch/dropout table)")
    tune.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    tune.add_argument("--metric", default="accuracy", help="validation metric to optimise (accuracy)")
    tune.add_argument("--direction", default=None, choices=("maximize", "minimize"),
                      help="default: minimize for loss/perplexity, else maximize")
    tune.add_argument("--study-dir", help="where study.db and the trials' runs go (default: "
                      "<output_dir>/tune-<study name>); the same directory resumes the study")
    tune.add_argument("--keep-checkpoints", default="best", choices=("best", "all", "none"))
    from nbtune.explain.cli import add_parser as add_explain_parser  # argparse only: cheap
    from nbtune.export.cli import add_parser as add_export_parser
    add_explain_parser(sub)
    add_export_parser(sub)
    sub.add_parser("env", help="check this machine: devices, precision support, versions, bundled assets")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "explain":
        _quiet_libraries()
        from nbtune.explain.cli import main as explain_main
        return explain_main(args)
    if args.command == "export":
        _quiet_libraries()
        from nbtune.export.cli import main as export_main
        return export_main(args)
    if args.command == "env":
        from nbtune.envcheck import main as env_main
        return env_main([])
    from nbtune.assets import AssetError
    from nbtune.config import ConfigError, RunConfig
    from nbtune.engine.checkpoint import CheckpointError
    from nbtune.engine.tasks import DataError
    if args.command == "tune":
        return _tune_command(args)
    try:
        if args.command == "demo":
            cfg = RunConfig(output_dir=args.output_dir).with_overrides(DEMO_OVERRIDES + list(args.overrides))
            return _train(cfg, resume=None, report=True, save_model=True)
        cfg = RunConfig.from_yaml(Path(args.config)).with_overrides(args.overrides)
        return _train(cfg, resume=args.resume, report=not args.no_report, save_model=False)
    except (ConfigError, AssetError, CheckpointError, DataError, FileNotFoundError) as exc:
        print(f"nbtune: error: {exc}", file=sys.stderr)
        return 2


def _train(cfg, resume: str | None, report: bool, save_model: bool) -> int:
    _quiet_libraries()
    from nbtune.engine.run import Run
    run = Run.resume(resume, cfg) if resume else Run(cfg)
    main_process = run.accelerator.is_main_process
    if main_process:
        print(f"nbtune: {run!r}\n  run directory: {run.run_dir}", flush=True)
    run.start()
    if not main_process:
        return 0
    if save_model:
        run.save_pretrained(run.run_dir / "model")
    test = run.results.get("test", {})
    shown = {k: round(v, 4) for k, v in test.items() if isinstance(v, float)}
    print(f"\nheld-out test ({len(run.data.rows['test'])} rows): " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    (run.run_dir / "results.json").write_text(json.dumps(run.results, indent=1), encoding="utf-8")
    if report:
        from nbtune.ui.report import write_report
        print(f"report: {write_report(run.run_dir)}")
    print(f"checkpoint: {run.run_dir / 'checkpoints'}\nmetrics: {run.run_dir / 'metrics.jsonl'}")
    return 0


def _tune_command(args) -> int:
    from nbtune.assets import AssetError
    from nbtune.config import ConfigError, RunConfig
    try:
        from nbtune.tune import SpaceError, TuneError, TuneStudy
        cfg = RunConfig.from_yaml(Path(args.config)).with_overrides(args.overrides)
        space = _space_from_yaml(Path(args.space)) if args.space else None
        direction = args.direction or ("minimize" if args.metric in ("loss", "perplexity") else "maximize")
        options = {"space": space} if space is not None else {}
        study = TuneStudy(cfg, n_trials=args.trials, pruner=None if args.pruner == "none" else args.pruner,
                          metric=args.metric, direction=direction, study_dir=args.study_dir,
                          keep_checkpoints=args.keep_checkpoints, **options)
    except ImportError as exc:
        print(f"nbtune: error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, AssetError, SpaceError, TuneError, FileNotFoundError) as exc:
        print(f"nbtune: error: {exc}", file=sys.stderr)
        return 2
    _quiet_libraries()
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = len(study.finished_trials)
    print(f"nbtune: {study!r}\n  storage: {study.study_dir / 'study.db'}"
          + (f"\n  resuming: {done} trials already finished" if done else ""), flush=True)
    study.run()
    for t in study.trials:
        note = t.user_attrs.get("error") or (f"pruned at step {t.user_attrs['pruned_at_step']}"
                                             if "pruned_at_step" in t.user_attrs else "")
        value = "" if t.value is None else f"{args.metric} {t.value:.4f}"
        print(f"  trial {t.number:3d} {t.state.name.lower():8s} {value:18s} {t.params} {note}")
    total = sum(study.steps_trained.values())
    try:
        best = study.best_trial
    except ValueError:
        print(f"no trial completed ({total} steps trained)", file=sys.stderr)
        return 1
    promoted = study.promote(best.number)
    config_path = study.study_dir / f"best-trial-{best.number}.yaml"
    promoted.config.to_yaml(config_path)
    print(f"best: trial {best.number}, {args.metric} {best.value:.4f}, {best.params}\nsteps trained: {total}\n"
          f"best config: {config_path}  (nbtune train {config_path}"
          + (f" --resume {promoted.checkpoint})" if promoted.checkpoint else ")"))
    return 0


def _space_from_yaml(path: Path):
    import yaml
    from nbtune.tune import SpaceError, from_hyperopt
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{path}: expected a mapping of keys to distributions, e.g. "
                         f"`lr: [loguniform, -13.8, -9.9]`, got {type(data).__name__}")
    return from_hyperopt(data)


def _quiet_libraries() -> None:
    # The "newly initialized classifier weights" notice is expected when fine-tuning; keep real warnings.
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
