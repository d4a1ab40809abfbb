"""nbtune.data.curriculum: length and loss difficulty scores, and the short -> long -> hard order."""
import datasets
import numpy as np
import pytest
import torch

from nbtune.data.curriculum import DifficultyError, DifficultyScores, curriculum_order, difficulty

TEXTS = ["a bit longer text here", "short", "the longest text of them all, by far", "mid size"]


def _split(texts=TEXTS, labels=(0, 1, 0, 1)):
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["ham", "spam"])})
    return datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=feats)


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nbtune.assets import resolve_model

    resolved = resolve_model("tiny-bert")
    config = resolved.config.__class__.from_dict({**resolved.config.to_dict(), "num_labels": 2})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)  # random head: scores, not accuracy
    return model, AutoTokenizer.from_pretrained(resolved.tokenizer_path)


def test_length_in_characters_without_a_tokenizer():
    d = difficulty(_split())
    assert d.by == "length" and d.unit == "characters"
    assert d.scores.tolist() == [22.0, 5.0, 36.0, 8.0]
    assert d.order().tolist() == [1, 3, 0, 2]


def test_length_in_tokens_with_a_real_tokenizer(tiny_bert):
    _, tok = tiny_bert
    d = difficulty(_split(), tokenizer=tok)
    assert d.unit == "tokens"
    assert d.scores.tolist() == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert d.scores[1] == 1  # "short" is one WordPiece


def test_loss_scores_are_finite_aligned_and_batch_independent(tiny_bert):
    model, tok = tiny_bert
    model.train()
    d = difficulty(_split(), by="loss", tokenizer=tok, model=model, batch_size=3)
    assert d.unit == "nats" and d.scores.shape == (4,) and np.isfinite(d.scores).all() and (d.scores > 0).all()
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # row 2 alone, no padding: the batched score must match
        logits = model(**tok([TEXTS[2]], return_tensors="pt")).logits
    alone = torch.nn.functional.cross_entropy(logits, torch.tensor([0])).item()
    assert d.scores[2] == pytest.approx(alone, abs=1e-5)


def test_loss_scores_on_bundled_rows_longer_than_the_model(tiny_bert):
    from nbtune import assets

    model, tok = tiny_bert
    split = assets.load_dataset("sms-spam")["train"].select(range(24))
    split = split.add_item({"text": "word " * 400, "label": 0})  # past tiny-bert's 128 positions
    d = difficulty(split, by="loss", tokenizer=tok, model=model, batch_size=8)
    assert d.scores.shape == (25,) and np.isfinite(d.scores).all()


def test_loss_needs_a_model_and_valid_labels(tiny_bert):
    model, tok = tiny_bert
    with pytest.raises(DifficultyError, match="by='loss' needs a classification model and its tokenizer"):
        difficulty(_split(), by="loss", tokenizer=tok)
    bad = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, -1]})
    with pytest.raises(DifficultyError, match=r"row 1, column 'label': expected a class id in 0..1, found -1"):
        difficulty(bad, by="loss", tokenizer=tok, model=model)
    with pytest.raises(DifficultyError, match="unknown difficulty 'perplexity'; use 'length' or 'loss'"):
        difficulty(_split(), by="perplexity")


def test_bad_inputs_are_named():
    with pytest.raises(DifficultyError, match=r"pass e\.g\. ds\['train'\]"):
        difficulty(datasets.DatasetDict({"train": _split()}))
    with pytest.raises(DifficultyError, match=r"row 1, column 'text': expected a string, found NoneType"):
        difficulty(datasets.Dataset.from_dict({"text": ["a", None]}))


def test_curriculum_order_by_length_only():
    plan = curriculum_order(DifficultyScores(np.array([5.0, 1, 9, 3, 7, 2, 3]), "length", "characters"), stages=3)
    assert plan.indices.tolist() == [1, 5, 3, 6, 0, 4, 2]  # ties (3, 3) keep row order
    assert plan.stage_sizes == (3, 2, 2)
    assert plan.stage(1).tolist() == [6, 0]


def test_curriculum_order_short_then_long_then_hard():
    lengths = [1, 2, 3, 4, 5, 6]
    losses = [0.1, 0.9, 0.2, 0.3, 0.8, 0.4]
    plan = curriculum_order(lengths, loss_scores=losses, stages=3)
    assert plan.stage(0).tolist() == [0, 2]  # short, easiest first
    assert plan.stage(1).tolist() == [3, 5]  # long
    assert plan.stage(2).tolist() == [4, 1]  # the hardest third by loss, whatever their length
    assert curriculum_order(lengths, losses, stages=1).indices.tolist() == [0, 2, 3, 5, 4, 1]
    assert sorted(curriculum_order(lengths, losses, stages=4).indices.tolist()) == list(range(6))


def test_curriculum_order_errors():
    with pytest.raises(DifficultyError, match=r"loss scores \(2\) and length scores \(3\) must align row by row"):
        curriculum_order([1, 2, 3], [0.1, 0.2])
    with pytest.raises(DifficultyError, match="stages must be at least 1; found 0"):
        curriculum_order([1, 2], stages=0)


def test_repr_html():
    page = difficulty(_split())._repr_html_()
    assert "difficulty by length (characters), 4 rows" in page and "max 36" in page
