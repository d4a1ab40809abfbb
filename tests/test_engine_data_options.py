"""Data options that reach the engine: cleaning steps recorded in the config and applied before tokenising,
and class weights computed from the train split and used in the loss."""
from __future__ import annotations

import pytest
import torch

from nbtune.config import RunConfig
from nbtune.data.balance import class_weights
from nbtune.engine import build, loop
from nbtune.engine.run import Run

ROWS = [("<p>refund <b>please</b></p>", "billing")] * 6 + [("app &amp; wifi crash", "tech")] * 2


def _csv(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in ROWS), encoding="utf-8")
    return path


def _cfg(tmp_path, *extra):
    return RunConfig().with_overrides([
        "model.name=tiny-bert", f"data.dataset={_csv(tmp_path)}", "train.batch_size=4", "train.max_steps=2",
        "train.progress_bar=false", "train.tensorboard=false", f"output_dir={tmp_path / 'runs'}", *extra])


def test_cleaning_steps_from_the_config_are_applied_to_every_split(tmp_path):
    cfg = _cfg(tmp_path, "data.cleaning=['strip_html', {normalize: nfkc}, whitespace]")
    assert cfg.data.cleaning == ["strip_html", {"normalize": "nfkc"}, "whitespace"]
    dataset, _ = build.load_data(cfg)
    texts = [t for split in dataset.values() for t in split["text"]]
    assert set(texts) == {"refund please", "app & wifi crash"}
    assert RunConfig.from_yaml(cfg.to_yaml()).data.cleaning == cfg.data.cleaning


def test_balanced_class_weights_reach_the_loss(tmp_path):
    run = Run(_cfg(tmp_path, "train.class_weights=balanced"))
    names = run.data.label_names
    train_labels = [names[r["labels"]] for r in run.data.rows["train"]]
    want = class_weights(train_labels, scheme="balanced")
    assert run.class_weights.tolist() == pytest.approx([want[n] for n in names])
    assert run.class_weights[names.index("tech")] > run.class_weights[names.index("billing")]
    batch = {k: v.to(run.device) for k, v in run.collate(list(range(4)), run.data.rows["train"]).items()}
    run.model.eval()
    with torch.no_grad():
        got = loop.compute_loss(run, batch)
        logits = run.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        manual = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=run.class_weights)
        plain = run.model(**batch).loss
    assert torch.allclose(got, manual) and not torch.allclose(got, plain)
    run.start()
    assert run.state.step == 2 and run.state.status == "finished"


def test_continue_with_new_labels_trains_further_and_is_marked(tmp_path):
    from nbtune.engine.tasks import DataError
    from nbtune.history import read_history
    from nbtune.ui.figures import edit_markers

    run = Run(_cfg(tmp_path))
    run.start()
    assert run.state.status == "finished" and run.state.step == 2
    n_old = len(run.data.rows["train"])
    with pytest.raises(DataError, match="label 'nope' does not occur"):
        run.continue_with([("something else", "nope")])
    before = {k: v.clone() for k, v in run.raw_model.state_dict().items()}
    record = run.continue_with([("refund twice", "billing"), ("wifi keeps dropping", "tech"),
                                ("charged twice for one order", "billing")], steps=3, lr=1e-4)
    assert record["name"] == "data" and record["old"] == n_old and record["new"].startswith("+3 new")
    assert len(run.data.rows["train"]) == 3 + min(3, n_old)
    run.start()
    assert run.state.status == "finished" and run.state.step == 5
    after = run.raw_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)         # it really trained on them
    history = read_history(run.run_dir)
    assert [e["step"] for e in history.edits if e["name"] == "data"] == [2]
    assert 2 in edit_markers(history)[0]                                     # drawn on the loss chart
    assert history.steps[-3:] == [3, 4, 5]
    lr_after = [history.lr[g][history.steps.index(3)] for g in history.lr]
    assert all(0 < v <= 1e-4 for v in lr_after)                              # the fresh schedule from 1e-4
