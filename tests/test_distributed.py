"""`nbtune train` under two launchers with 2 gloo processes on CPU: torchrun, and accelerate launch.

`accelerate launch --cpu --num_processes 2` starts a single process (it needs MPI for multi-CPU), so on a CPU
machine we launch accelerate's torch.distributed path with --multi_gpu; without CUDA its ranks use gloo.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate": [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"],
}


def _train(tmp_path: Path, launcher: str, methods: list | None = None) -> Path:
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=6", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", f"run_name={launcher}", "train.precision=fp32"])
    cfg.methods = methods or []
    cfg.to_yaml(tmp_path / f"{launcher}.yaml")
    cmd = LAUNCHERS[launcher] + ["-m", "nbtune.cli", "train", str(tmp_path / f"{launcher}.yaml"), "--no-report"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / launcher


@pytest.mark.integration
def test_two_cpu_ranks_agree_under_both_launchers(tmp_path):
    digests = {}
    for launcher in LAUNCHERS:
        run_dir = _train(tmp_path, launcher)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        start = next(r for r in records if r["kind"] == "start")
        end = next(r for r in records if r["kind"] == "end")
        assert start["world_size"] == 2 and end["status"] == "finished", launcher
        by_rank = end["results"]["weights_digest_by_rank"]
        assert len(by_rank) == 2 and by_rank[0] == by_rank[1], launcher
        digests[launcher] = by_rank[0]
        # 64 rows / batch 8 = 8 batches an epoch, 4 per rank: 6 steps span 1.5 epochs.
        assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
        saved = ckpt.latest(run_dir)
        assert {p.name for p in saved.iterdir()} >= {"rng-rank0.pt", "rng-rank1.pt", "model.safetensors"}
        assert load_file(str(saved / "model.safetensors"))
    # Same config, same data plan: the two launchers must produce bit-identical weights.
    assert digests["torchrun"] == digests["accelerate"]


@pytest.mark.integration
def test_methods_under_ddp_ranks_agree(tmp_path):
    """Progressive unfreezing freezes parameters DDP wrapped as trainable (find_unused_parameters), layer_lr
    groups and a curriculum plan sharded per rank: both ranks end with the same weights."""
    methods = [{"name": "layer_lr", "lr": {"embeddings": 1e-5}, "layer_decay": 0.8},
               {"name": "unfreeze", "every_n_steps": 2}, {"name": "curriculum", "start": 0.5}]
    run_dir = _train(tmp_path, "torchrun", methods)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    end = next(r for r in records if r["kind"] == "end")
    assert end["status"] == "finished" and len(set(end["results"]["weights_digest_by_rank"])) == 1
    assert [r["step"] for r in records if r.get("kind") == "edit" and r["name"] == "unfreeze"] == [0, 2, 4, 6]
