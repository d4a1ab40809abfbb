"""Explanation drift across the checkpoints of one real training run: tiny-bert learns that "zebra" decides
the class (tests/support/trigger.py), so the trigger's attribution must grow from the first checkpoint to the
last. About 20 s on 2 CPU cores, most of it training."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from nbtune.explain.drift import explanation_drift
from nbtune.explain.types import Attribution, ExplainError, split_words
from tests.support.trigger import TRIGGER

PROBES = ["the lamp zebra is on today", "we read a book near window"]


def occlusion(em, text: str, target=None, *, word=None, continuation=None) -> Attribution:
    """Leave-one-word-out, with the explainers' signature: a word's score is how much the target's score falls
    when it alone is masked."""
    words = split_words(text)
    tgt = em.target(text, target, word=word, continuation=continuation)
    texts = [text] + [words.join(np.arange(len(words)) != i, em.mask_word) for i in range(len(words))]
    s = em.score_texts(texts, tgt)  # (1 + W,)
    return Attribution("occlusion", words, s[0] - s[1:], tgt, float(s[0]), evaluations=len(texts))


@pytest.fixture(scope="module")
def run_dir(trigger):
    """The session's trigger run: a checkpoint every 40 of its 160 steps, all kept."""
    return trigger.run_dir


def test_trigger_attribution_grows_across_checkpoints(run_dir):
    info = explanation_drift(run_dir, PROBES, occlusion)
    assert info.steps == [40, 80, 120, 160] and info.method == "occlusion" and info.notes == []
    zebra = info.probes[0]
    assert zebra.target.label == "alarm"                         # predicted at the last checkpoint
    assert zebra.matrix().shape == (4, 6)
    series = zebra.word_series(TRIGGER)
    assert series[-1] > 0.9 and series[-1] - series[0] > 0.5     # untrained at step 40, decisive at 160
    assert zebra.gainers[0].word == TRIGGER and zebra.gainers[0].change == pytest.approx(series[-1] - series[0])
    assert TRIGGER not in [c.word for c in zebra.losers]
    assert [(c.start, c.end) for c in zebra.consecutive] == [(40, 80), (80, 120), (120, 160)]
    assert zebra.model_scores[-1] > 0.9
    calm = info.probes[1]                                        # no trigger: the target is calm at every step
    assert calm.target.label == "calm" and all(a.target.label == "calm" for a in calm.attributions)


def test_fixed_target_and_chosen_checkpoints(run_dir):
    info = explanation_drift(run_dir, PROBES[:1], occlusion, target="calm", checkpoints=[160, 40])
    assert info.steps == [40, 160]
    p = info.probes[0]
    assert p.target.label == "calm"
    assert p.losers[0].word == TRIGGER                           # zebra pushes *against* calm once learned
    per_probe = explanation_drift(run_dir, PROBES, occlusion, target=["alarm", 1], checkpoints=[40, 160])
    assert [p.target.label for p in per_probe.probes] == ["alarm", "calm"]
    with pytest.raises(ExplainError, match="1 targets for 2 probes"):
        explanation_drift(run_dir, PROBES, occlusion, target=["alarm"])
    with pytest.raises(ExplainError, match=r"no complete checkpoint at step 50; steps available: \[40, 80, 120, 160\]"):
        explanation_drift(run_dir, PROBES[:1], occlusion, checkpoints=[40, 50])


def test_incomplete_checkpoints_are_skipped_with_a_note(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "checkpoints" / "step-000080" / "manifest.json").unlink()
    info = explanation_drift(copy, PROBES[:1], occlusion)
    assert info.steps == [40, 120, 160]
    assert len(info.notes) == 1 and info.notes[0].startswith("skipped step-000080: ")


def test_fewer_than_two_checkpoints_is_a_clear_error(run_dir, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(run_dir / "checkpoints" / "step-000160", one / "checkpoints" / "step-000160")
    with pytest.raises(ExplainError, match=r"at least 2 complete checkpoints; .* has 1 usable \(step-000160\).*"
                                           r"train.save_every_n_steps"):
        explanation_drift(one, PROBES, occlusion)
    with pytest.raises(ExplainError, match="no checkpoints/ folder"):
        explanation_drift(tmp_path, PROBES, occlusion)
    with pytest.raises(ExplainError, match="non-empty texts"):
        explanation_drift(run_dir, [], occlusion)


def test_an_explainer_that_changes_the_target_is_refused(run_dir):
    def own_target(em, text, target=None, **where):
        return occlusion(em, text)                               # ignores the fixed target: explains the prediction

    with pytest.raises(ExplainError, match="instead of the fixed target 'calm'"):
        explanation_drift(run_dir, PROBES[:1], own_target, target="calm")
