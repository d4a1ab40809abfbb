"""`nbtune export RUN_DIR`: the run is rebuilt from its newest checkpoint and exported; exit 0 / 1 / 2."""
import json

import pytest

from nbtune.cli import main
from nbtune.config import RunConfig
from nbtune.engine.run import Run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false",
        "train.precision=fp32", f"output_dir={out}", "run_name=cli"])
    cfg.methods = [{"name": "lora", "r": 4}]
    Run(cfg).start()
    return out / "cli"


def test_export_command_writes_the_report_from_the_checkpoint(run_dir, capsys):
    assert main(["export", str(run_dir), "--quantize", "none", "--no-latency", "--no-triton"]) == 0
    printed = capsys.readouterr().out
    assert "parity OK" in printed and "onnx-fp32" in printed and "merging" in printed
    report = json.loads((run_dir / "export" / "report.json").read_text())
    assert report["passed"] and report["parity"][0]["max_abs_logit_diff"] <= 1e-4
    assert report["files"]["onnx-fp32"].endswith("model.onnx") and "triton" not in report["files"]


def test_missed_threshold_exits_1_and_says_why(run_dir, tmp_path, capsys):
    code = main(["export", str(run_dir), "--out", str(tmp_path), "--quantize", "none", "--no-latency",
                 "--no-triton", "--max-logit-diff", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "PARITY FAILED" in captured.out and "onnx-fp32 max |logit diff|" in captured.err
    assert (tmp_path / "report.json").is_file()


def test_bad_source_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "no such run or checkpoint directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 2   # a directory with no checkpoint in it
    assert "nbtune: error:" in capsys.readouterr().err
