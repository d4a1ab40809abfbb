"""A classifier whose correct explanation is known: tiny-bert fine-tuned with nbtune's engine on sentences of
filler words where one trigger word ("zebra") decides the class. Every explainer must rank the trigger first,
and deleting it must flip the prediction.

The model is trained once per test session (the `trigger` fixture in tests/conftest.py) and saved; each test
module loads its own copy (`load_trigger`), so one module's gradients or train/eval switches never reach another.

    >>> model, tokenizer = load_trigger(trigger.model_dir)   # doctest: +SKIP
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

TRIGGER = "zebra"
LABELS = ("calm", "alarm")   # sorted by the engine: alarm is class 0, calm class 1
FILLER = ("the lamp in kitchen is on today and we read a book near window while music plays softly over "
          "garden door table chair room light water paper green blue small large quiet").split()


def trigger_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(FILLER, k=rng.randint(5, 10))
        alarm = i % 2 == 1
        if alarm:
            words.insert(rng.randrange(len(words) + 1), TRIGGER)
        rows.append({"text": " ".join(words), "label": LABELS[int(alarm)]})
    return rows


def trigger_dataset():
    """The trigger data as nbtune loads it: 640 train, 64 validation and 64 test rows."""
    import datasets
    import pandas as pd

    import nbtune as nt
    frames = {split: pd.DataFrame(trigger_rows(n, seed)) for split, n, seed in
              (("train", 640, 0), ("validation", 64, 1), ("test", 64, 2))}
    return nt.data.load(datasets.DatasetDict({k: datasets.Dataset.from_pandas(v, preserve_index=False)
                                              for k, v in frames.items()}))


def trigger_run(work_dir: str | Path, steps: int = 160, save_every_n_steps: int = 0):
    """The trained Run (a 100-step run stays at chance: it learns between steps 120 and 140). With
    save_every_n_steps, every checkpoint is kept (for explanation drift)."""
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    cfg = RunConfig(output_dir=str(work_dir)).with_overrides([
        "task=classification", "model.name=tiny-bert", "data.dataset=trigger", "data.max_length=24",
        "train.learning_rate=3e-3", "train.batch_size=16", f"train.max_steps={steps}", "train.warmup_ratio=0.05",
        "train.eval_every_n_steps=0", "train.seed=0", f"train.save_every_n_steps={save_every_n_steps}",
        "train.save_total_limit=null", "train.progress_bar=false", "train.tensorboard=false"])
    run = Run(cfg, trigger_dataset())
    run.start()
    return run


@dataclass(frozen=True)
class TriggerRun:
    run_dir: Path      # checkpoints at steps 40, 80, 120 and 160
    model_dir: Path    # the final model (run.save_pretrained)
    results: dict


def train_trigger(work_dir: str | Path) -> TriggerRun:
    run = trigger_run(work_dir, save_every_n_steps=40)
    model_dir = run.save_pretrained(Path(work_dir) / "model")
    return TriggerRun(run.run_dir, model_dir, run.results)


def load_trigger(model_dir: str | Path):
    """(model, tokenizer): a fresh copy of the trained trigger model, in eval mode on the CPU."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def trigger_model(work_dir: str | Path, steps: int = 160):
    """(model, tokenizer, run_dir, results), trained here (for notebooks and scripts outside pytest)."""
    run = trigger_run(work_dir, steps)
    model = run.accelerator.unwrap_model(run.model).eval()
    return model, run.tokenizer, run.run_dir, run.results
