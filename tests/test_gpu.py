"""CUDA paths: bf16 autocast, fp16 with GradScaler, no per-step host sync. Skipped without a GPU."""
import math

import pytest
import torch

from nbtune.config import RunConfig
from nbtune.engine.run import Run

BASE = ["model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=6", "train.progress_bar=false", "train.tensorboard=false"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_cuda_precisions_train(tmp_path, precision):
    run = Run(RunConfig().with_overrides(BASE + [f"train.precision={precision}", f"output_dir={tmp_path}"]))
    assert run.device.type == "cuda"
    assert (run.scaler is not None) == (run.precision.name == "fp16")
    run.start()
    assert run.state.status == "finished"
    assert math.isfinite(run.results["validation"]["loss"])
    if run.scaler is not None:
        assert run.scaler.get_scale() > 0


@pytest.mark.gpu
def test_auto_precision_prefers_bf16_on_cuda(tmp_path):
    run = Run(RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}"]))
    assert run.precision.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
