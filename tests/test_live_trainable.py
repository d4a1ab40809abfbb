"""Freezing and unfreezing groups live, through Control: applied at a step boundary, logged as edits with the
trainable counts, kept across schedule changes (unfreeze method) and restored exactly on resume."""
from __future__ import annotations

import pytest
import torch

from nbtune.engine.run import Run
from nbtune.methods import MethodError
from tests.test_methods import _cfg
from tests.test_resume import OVERRIDES, resume_is_exact


def test_live_freeze_keeps_a_group_still_and_is_logged(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like"))
    before = {n: p.detach().clone() for n, p in run.raw_model.named_parameters()}
    total = run.trainable_count()
    run.freeze("embeddings")
    run.start()
    after = dict(run.raw_model.named_parameters())
    emb = [n for n in before if ".embeddings." in n]
    assert emb and all(torch.equal(before[n], after[n]) for n in emb)
    assert all(not torch.equal(before[n], after[n]) for n in before if n.startswith("classifier"))
    (edit,) = [e for e in run.control.edits if e["name"] == "freeze"]
    frozen = sum(after[n].numel() for n in emb)
    assert (edit["step"], edit["target"], edit["old"], edit["new"]) == (0, "embeddings", total, total - frozen)


def test_unknown_targets_are_refused_at_once(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like"))
    with pytest.raises(MethodError, match=r"target 'attn' matches no trainable parameter.*targets: all, embeddings"):
        run.freeze("attn")
    with pytest.raises(MethodError, match="target 'layer 7' matches no"):
        run.unfreeze("layer 7")
    with pytest.raises(ValueError, match="freeze needs a target such as 'embeddings'"):
        run.control.freeze("")
    assert not run.control.due(0, 0)                                    # nothing was queued


def test_a_live_freeze_survives_the_unfreeze_schedule(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", "train.max_steps=5", methods=[{"name": "unfreeze", "every_n_steps": 1}]))
    run.control.freeze("layer 0", at_step=1)
    run.start()
    layer0 = [p for n, p in run.raw_model.named_parameters() if ".layer.0." in n]
    layer1 = [p for n, p in run.raw_model.named_parameters() if ".layer.1." in n]
    assert not any(p.requires_grad for p in layer0) and all(p.requires_grad for p in layer1)
    names = [e["name"] for e in run.control.edits]
    assert names.index("freeze") < len(names) - 1 and names[-1] == "unfreeze"   # the schedule moved on after it


def test_resume_is_bit_identical_across_a_live_freeze(tmp_path):
    extra = {"edits": [[2, "freeze", "layer 0"], [3, "lr", 2e-4], [8, "unfreeze", "layer 0"]]}
    resume_is_exact(tmp_path, [5, 1], overrides=OVERRIDES, **extra)
