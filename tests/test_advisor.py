"""Health advisor rules: each fires on the pattern it names, cites its numbers, and stays quiet on clean runs."""
import math

from nbtune.advisor import advise, dead_lr, gradient_explosion, overfitting, plateau
from nbtune.history import RunHistory


def _history(n=300, loss=None, norms=None, lr=1e-4, evals=(), edits=(), total=1000, config_lr=1e-4, clip=1.0):
    steps = list(range(1, n + 1))
    return RunHistory(
        steps=steps,
        loss=loss if loss is not None else [2.0 * math.exp(-s / 50) + 0.1 for s in steps],
        grad_norm=norms if norms is not None else [1.0 + 0.1 * math.sin(s) for s in steps],
        lr={"decay": [lr] * n, "no_decay": [lr] * n},
        evals=list(evals), edits=list(edits),
        start={"total_steps": total, "config": {"train": {"learning_rate": config_lr, "max_grad_norm": clip,
                                                          "weight_decay": 0.01}}})


def test_clean_run_gets_no_advice():
    assert advise(_history(n=150)) == []


def test_gradient_spike_is_explained_with_numbers_and_actions():
    norms = [1.0] * 99 + [25.0]
    advice = gradient_explosion(_history(n=100, norms=norms, clip=None))
    assert advice is not None and advice.rule == "gradient-explosion"
    assert "25 at step 100 is 25.0x the running median 1" in advice.message
    assert [(a.command, a.name, a.value) for a in advice.actions] == [("set", "lr", 5e-5), ("set", "max_grad_norm", 1.0)]


def test_nan_gradient_fires_and_clip_action_only_when_clipping_is_off():
    advice = gradient_explosion(_history(n=10, norms=[1.0] * 9 + [float("nan")]))
    assert advice is not None and "gradient norm is nan at step 10" in advice.message
    assert [a.name for a in advice.actions] == ["lr"]  # clipping is already on (1.0)


def test_overfitting_needs_rising_val_and_falling_train():
    evals = [{"kind": "eval", "split": "validation", "step": s, "loss": v}
             for s, v in ((50, 0.50), (100, 0.40), (150, 0.45), (200, 0.52), (250, 0.60))]
    advice = overfitting(_history(evals=evals))
    assert advice is not None
    assert "0.4000 -> 0.4500 -> 0.5200 -> 0.6000" in advice.message
    assert "Best validation loss 0.4000 was at step 100" in advice.message
    assert [a.command for a in advice.actions] == ["stop", "set"] and advice.actions[1].value == 0.05
    flat_train = _history(loss=[1.0] * 300, evals=evals)
    assert overfitting(flat_train) is None  # val rising alone is not overfitting


def test_plateau_and_dead_lr():
    assert plateau(_history(loss=[1.0] * 300)) is not None
    assert plateau(_history()) is None  # still falling
    dead = dead_lr(_history(lr=1e-9))
    assert dead is not None and "Restore LR 1.00e-04" == dead.actions[0].label
    assert dead_lr(_history(lr=1e-9, n=950)) is None  # the schedule's tail legitimately decays to ~0
    assert dead_lr(_history(lr=5e-5)) is None


def test_current_values_follow_live_edits():
    edits = [{"kind": "edit", "step": 10, "name": "lr", "old": 1e-4, "new": 1e-2}]
    dead = dead_lr(_history(lr=1e-6, edits=edits))  # 1e-6 < 1e-3 x the edited 1e-2
    assert dead is not None and dead.actions[0].value == 1e-2
