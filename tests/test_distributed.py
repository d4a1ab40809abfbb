"""`nbtune train` under torchrun with 2 gloo processes on CPU: both ranks end with the same weights."""
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt


@pytest.mark.integration
def test_torchrun_two_cpu_ranks_agree(tmp_path):
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=6", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", "run_name=ddp", "train.precision=fp32"])
    cfg.to_yaml(tmp_path / "tiny.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "nbtune.cli",
           "train", str(tmp_path / "tiny.yaml"), "--no-report"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    run_dir = tmp_path / "ddp"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    end = next(r for r in records if r["kind"] == "end")
    assert start["world_size"] == 2 and end["status"] == "finished"
    digests = end["results"]["weights_digest_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]

    # 64 rows / batch 8 = 8 batches a epoch, 4 per rank: 6 steps span 1.5 epochs.
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    saved = ckpt.latest(run_dir)
    assert {p.name for p in saved.iterdir()} >= {"rng-rank0.pt", "rng-rank1.pt", "model.safetensors"}
    assert load_file(str(saved / "model.safetensors"))  # loads, and the manifest verified above
