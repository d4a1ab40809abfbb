"""`nbtune tune run.yaml --trials N`: the study runs headless, prints every trial and the best config, stores
the study in SQLite so the same command resumes it, and bad spaces are refused with the key named."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from nbtune.cli import main
from tests.test_tune import _base

ROOT = Path(__file__).resolve().parents[1]


def _nbtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbtune.cli", *args], capture_output=True, text=True, timeout=900,
                          cwd=ROOT)


def test_tune_cli_runs_resumes_and_writes_the_best_config(tmp_path):
    config = tmp_path / "run.yaml"
    _base(tmp_path).to_yaml(config)
    space = tmp_path / "space.yaml"
    space.write_text("lr: [loguniform, -11.5, -6.9]\nbatch_size: [choice, [4, 8]]\n")
    study_dir = tmp_path / "study"
    first = _nbtune("tune", str(config), "--trials", "2", "--space", str(space), "--metric", "loss",
                    "--study-dir", str(study_dir), "--pruner", "none")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("complete") == 2 and "best: trial" in first.stdout
    best_yaml = next(study_dir.glob("best-trial-*.yaml"))
    assert "--resume" in first.stdout and str(best_yaml) in first.stdout
    # the same command with more trials continues the stored study
    second = _nbtune("tune", str(config), "--trials", "3", "--space", str(space), "--metric", "loss",
                     "--study-dir", str(study_dir), "--pruner", "none")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming: 2 trials already finished" in second.stdout
    with sqlite3.connect(study_dir / "study.db") as db:
        states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE"] * 3
    # the best config trains with the CLI (the promoted trial's exact settings)
    from nbtune.config import RunConfig
    cfg = RunConfig.from_yaml(best_yaml)
    assert cfg.train.batch_size in (4, 8) and 1e-5 <= cfg.train.learning_rate <= 1e-3


def test_tune_cli_refuses_a_bad_space_naming_the_key(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    _base(tmp_path).to_yaml(config)
    space = tmp_path / "space.yaml"
    space.write_text("lr: [loguniform, 1.0e-6, 5.0e-5]\n")
    assert main(["tune", str(config), "--space", str(space), "--study-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "'lr'" in err and "natural-log bounds" in err
    space.write_text("- not a mapping\n")
    assert main(["tune", str(config), "--space", str(space), "--study-dir", str(tmp_path / "s")]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    assert main(["tune", str(config), "--metric", "loss", "--direction", "maximize",
                 "--study-dir", str(tmp_path / "s")]) == 2
    assert "direction='minimize'" in capsys.readouterr().err
