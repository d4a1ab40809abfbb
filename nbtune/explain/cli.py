"""`nbtune explain`: the review report (nbtune.explain.report) for a run directory, one of its checkpoints, or a
model directory saved with `run.save_pretrained`, on probe texts given on the command line, read from a file,
or picked from the run's validation data (the wrong and the most uncertain predictions).

    nbtune explain runs/minilm-intents-en-20260101 --text "turn the kitchen lights on" --text "what time is it"
    nbtune explain runs/minilm-intents-en-20260101 --auto 6 --methods shap,ig,attention --output review.html

Bad input (a missing directory, an unknown method, an empty probes file) exits with status 2 and a message
that says what to change. This module imports only argparse at load time (the parser is built on every
`nbtune` call); the models and explainers are imported when the command runs.

Example (what nbtune/cli.py does):
    >>> parser = argparse.ArgumentParser(prog="nbtune"); sub = parser.add_subparsers(dest="command")
    >>> _ = add_parser(sub)
    >>> main(parser.parse_args(["explain", "runs/demo", "--text", "turn on the lights"]))   # doctest: +SKIP
    0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = "explain-report.html"
TASK_OF_ARCHITECTURE = (("ForSequenceClassification", "classification"),
                        ("ForTokenClassification", "token-classification"), ("ForCausalLM", "causal-lm"))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `explain` subcommand on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "explain", help="explain a model's predictions on probe texts: a standalone HTML review report",
        description="SHAP, LIME, integrated gradients and attention side by side for a few probe texts, with "
                    "agreement, faithfulness and (for a run with 2+ checkpoints) explanation drift, written as "
                    "one HTML file that needs no kernel and loads nothing remote.")
    p.add_argument("source", metavar="RUN_DIR", help="a run directory (its newest complete checkpoint), a "
                   "checkpoint directory, or a model directory written by run.save_pretrained")
    p.add_argument("--text", action="append", default=[], help="a probe text (repeat for several)")
    p.add_argument("--probes-file", metavar="FILE", help="probe texts, one per line (blank lines are skipped)")
    p.add_argument("--auto", type=int, default=0, metavar="N", help="add N probes from the run's validation "
                   "data: the wrong predictions (most confident first) and the most uncertain ones")
    p.add_argument("--methods", default="shap,lime,ig,attention",
                   help="comma-separated, from shap, lime, ig, grad_x_input, attention (default: %(default)s)")
    p.add_argument("--target", help="the class to explain, a label name or index (default: each probe's "
                   "predicted class)")
    p.add_argument("--task", choices=("classification", "token-classification", "causal-lm"),
                   help="a saved model directory's task (default: from its config.json architecture)")
    p.add_argument("--word", type=int, help="token-classification: the index of the word explained")
    p.add_argument("--continuation", help="causal-lm: the continuation explained (default: the greedy next token)")
    p.add_argument("--output", "-o", default=DEFAULT_OUTPUT, help="the report file (default: %(default)s)")
    p.add_argument("--max-evals", type=int, default=300, help="SHAP evaluations per probe (default: %(default)s)")
    p.add_argument("--lime-samples", type=int, default=1000, help="LIME samples per probe (default: %(default)s)")
    p.add_argument("--ig-steps", type=int, default=50, help="integrated-gradients steps (default: %(default)s)")
    p.add_argument("--no-drift", action="store_true", help="skip explanation drift across the run's checkpoints")
    p.add_argument("--device", help="where the model runs (default: cpu for checkpoints, as loaded otherwise)")
    return p


def main(args: argparse.Namespace) -> int:
    """Run `nbtune explain`: 0 when the report was written, 2 with a message on stderr for bad input."""
    from nbtune.explain.types import ExplainError
    try:
        return _explain(args)
    except ExplainError as exc:
        print(f"nbtune explain: error: {exc}", file=sys.stderr)
        return 2


def _explain(args: argparse.Namespace) -> int:
    from nbtune.explain.report import Budget, build_report, check_methods
    from nbtune.explain.types import ExplainError
    methods = check_methods(args.methods.split(","))
    for flag, value, least in (("--max-evals", args.max_evals, 2), ("--lime-samples", args.lime_samples, 2),
                               ("--ig-steps", args.ig_steps, 1), ("--auto", args.auto, 0)):
        if value < least:
            raise ExplainError(f"{flag} {value}: use at least {least}")
    texts = [t for t in args.text if t.strip()] + (read_probes_file(args.probes_file) if args.probes_file else [])
    if not texts and not args.auto:
        raise ExplainError("no probe texts: pass --text TEXT (repeatable), --probes-file FILE or --auto N")
    _quiet_libraries()
    em, run_dir, checkpoint = open_source(Path(args.source), task=args.task, device=args.device)
    probes: list[Any] = list(texts)
    if args.auto:
        if checkpoint is None:
            raise ExplainError(f"--auto picks probes from a run's validation data, but {args.source} is a saved "
                               "model directory: pass a run directory, or probe texts with --text/--probes-file")
        from nbtune.explain.examples import pick_examples
        probes += pick_examples(em, *validation_rows(checkpoint), n=args.auto)
    target = int(args.target) if args.target is not None and args.target.lstrip("-").isdigit() else args.target
    budget = Budget(shap_max_evals=args.max_evals, lime_samples=args.lime_samples, ig_steps=args.ig_steps)
    print(f"nbtune explain: {len(probes)} probe(s), methods {', '.join(methods)}", flush=True)
    report = build_report(em, probes, methods=methods, targets=target, run_dir=run_dir, budget=budget,
                          drift=not args.no_drift, word=args.word, continuation=args.continuation,
                          progress=lambda message: print(f"  {message}", flush=True))
    for i, probe in enumerate(report.probes):
        for method, message in probe.errors.items():
            print(f"nbtune explain: warning: probe {i + 1}: {method} could not run: {message}", file=sys.stderr)
    print(f"report: {report.write_report(Path(args.output))}")
    return 0


def read_probes_file(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file; ExplainError naming the file when it is missing or empty.

        >>> read_probes_file("probes.txt")           # doctest: +SKIP
        ['turn on the lights', 'what time is it']
    """
    from nbtune.explain.types import ExplainError
    path = Path(path)
    if not path.is_file():
        raise ExplainError(f"--probes-file {path}: no such file (expected a text file with one probe per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ExplainError(f"--probes-file {path}: not UTF-8 text ({exc})") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ExplainError(f"--probes-file {path} has no probe texts: write one text per line")
    return texts


def open_source(path: Path, *, task: str | None = None, device: str | None = None):
    """(ExplainModel, run directory or None, checkpoint directory or None) for a run directory (its newest
    complete checkpoint), a checkpoint directory, or a saved model directory.

        >>> em, run_dir, checkpoint = open_source(Path("runs/demo"))   # doctest: +SKIP
    """
    from nbtune.engine import checkpoint as ckpt
    from nbtune.explain.drift import _CheckpointModels
    from nbtune.explain.model import ExplainModel
    from nbtune.explain.types import ExplainError
    if not path.exists():
        raise ExplainError(f"{path} does not exist: pass a run directory, a checkpoint directory or a model "
                           "directory saved with run.save_pretrained")
    if (path / "checkpoints").is_dir():
        found = ckpt.latest(path)
        if found is None:
            raise ExplainError(f"{path}: no complete checkpoint under {path / 'checkpoints'} (was training "
                               "interrupted before the first save?)")
        run_dir, checkpoint = path, found
    elif (path / ckpt.MANIFEST).is_file():
        try:
            ckpt.verify(path)
        except ckpt.CheckpointError as exc:
            raise ExplainError(str(exc)) from None
        run_dir, checkpoint = path.parent.parent, path
    elif (path / "config.json").is_file():
        em = ExplainModel.from_pretrained(path, task or _task_of(path), **({"device": device} if device else {}))
        if device:
            em.model.to(device)
        return em, None, None
    else:
        raise ExplainError(f"{path} is not a run directory (no checkpoints/), a checkpoint (no {ckpt.MANIFEST}) "
                           "or a saved model directory (no config.json)")
    loader = _CheckpointModels(checkpoint, device)
    return loader.load(checkpoint), run_dir, checkpoint


def _task_of(path: Path) -> str:
    architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    for suffix, task in TASK_OF_ARCHITECTURE:
        if any(str(a).endswith(suffix) for a in architectures):
            return task
    from nbtune.explain.types import ExplainError
    raise ExplainError(f"{path}/config.json names architectures {architectures}: pass --task classification, "
                       "token-classification or causal-lm")


def validation_rows(checkpoint: Path) -> tuple[list[str], list[str]]:
    """(texts, gold label names) of the validation split of the run that wrote `checkpoint`, loaded as the
    run loaded it (bundled dataset or file from its saved config).

        >>> texts, labels = validation_rows(Path("runs/demo/checkpoints/step-000300"))   # doctest: +SKIP
    """
    from nbtune.assets import AssetError
    from nbtune.config import ConfigError, RunConfig
    from nbtune.engine import build, checkpoint as ckpt
    from nbtune.engine.tasks import DataError
    from nbtune.explain.types import ExplainError
    saved = json.loads((checkpoint / ckpt.TRAINER_STATE).read_text(encoding="utf-8"))
    try:
        cfg = RunConfig.from_dict(saved["config"])
        dataset, _ = build.load_data(cfg)
    except (AssetError, ConfigError, DataError, OSError) as exc:
        raise ExplainError(f"--auto needs the run's validation data, which could not be loaded: {exc} "
                           "(a dataset passed to Run in memory is not saved with the run); pass probe texts "
                           "with --text or --probes-file") from None
    split = dataset["validation"]
    texts, labels = list(split[cfg.data.text_column]), list(split[cfg.data.label_column])
    names = getattr(split.features[cfg.data.label_column], "names", None)
    return texts, [names[int(y)] if names else str(y) for y in labels]


def _quiet_libraries() -> None:
    # The load reports of transformers read like errors in a CLI log; real warnings still show.
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
