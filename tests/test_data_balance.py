"""nbtune.data.balance: class weights, weight tensors, over/undersampling of the train split only."""
from collections import Counter

import datasets
import pytest
import torch

from nbtune.data.balance import (BalanceError, class_weight_tensor, class_weights, label_counts, oversample,
                                 undersample)

NAMES = ["a", "b", "c", "d"]  # d has no training rows


def _dd():
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    train_labels = [0] * 6 + [1] * 3 + [2]
    train = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(10)], "label": train_labels}, features=feats)
    val = datasets.Dataset.from_dict({"text": ["v0", "v1"], "label": [2, 3]}, features=feats)
    test = datasets.Dataset.from_dict({"text": ["s0"], "label": [1]}, features=feats)
    return datasets.DatasetDict({"train": train, "validation": val, "test": test})


def test_balanced_weights_for_counts_6_3_1():
    assert class_weights(["a"] * 6 + ["b"] * 3 + ["c"]) == {"a": 0.5556, "b": 1.1111, "c": 3.3333}
    exact = class_weights([0] * 6 + [1] * 3 + [2], decimals=None)
    assert exact == pytest.approx({"0": 10 / 18, "1": 10 / 9, "2": 10 / 3})
    assert sum(c * exact[k] for k, c in {"0": 6, "1": 3, "2": 1}.items()) == pytest.approx(10)


def test_inverse_sqrt_weights_keep_the_same_total():
    w = class_weights([0] * 6 + [1] * 3 + [2], scheme="inverse_sqrt", decimals=None)
    scale = 10 / (6 ** 0.5 + 3 ** 0.5 + 1)
    assert w == pytest.approx({"0": scale / 6 ** 0.5, "1": scale / 3 ** 0.5, "2": scale})
    assert 6 * w["0"] + 3 * w["1"] + w["2"] == pytest.approx(10)
    assert w["0"] < w["1"] < w["2"]


def test_weights_from_a_dataset_use_the_train_split_and_label_names():
    ds = _dd()
    assert label_counts(ds) == {"a": 6, "b": 3, "c": 1, "d": 0}
    assert class_weights(ds) == {"a": 0.5556, "b": 1.1111, "c": 3.3333, "d": 0.0}
    with pytest.raises(BalanceError, match="unknown weighting scheme 'log'; use 'balanced' or 'inverse_sqrt'"):
        class_weights(ds, scheme="log")


def test_class_weight_tensor_is_in_label_id_order():
    t = class_weight_tensor({"spam": 3.0, "ham": 0.5}, ["ham", "spam"])
    assert t.dtype == torch.float32 and t.tolist() == [0.5, 3.0]
    with pytest.raises(BalanceError, match=r"missing \['eggs'\], unknown \['spam'\]"):
        class_weight_tensor({"spam": 3.0, "ham": 0.5}, ["ham", "eggs"])


def test_oversample_to_max_touches_train_only():
    ds = _dd()
    r = oversample(ds, seed=0)
    assert r.before == {"a": 6, "b": 3, "c": 1, "d": 0}
    assert r.after == {"a": 6, "b": 6, "c": 6, "d": 0}
    assert r.target == 6
    train = r.dataset["train"]
    assert list(train["text"])[:10] == list(ds["train"]["text"])  # originals first, in order
    # every added row is a copy of a train row with the same label; each b row is repeated exactly once more
    added = Counter(zip(list(train["text"])[10:], list(train["label"])[10:]))
    assert added == {("t6", 1): 1, ("t7", 1): 1, ("t8", 1): 1, ("t9", 2): 5}
    for split in ("validation", "test"):
        assert r.dataset[split] is ds[split]
    assert len(ds["train"]) == 10  # the input is untouched


def test_oversample_remainder_is_seeded_and_even():
    ds = _dd()
    r1, r2, r3 = oversample(ds, target=5, seed=1), oversample(ds, target=5, seed=1), oversample(ds, target=5, seed=2)
    assert r1.after == {"a": 6, "b": 5, "c": 5, "d": 0}
    assert list(r1.dataset["train"]["text"]) == list(r2.dataset["train"]["text"])
    extra_b = Counter(t for t, y in zip(list(r1.dataset["train"]["text"])[10:], list(r1.dataset["train"]["label"])[10:])
                      if y == 1)
    assert sum(extra_b.values()) == 2 and max(extra_b.values()) == 1  # two distinct b rows, no row twice
    orders = {tuple(r.dataset["train"]["text"]) for r in (r1, r3)}
    assert len(orders) == 2  # another seed, another draw


def test_undersample_to_min_keeps_order_and_other_splits():
    ds = _dd()
    r = undersample(ds, seed=0)
    assert r.target == 1 and r.after == {"a": 1, "b": 1, "c": 1, "d": 0}
    texts = list(r.dataset["train"]["text"])
    assert texts == sorted(texts, key=lambda t: int(t[1:]))  # kept rows stay in order
    assert texts[-1] == "t9"
    r4 = undersample(ds, target=4, seed=3)
    assert r4.after == {"a": 4, "b": 3, "c": 1, "d": 0}
    assert list(r4.dataset["train"]["text"]) == list(undersample(ds, target=4, seed=3).dataset["train"]["text"])
    assert r4.dataset["validation"] is ds["validation"]


def test_bad_targets_and_inputs():
    ds = _dd()
    with pytest.raises(BalanceError, match=r"target must be 'max' or a positive number of rows per class; found 0"):
        oversample(ds, target=0)
    with pytest.raises(BalanceError, match=r"target must be 'min'.*found 'max'"):
        undersample(ds, target="max")
    with pytest.raises(BalanceError,
                       match=r"no 'training' split to balance; the splits are \['train', 'validation', 'test'\]"):
        oversample(ds, split="training")
    with pytest.raises(BalanceError, match=r"no label column 'y'"):
        oversample(ds, label_column="y")


def test_plain_dataset_and_html():
    r = oversample(_dd()["train"], seed=0)
    assert isinstance(r.dataset, datasets.Dataset) and len(r.dataset) == 18
    page = r._repr_html_()
    assert "<td>c</td><td>1</td><td>6</td><td>+5</td>" in page
    assert "10 &rarr; 18 rows" in page


def test_oversample_on_bundled_sms_spam():
    from nbtune import assets

    ds = assets.load_dataset("sms-spam")
    r = oversample(ds, seed=0)
    assert r.after["spam"] == r.after["ham"] == r.before["ham"]
    added = list(r.dataset["train"]["label"])[len(ds["train"]):]
    assert len(added) == r.before["ham"] - r.before["spam"] and set(added) == {1}  # only spam copies
    assert set(list(r.dataset["train"]["text"])[len(ds["train"]):]) <= set(ds["train"]["text"])
    for split in ("validation", "test"):
        assert list(r.dataset[split]["text"]) == list(ds[split]["text"])
