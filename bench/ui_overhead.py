"""What the live train panel costs a fast loop (catalogue I1: throughput with the panel >= 95% of headless).

Run (from the repository root):
    .venv/bin/python bench/ui_overhead.py                    # 60,000 steps of 400 us a trial, 3 pairs
    .venv/bin/python bench/ui_overhead.py --steps 20000 --pairs 2 --json out.json

One real kernel (jupyter_client), side by side: a step loop that spins `--step-us` of CPU a step (the catalogue's
>= 2,000 steps/s; a loop of nothing would time only the sinks) and writes a step record (tests/support/flood.py's
`step_record`) to the run's sinks, once with no sink (headless) and once with a displayed
`TrainPanel` attached (its pump renders at most 10 times a second, from its own thread, while the loop runs).
Pairs alternate their order so CPU clock changes favour neither side. Prints steps/s and the ratio per pair and
the median ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = f"""
import sys, json, time, tempfile
sys.path.insert(0, {str(REPO)!r})
from IPython.display import display
from nbtune.ui.panels.train import TrainPanel
from tests.support.flood import fake_run, step_record

def loop(run, steps, step_s):
    for sink in run.sinks:
        sink.write({{"kind": "start", "total_steps": steps, "model": "noop", "dataset": "noop"}})
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        spin_until = time.perf_counter() + step_s  # the step's compute, holding the GIL as Python code does
        while time.perf_counter() < spin_until:
            pass
        record = step_record(step, time.time())
        for sink in run.sinks:
            sink.write(record)
    seconds = time.perf_counter() - t0
    for sink in run.sinks:
        sink.write({{"kind": "end", "status": "finished", "step": steps, "time": time.time()}})
        sink.close()
    return seconds
"""
TRIAL = """
run = fake_run(tempfile.mkdtemp(prefix='nbtune-bench-'), total_steps={steps})
panel = None
if {panel}:
    panel = TrainPanel(run); display(panel)
seconds = loop(run, {steps}, {step_us} / 1e6)
if panel is not None:
    panel.close()
print(json.dumps({{'seconds': seconds, 'renders': panel.pump.renders if panel else 0,
                   'render_cpu_s': panel.pump.busy_cpu_s if panel else 0.0}}))
"""


def _run(kc, code: str) -> str:
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=600)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--step-us", type=float, default=400.0, help="CPU time of one step, in microseconds")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(REPO))
    try:
        _run(kc, SETUP)
        _run(kc, TRIAL.format(steps=2000, panel=True, step_us=args.step_us))  # warm-up: plotly and widget imports, first figures
        pairs = []
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {p: json.loads(_run(kc, TRIAL.format(steps=args.steps, panel=p, step_us=args.step_us)).strip().splitlines()[-1])
                   for p in order}
            ratio = got[False]["seconds"] / got[True]["seconds"]  # throughput with panel / headless
            pairs.append({"headless_steps_per_s": args.steps / got[False]["seconds"],
                          "panel_steps_per_s": args.steps / got[True]["seconds"], "ratio": ratio,
                          "renders": got[True]["renders"], "render_cpu_s": got[True]["render_cpu_s"]})
            p = pairs[-1]
            print(f"pair {i + 1}: headless {p['headless_steps_per_s']:,.0f} steps/s, panel "
                  f"{p['panel_steps_per_s']:,.0f} steps/s, ratio {ratio:.3f} ({p['renders']} renders, "
                  f"{p['render_cpu_s']:.2f} s render CPU)")
        median = statistics.median(p["ratio"] for p in pairs)
        print(f"median throughput with the panel: {median:.1%} of headless (goal >= 95%)")
        if args.json:
            Path(args.json).write_text(json.dumps({"steps": args.steps, "step_us": args.step_us, "pairs": pairs, "median_ratio": median,
                                                   "measured": time.strftime("%Y-%m-%d")}, indent=1))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


if __name__ == "__main__":
    main()
