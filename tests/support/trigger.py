"""A classifier whose correct explanation is known: tiny-bert fine-tuned with nbtune's engine on sentences of
filler words where one trigger word ("zebra") decides the class. Every explainer must rank the trigger first,
and deleting it must flip the prediction.

    >>> model, tokenizer = trigger_model(tmp_path)   # doctest: +SKIP   (~30 s on 2 CPU cores, cached per session)
"""
from __future__ import annotations

import random
from pathlib import Path

TRIGGER = "zebra"
LABELS = ("calm", "alarm")
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


def trigger_model(work_dir: str | Path, steps: int = 160):
    """(model, tokenizer, run_dir, results): the trained tiny-bert in eval mode on CPU, and where its run was written."""
    import pandas as pd

    import nbtune as nt
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run

    frames = {split: pd.DataFrame(trigger_rows(n, seed)) for split, n, seed in
              (("train", 640, 0), ("validation", 64, 1), ("test", 64, 2))}
    import datasets
    ds = datasets.DatasetDict({k: datasets.Dataset.from_pandas(v, preserve_index=False) for k, v in frames.items()})
    ds = nt.data.load(ds)
    cfg = RunConfig(output_dir=str(work_dir)).with_overrides([
        "task=classification", "model.name=tiny-bert", "data.dataset=trigger", "data.max_length=24",
        "train.learning_rate=3e-3", "train.batch_size=16", f"train.max_steps={steps}", "train.warmup_ratio=0.05",
        "train.eval_every_n_steps=0", "train.seed=0", "train.save_every_n_steps=0", "train.progress_bar=false"])
    run = Run(cfg, ds)
    run.start()
    model = run.accelerator.unwrap_model(run.model).eval()
    return model, run.tokenizer, run.run_dir, run.results
