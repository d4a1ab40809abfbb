"""`nbtune export RUN_DIR`: rebuild the run from its newest checkpoint (or a given checkpoint directory), then
merge, export to ONNX (+ int8), check parity on the test split, time it and write a Triton repository.

    nbtune export runs/minilm-intents-en-20260101                     # -> runs/.../export/
    nbtune export runs/minilm-intents-en-20260101 --quantize none --no-triton --out /tmp/served

Exit status: 0 when every parity threshold holds, 1 when one is missed (the report says which; the files are
written), 2 for bad input (a missing directory, no checkpoint, an unknown option value). This module imports
only argparse at load time.

Example (what nbtune/cli.py does):
    >>> parser = argparse.ArgumentParser(prog="nbtune"); sub = parser.add_subparsers(dest="command")
    >>> _ = add_parser(sub)
    >>> main(parser.parse_args(["export", "runs/demo", "--quantize", "none"]))     # doctest: +SKIP
    0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `export` subcommand; returns its parser."""
    p = subparsers.add_parser("export", help="merge, export to ONNX (+int8), check parity and latency, write a "
                              "Triton repository", description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="RUN_DIR", help="a run directory (its newest complete checkpoint) or one of "
                   "its checkpoint directories")
    p.add_argument("--out", help="output directory (default: RUN_DIR/export)")
    p.add_argument("--quantize", default="int8", choices=("int8", "none"), help="dynamic int8 graph too (int8)")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton model repository")
    p.add_argument("--no-latency", action="store_true", help="skip the latency and throughput measurement")
    p.add_argument("--latency-calls", type=int, default=60, help="single-row calls timed per backend (60)")
    p.add_argument("--max-logit-diff", type=float, default=1e-4, help="fp32 parity threshold (1e-4)")
    p.add_argument("--min-int8-agreement", type=float, default=0.99, help="int8 label agreement (0.99)")
    p.add_argument("--max-int8-drop", type=float, default=0.01, help="int8 task-metric drop, as a fraction (0.01)")
    p.add_argument("--split", default="test", help="held-out split for parity and latency (test)")
    return p


def main(args: argparse.Namespace) -> int:
    from nbtune.assets import AssetError
    from nbtune.config import ConfigError
    from nbtune.engine.checkpoint import CheckpointError
    from nbtune.engine.run import Run
    from nbtune.engine.tasks import DataError
    from nbtune.export.types import ExportError, ParityError
    source = Path(args.source)
    if not source.is_dir():
        print(f"nbtune: error: {source}: no such run or checkpoint directory", file=sys.stderr)
        return 2
    try:
        run = Run.resume(source)
        print(f"nbtune: exporting {run!r}", flush=True)
        report = run.export("onnx", quantize=None if args.quantize == "none" else "int8", output_dir=args.out,
                            triton=not args.no_triton, latency=not args.no_latency,
                            latency_calls=args.latency_calls, max_logit_diff=args.max_logit_diff,
                            min_int8_agreement=args.min_int8_agreement, max_int8_metric_drop=args.max_int8_drop,
                            parity_split=args.split, on_stage=lambda s: print(f"  {s}", flush=True))
    except ParityError as exc:
        print(exc.report.summary())
        print(f"nbtune: {exc}", file=sys.stderr)
        return 1
    except (ExportError, CheckpointError, ConfigError, AssetError, DataError) as exc:
        print(f"nbtune: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
