"""B2 across processes: a checkpoint write that fails on one rank of a 2-process gloo run. Every rank must learn of
it and raise the same CheckpointError; before the ranks agreed on the outcome, rank 0 waited at the post-write
barrier for a rank that had raised, and the run hung."""
import subprocess
import sys
from pathlib import Path

import pytest

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt

RANK_SCRIPT = '''
import errno, os, sys, torch
from nbtune.config import RunConfig
from nbtune.engine.run import Run

rank, real_save = int(os.environ["RANK"]), torch.save

def save(obj, f, *args, **kwargs):  # the disk fills while rank 1 writes its RNG state into the step-4 checkpoint
    if rank == 1 and "step-000004" in str(f) and "rng-rank1" in str(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return real_save(obj, f, *args, **kwargs)

torch.save = save
run = Run(RunConfig.from_yaml(sys.argv[1]))
try:
    run.start()
except Exception as exc:
    print(f"rank {rank} raised {type(exc).__name__}: {exc}", flush=True)
    sys.exit(3)
print(f"rank {rank} finished", flush=True)
'''


@pytest.mark.integration
def test_B2_a_write_failing_on_one_rank_fails_the_save_on_every_rank(tmp_path):
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=6", "train.save_every_n_steps=2", "train.progress_bar=false",
        "train.tensorboard=false", "train.precision=fp32", f"output_dir={tmp_path}", "run_name=two"])
    cfg.to_yaml(tmp_path / "two.yaml")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "rank.py"),
           str(tmp_path / "two.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # a hang fails here, after 300 s
    lines = [line for line in out.stdout.splitlines() if line.startswith("rank ")]
    assert out.returncode != 0 and len(lines) == 2, out.stdout[-2000:] + out.stderr[-3000:]
    for rank in (0, 1):
        [line] = [line for line in lines if line.startswith(f"rank {rank} ")]
        assert "raised CheckpointError: checkpoint save failed: rank 1: No space left on device — kept step 2" in line
        assert "the step-4 save was removed" in line
    root = tmp_path / "two" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]       # no staging or partial step 4 left
    assert ckpt.latest(tmp_path / "two") == root / "step-000002"
