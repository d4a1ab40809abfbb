"""Command line: `nbtune demo`, `nbtune train run.yaml [section.key=value ...]`, `nbtune env`.

`nbtune train` works unchanged under a launcher, one process per rank:
    torchrun --nproc_per_node 2 -m nbtune.cli train run.yaml        # CPU: gloo
    accelerate launch --num_processes 2 -m nbtune.cli train run.yaml   # GPUs
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
    sub.add_parser("env", help="check this machine: devices, precision support, versions, bundled assets")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "env":
        from nbtune.envcheck import main as env_main
        return env_main([])
    from nbtune.assets import AssetError
    from nbtune.config import ConfigError, RunConfig
    from nbtune.engine.checkpoint import CheckpointError
    from nbtune.engine.tasks import DataError
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


def _quiet_libraries() -> None:
    # The "newly initialized classifier weights" notice is expected when fine-tuning; keep real warnings.
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
