"""Runs one training phase in a fresh process, for tests that need process isolation (resume, DDP).

Usage: python train_worker.py '<json spec>'
spec: {"overrides": [...], "run_dir": str, "stop_at": [step, micro] | null,
       "edits": [[step, name, value], ...], "resume": path | null}
"""
import json
import sys

from nbtune.config import RunConfig
from nbtune.engine.run import Run


def main(spec: dict) -> None:
    cfg = RunConfig().with_overrides(spec["overrides"])
    run = Run.resume(spec["resume"], cfg) if spec.get("resume") else Run(cfg, run_dir=spec["run_dir"])
    for step, name, value in spec.get("edits", []):
        if step >= run.state.step:
            if name in ("freeze", "unfreeze"):
                getattr(run.control, name)(value, at_step=step)
            else:
                run.control.set(name, value, at_step=step)
    if spec.get("stop_at"):
        run.control.stop(at_step=spec["stop_at"][0], at_micro_step=spec["stop_at"][1])
    run.start()
    print(json.dumps({"status": run.state.status, "step": run.state.step, "run_dir": str(run.run_dir)}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
