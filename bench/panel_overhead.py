"""What the live panel costs: the same run trained headless and with `run.panel()` displayed, in a real
kernel driven by nbclient, interleaved, several pairs; prints the median slowdown (goal: <= 3%).

Run (from the repository root):
    .venv/bin/python bench/panel_overhead.py                 # MiniLM on intents-en, 60 steps, 3 pairs
    .venv/bin/python bench/panel_overhead.py --steps 120 --pairs 5 --json out.json

Each trial is a fresh kernel executing one notebook: build the run (untimed), optionally display the panel,
then time `run.start()` in the foreground, so the pump thread renders at up to 10 Hz while training runs.
Pairs alternate their order (headless first, then panel first) so CPU clock changes favour neither side.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import nbformat
from nbclient import NotebookClient

CELL = '''
import json, time
import nbtune as nt
cfg = nt.RunConfig(model="minilm", data="intents-en").with_overrides([
    "train.max_steps={steps}", "train.batch_size=32", "train.lr=2e-4", "train.eval_every_n_steps=1000000",
    "data.max_eval_samples=64", "train.progress_bar=false", "train.tensorboard=false", "output_dir={out}"])
run = nt.Run(cfg)
'''
PANEL = "panel = run.panel()\npanel"
TIMED = ("t0 = time.perf_counter(); run.start(); seconds = time.perf_counter() - t0\n"
         "pump = panel.pump if {panel} else None\n"
         "if pump: pump.join(30)\n"
         "print(json.dumps({{'seconds': seconds, 'steps': run.state.step, 'panel': {panel}, "
         "'renders': pump.renders if pump else 0, 'render_wall_s': pump.busy_s if pump else 0, "
         "'render_cpu_s': pump.busy_cpu_s if pump else 0}}))")


def trial(steps: int, with_panel: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cells = [nbformat.v4.new_code_cell(CELL.format(steps=steps, out=out))]
        if with_panel:
            cells.append(nbformat.v4.new_code_cell(PANEL))
        cells.append(nbformat.v4.new_code_cell(TIMED.format(panel=with_panel)))
        nb = nbformat.v4.new_notebook(cells=cells)
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": out}}).execute()
        text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
        return json.loads(text.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    trial(8, False)  # warm-up: imports, the dataset build and the MiniLM load are cached by the OS
    pairs = []
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        result = {mode: trial(args.steps, mode) for mode in order}
        slowdown = result[True]["seconds"] / result[False]["seconds"] - 1
        p = result[True]
        pairs.append({"headless_s": result[False]["seconds"], "panel_s": p["seconds"], "slowdown": slowdown,
                      "renders": p["renders"], "render_wall_s": p["render_wall_s"],
                      "render_cpu_s": p["render_cpu_s"]})
        print(f"pair {i + 1}/{args.pairs}: headless {result[False]['seconds']:.2f} s, with panel "
              f"{p['seconds']:.2f} s, slowdown {slowdown:+.1%}; {p['renders']} renders took "
              f"{p['render_wall_s']:.2f} s wall, {p['render_cpu_s']:.2f} s CPU "
              f"({p['render_cpu_s'] / p['seconds']:.1%} of the run)", flush=True)
    slowdowns = [p["slowdown"] for p in pairs]
    cpu_share = statistics.median(p["render_cpu_s"] / p["panel_s"] for p in pairs)
    print(f"median slowdown with the panel: {statistics.median(slowdowns):+.1%} "
          f"(range {min(slowdowns):+.1%}..{max(slowdowns):+.1%}, {args.pairs} pairs, {args.steps} steps; goal <= +3%); "
          f"rendering used {cpu_share:.1%} of the run's wall time in CPU (median)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"steps": args.steps, "pairs": pairs, "median_slowdown": statistics.median(slowdowns),
                   "median_render_cpu_share": cpu_share}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
