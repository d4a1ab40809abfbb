"""`nbtune train` under two launchers with 2 gloo processes on CPU: torchrun, and accelerate launch.

`accelerate launch --cpu --num_processes 2` starts a single process (it needs MPI for multi-CPU), so on a CPU
machine we launch accelerate's torch.distributed path with --multi_gpu; without CUDA its ranks use gloo.
"""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, load_model

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine import loop
from nbtune.engine.sinks import MemorySink
from nbtune.engine.run import Run
from nbtune.methods.lora import merge_adapters

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate": [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"],
}


def _config(tmp_path: Path, run_name: str, methods: list | None = None, extra: tuple = ()) -> RunConfig:
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=6", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", f"run_name={run_name}", "train.precision=fp32", *extra])
    cfg.methods = methods or []
    return cfg


def _train(tmp_path: Path, launcher: str, methods: list | None = None, extra: tuple = (),
           cfg: RunConfig | None = None) -> Path:
    cfg = cfg or _config(tmp_path, launcher, methods, extra)
    cfg.to_yaml(tmp_path / f"{cfg.run_name}.yaml")
    cmd = LAUNCHERS[launcher] + ["-m", "nbtune.cli", "train", str(tmp_path / f"{cfg.run_name}.yaml"), "--no-report"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / cfg.run_name


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


# Measured on this config (2 gloo processes vs 1 process, fp32 CPU): max |difference| of the merged weights 0.0,
# bit-identical, since (g0 + g1) / 2 and g0 / 2 + g1 / 2 round alike; 3+ processes sum in another order, so the
# bound allows float rounding (docs/scale-out.md).
MERGED_ATOL = 1e-5


@pytest.mark.integration
def test_lora_two_processes_equal_one_with_accumulation(tmp_path):
    """The acceptance check: a 2-process `accelerate launch` of a LoRA run writes one merged metrics stream
    (each step's loss is the mean of both ranks' losses), and its merged weights equal a 1-process run of the same
    config with gradient_accumulation_steps=2, up to float tolerance. Dropout is off (model and adapters), since
    each rank draws its own dropout masks. 64 rows / batch 8 = 8 batches an epoch: a multiple of 2, so no
    remainder batch is dropped by the sharding."""
    methods = [{"name": "lora", "r": 4, "dropout": 0.0}]
    cfg = _config(tmp_path, "ddp-lora", methods, ("train.learning_rate=2e-3",))
    cfg.model.config_overrides = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    run_dir = _train(tmp_path, "accelerate", cfg=cfg)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert sum(r["kind"] == "start" for r in records) == 1 and records[-1]["kind"] == "end"
    for r in steps:
        assert r["world_size"] == 2 and len(r["loss_by_rank"]) == 2
        assert r["loss"] == pytest.approx(sum(r["loss_by_rank"]) / 2, abs=1e-12)
        assert r["loss_by_rank"][0] != r["loss_by_rank"][1]  # different shards: really two ranks' numbers

    one_cfg = cfg.with_overrides(["run_name=one", "train.gradient_accumulation_steps=2"])
    one = Run(one_cfg)
    initial = {k: v.clone() for k, v in merge_adapters(one).state_dict().items()}
    one.start()
    one_steps = [r for r in (json.loads(line) for line in (one.run_dir / "metrics.jsonl").read_text().splitlines())
                 if r["kind"] == "step"]
    assert "loss_by_rank" not in one_steps[0] and "world_size" not in one_steps[0]  # 1-process records unchanged
    assert [r["loss"] for r in one_steps] == pytest.approx([r["loss"] for r in steps], abs=1e-5)
    merged_one = {k: v.clone() for k, v in merge_adapters(one).state_dict().items()}

    load_model(one.raw_model, str(ckpt.latest(run_dir) / "model.safetensors"), strict=True)
    merged_two = merge_adapters(one).state_dict()
    assert merged_two.keys() == merged_one.keys()
    worst = max(float((merged_two[k] - merged_one[k]).abs().max()) for k in merged_one)
    moved = max(float((merged_one[k] - initial[k]).abs().max()) for k in merged_one)
    print(f"2-process vs 1-process merged weights: max |diff| {worst:.2e}; trained vs initial: {moved:.2e}")
    assert worst <= MERGED_ATOL
    assert moved > 1000 * MERGED_ATOL  # training moved the weights far more than the tolerance


class _TwoRanks:
    """The all-gather of a 2-process job, played in one process: rank 1's vector is this rank's with every loss
    +1 and three times the samples and tokens. Counts the collectives."""
    def __init__(self, num_processes: int) -> None:
        self.num_processes, self.gathers = num_processes, 0

    def gather(self, mine: torch.Tensor) -> torch.Tensor:
        self.gathers += 1
        other = mine.clone()
        other[:-2] += 1.0
        other[-2:] *= 3
        return torch.cat([mine, other])


def _flushed(num_processes: int) -> tuple[list[dict], _TwoRanks]:
    sink, acc = MemorySink(), _TwoRanks(num_processes)
    run = SimpleNamespace(accelerator=acc, device=torch.device("cpu"), cfg=RunConfig(), total_steps=3,
                          emit=sink.write, last_step_record=None)
    pending = loop._Pending()
    for step, loss in ((1, 0.5), (2, 0.25), (3, 0.125)):
        pending.records.append({"kind": "step", "step": step, "loss": torch.tensor(loss),
                                "grad_norm": torch.tensor(2.0), "clipped": torch.tensor(True),
                                "grad_norm_groups": {"decay": torch.tensor(1.5)}, "lr": {"decay": 1e-3}})
    pending.samples, pending.tokens = 24, 300
    loop._flush(run, pending)
    assert run.last_step_record == sink.records[-1] and pending.records == []
    return sink.records, acc


def test_flush_merges_every_ranks_step_losses_with_one_gather():
    records, acc = _flushed(2)
    assert acc.gathers == 1  # one collective for the three pending steps
    assert [r["loss_by_rank"] for r in records] == [[0.5, 1.5], [0.25, 1.25], [0.125, 1.125]]
    assert [r["loss"] for r in records] == [1.0, 0.75, 0.625]
    assert all(r["world_size"] == 2 and r["grad_norm"] == 2.0 and r["clipped"] is True for r in records)
    assert all(r["grad_norm_groups"] == {"decay": 1.5} for r in records)
    # Throughput sums the ranks: 24 + 72 samples and 300 + 900 tokens in the same flush window.
    assert records[0]["tokens_per_second"] / records[0]["samples_per_second"] == pytest.approx(1200 / 96)


def test_flush_of_one_process_is_unchanged():
    records, acc = _flushed(1)
    assert acc.gathers == 0
    assert [r["loss"] for r in records] == [0.5, 0.25, 0.125]
    assert not {"loss_by_rank", "world_size"} & set(records[0])
    assert records[0]["tokens_per_second"] / records[0]["samples_per_second"] == pytest.approx(300 / 24)
