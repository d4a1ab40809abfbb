"""A user's own CSV/JSONL file as data.dataset, end to end through `nbtune train run.yaml`."""
import json
import subprocess
import sys

from nbtune.config import RunConfig
from nbtune.engine.run import Run

ROWS = [("turn on the kitchen light", "lights"), ("switch the lamp off", "lights"), ("what's the weather", "weather"),
        ("will it rain tomorrow", "weather"), ("set a timer for ten minutes", "timer"), ("start a 5 minute timer", "timer")]


def test_csv_with_custom_columns_trains_via_cli(tmp_path):
    csv = tmp_path / "tickets.csv"
    csv.write_text("utterance,intent\n" + "".join(f'"{t}",{y}\n' for t, y in ROWS * 4), encoding="utf-8")
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", f"data.dataset={csv}", "data.text_column=utterance", "data.label_column=intent",
        "train.batch_size=4", "train.max_steps=3", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path / 'runs'}", "run_name=csv"])
    cfg.to_yaml(tmp_path / "run.yaml")
    out = subprocess.run([sys.executable, "-m", "nbtune.cli", "train", str(tmp_path / "run.yaml"), "--no-report"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    start = json.loads((tmp_path / "runs" / "csv" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["label_names"] == ["lights", "timer", "weather"]
    results = json.loads((tmp_path / "runs" / "csv" / "results.json").read_text())
    assert 0.0 <= results["test"]["accuracy"] <= 1.0


def test_jsonl_file_with_string_labels(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS * 3), encoding="utf-8")
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", f"data.dataset={path}", "train.batch_size=4", "train.max_steps=2",
        "train.progress_bar=false", "train.tensorboard=false", f"output_dir={tmp_path}"])
    run = Run(cfg)
    # no validation/test in the file: 10% of train is held out, and test falls back to validation
    assert len(run.data.rows["train"]) + len(run.data.rows["validation"]) == len(ROWS) * 3
    assert run.raw_model.config.id2label == {0: "lights", 1: "timer", 2: "weather"}
    run.start()
    assert run.state.status == "finished"
