"""The heads method: BiLSTM+CRF and MLP heads over BERT-, Llama- and DeepSeek-V3-like encoders. Matrix rows,
the CRF's position handling against pytorch-crf itself, golden losses, exact resume, save/load, clear errors,
and (integration) the linear-vs-CRF demo on peoples-daily-ner."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import nbtune.methods.heads  # noqa: F401  (registers "heads")
from nbtune.config import ConfigError, RunConfig
from nbtune.engine import tasks
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from nbtune.methods.heads import BiLSTMCRFHead, HeadModel, Heads, MLPHead, load_pretrained, word_start_mask
from tests.test_methods import MODELS, _cfg, _steps
from tests.test_resume import OVERRIDES, _final, resume_is_exact

NER = ["task=token-classification", "data.dataset=peoples-daily-ner"]
CRF_SPEC = {"name": "heads", "head": "bilstm_crf", "lstm_hidden": 16}
MLP_SPEC = {"name": "heads", "head": "mlp", "mlp_hidden": 16}
HEAD_PARAMS = {
    "bilstm_crf": {"classifier.proj.weight", "classifier.proj.bias", "classifier.crf.start_transitions",
                   "classifier.crf.end_transitions", "classifier.crf.transitions",
                   *(f"classifier.lstm.{k}_l0{d}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                     for d in ("", "_reverse"))},
    "mlp": {"classifier.mlp.1.weight", "classifier.mlp.1.bias", "classifier.mlp.4.weight", "classifier.mlp.4.bias"},
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("spec", [CRF_SPEC, MLP_SPEC], ids=["bilstm_crf", "mlp"])
def test_head_trains_three_steps_with_exactly_its_parameters(tmp_path, model, spec):
    (tmp_path / "plain").mkdir()
    plain = Run(_cfg(tmp_path / "plain", model, *NER))
    run = Run(_cfg(tmp_path, model, *NER, methods=[spec]))
    assert isinstance(run.raw_model, HeadModel)
    trainable = {n for n, p in run.raw_model.named_parameters() if p.requires_grad}
    encoder = {f"encoder.{n}" for n, _ in plain.raw_model.base_model.named_parameters()}
    assert trainable == encoder | HEAD_PARAMS[spec["head"]]          # the old linear head is gone
    in_groups = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in run.raw_model.parameters() if p.requires_grad)
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    test = run.results["test"]
    assert 0.0 <= test["entity_f1"] <= 1.0 and math.isfinite(test["loss"])


@pytest.mark.parametrize("model, pooling", [("bert-like", "first"), ("llama-like", "last")])
def test_mlp_head_for_classification_pools_and_freezes_the_unused_pooler(tmp_path, model, pooling):
    spec = {"name": "heads", "head": "mlp", "mlp_hidden": 16, "mlp_layers": 2, "pooling": pooling}
    run = Run(_cfg(tmp_path, model, "task=classification", "data.dataset=trec", methods=[spec]))
    frozen = {n for n, p in run.raw_model.named_parameters() if not p.requires_grad}
    assert frozen == ({n for n, _ in run.raw_model.named_parameters() if n.startswith("encoder.pooler.")}
                      if model == "bert-like" else set())
    assert run.raw_model.classifier.mlp[-1].out_features == len(run.data.label_names) == 6
    run.start()
    assert all(math.isfinite(s["loss"]) for s in _steps(run)) and 0 <= run.results["test"]["accuracy"] <= 1


def test_pooling_finds_the_attended_span_on_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)   # row 0: 0..3, row 1: 4..7
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])                         # right- and left-padded
    pooled = {}
    for pooling in ("mean", "first", "last"):
        pooled[pooling] = MLPHead(1, 2, 4, 1, 0.0, pooling, per_token=False).pool(hidden, mask)[:, 0].tolist()
    assert pooled == {"mean": [1.0, 6.0], "first": [0.0, 5.0], "last": [2.0, 7.0]}


def _crf_head(seed: int = 0) -> BiLSTMCRFHead:
    torch.manual_seed(seed)
    return BiLSTMCRFHead(hidden_size=8, num_labels=5, lstm_hidden=6, lstm_layers=1, dropout=0.0).eval()


def test_crf_runs_over_the_labelled_positions_in_order():
    head = _crf_head()
    hidden = torch.randn(2, 7, 8)
    labels = torch.tensor([[-100, 1, -100, 2, 0, -100, -100],                 # [CLS] w -sub w w [SEP] pad
                           [-100, 3, 4, 0, -100, -100, -100]])
    out = head(hidden, torch.ones(2, 7), labels, None)
    # The same computation by hand: gather each row's labelled positions, pad, then pytorch-crf directly.
    pos = [[1, 3, 4], [1, 2, 3]]
    words = torch.stack([hidden[i, p] for i, p in enumerate(pos)])             # (2, 3, 8)
    emissions = head.proj(head.lstm(words)[0])
    keep = torch.ones(2, 3, dtype=torch.bool)
    gold = torch.stack([labels[i, p] for i, p in enumerate(pos)])
    assert out.loss.item() == pytest.approx(-head.crf(emissions, gold, keep, reduction="token_mean").item(), abs=1e-5)
    expected = torch.full((2, 7), -100)
    for i, (p, path) in enumerate(zip(pos, head.crf.decode(emissions, keep))):
        expected[i, p] = torch.tensor(path)
    assert torch.equal(out.predictions, expected)
    assert out.predictions.shape == labels.shape and out.predictions.dtype == torch.long
    assert torch.allclose(out.logits[0, [1, 3, 4]], emissions[0], atol=1e-6) and out.logits[0, 2].abs().sum() == 0


def test_crf_predictions_do_not_depend_on_batch_mates_or_padding():
    head = _crf_head(1)
    hidden = torch.randn(3, 9, 8)
    labels = torch.tensor([[-100, 0, 1, 2, -100, -100, -100, -100, -100],
                           [-100, 1, -100, 2, 2, 3, 4, 0, -100],
                           [-100, -100, -100, -100, -100, -100, -100, -100, -100]])  # nothing to tag: no crash
    together = head(hidden, torch.ones(3, 9), labels, None)
    alone = head(hidden[:1, :5], torch.ones(1, 5), labels[:1, :5], None)
    assert torch.equal(together.predictions[0, :5], alone.predictions[0])
    assert torch.allclose(together.logits[0, :5], alone.logits[0], atol=1e-6)
    assert (together.predictions[2] == -100).all()
    head.train()
    assert head(hidden, torch.ones(3, 9), labels, None).predictions is None  # no Viterbi while training


def test_without_labels_the_label_mask_chooses_the_positions(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", *NER, methods=[CRF_SPEC]))
    words = [["本报", "北京", "讯"], ["新华社", "记者", "王", "黎"]]
    encoding = run.tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
    mask = word_start_mask(encoding)
    expected = [[lab != tasks.IGNORE for lab in row["labels"]] for row in
                tasks.tokenize_tagging({"train": _tagged(words)}, run.tokenizer, 64, "t").rows["train"]]
    assert [m[:len(e)] for m, e in zip(mask.tolist(), expected)] == expected
    run.raw_model.eval()
    with torch.no_grad():
        out = run.raw_model(encoding["input_ids"], encoding["attention_mask"], label_mask=mask)
        every = run.raw_model(encoding["input_ids"], encoding["attention_mask"])
    assert torch.equal(out.predictions != -100, mask)                          # one tag per word
    assert torch.equal(every.predictions != -100, encoding["attention_mask"].bool())  # else every attended token


def _tagged(words):
    import datasets
    return datasets.Dataset.from_dict({"tokens": words, "tags": [[0] * len(w) for w in words]})


def test_crf_golden_loss(tmp_path):
    """Fixed seed, fixed data: the first three losses are pinned so a change in the maths is caught."""
    run = Run(_cfg(tmp_path, "bert-like", *NER, "train.seed=7", methods=[CRF_SPEC]))
    run.start()
    losses = [s["loss"] for s in _steps(run)]
    assert losses == pytest.approx(GOLDEN, abs=1e-5), losses


GOLDEN = [1.8988744, 1.8258228, 1.7570051]


def test_loss_weight_scales_the_training_loss(tmp_path):
    first = {}
    for weight in (1.0, 2.5):
        run = Run(_cfg(tmp_path / str(weight), "bert-like", *NER, "train.max_steps=1",
                       methods=[{**CRF_SPEC, "loss_weight": weight}]))
        run.start()
        first[weight] = _steps(run)[0]["loss"]
    assert first[2.5] == pytest.approx(2.5 * first[1.0], rel=1e-5)


def test_composes_with_layer_lr_head_group(tmp_path):
    run = Run(_cfg(tmp_path, "llama-like", *NER, methods=[CRF_SPEC, {"name": "layer_lr", "lr": {"head": 3e-3}}]))
    head = [g for g in run.optimizer.param_groups if g["name"].startswith("head")]
    names = {n for n, p in run.raw_model.named_parameters() for g in head for q in g["params"] if p is q}
    assert names == HEAD_PARAMS["bilstm_crf"] and {g["lr"] for g in head} == {3e-3}


def _ner_slice(tmp: Path, n_rows: int = 80) -> Path:
    """The first rows of peoples-daily-ner as a JSONL file: each subprocess reads them without rebuilding the set."""
    from nbtune import assets
    train = assets.load_dataset("peoples-daily-ner")["train"].select(range(n_rows))
    names = train.features["tags"].feature.names
    path = tmp / "ner.jsonl"
    path.write_text("".join(json.dumps({"tokens": r["tokens"], "tags": [names[t] for t in r["tags"]]},
                                       ensure_ascii=False) + "\n" for r in train), encoding="utf-8")
    return path


def test_resume_is_bit_identical_with_the_crf_head(tmp_path):
    spec = "{name: heads, head: bilstm_crf, lstm_hidden: 8}"
    extra = {"overrides": [*OVERRIDES, "task=token-classification", f"data.dataset={_ner_slice(tmp_path)}",
                           f"methods=[{spec}]"]}
    resume_is_exact(tmp_path, [6, 1], **extra)                          # stopped inside an accumulation window
    ref_w, _ = _final(tmp_path / "ref")
    assert {k for k in ref_w if k.startswith("classifier.crf.")} == {
        "classifier.crf.start_transitions", "classifier.crf.end_transitions", "classifier.crf.transitions"}


def test_save_pretrained_round_trips(tmp_path):
    run = Run(_cfg(tmp_path, "deepseek-v3-like", *NER, methods=[CRF_SPEC]))
    run.start()
    saved = run.save_pretrained(tmp_path / "export")
    assert {"config.json", "model.safetensors", "head.json", "head.safetensors", "tokenizer.json"} <= \
        {p.name for p in saved.iterdir()}
    loaded = load_pretrained(saved).eval()
    batch = run.collate(list(range(4)), run.data.rows["test"])
    run.raw_model.eval()
    with torch.no_grad():
        a, b = run.raw_model(**batch), loaded(**batch)
    assert torch.equal(a.predictions, b.predictions) and torch.allclose(a.logits, b.logits, atol=1e-6)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-6)
    with pytest.raises(FileNotFoundError, match="no head.json"):
        load_pretrained(tmp_path)


def test_bad_configs_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="head must be one of .* got 'bilstm-crf'. Did you mean 'bilstm_crf'"):
        RunConfig(methods=[{"name": "heads", "head": "bilstm-crf"}]).validate()
    with pytest.raises(ConfigError, match=r"option\(s\) \['lstm_hidden'\] apply to head='bilstm_crf', not "
                                          r"head='mlp'"):
        RunConfig(methods=[{"name": "heads", "head": "mlp", "lstm_hidden": 64}]).validate()
    with pytest.raises(ConfigError, match="lstm_layers must be a whole number >= 1, got 0"):
        RunConfig(methods=[{"name": "heads", "lstm_layers": 0}]).validate()
    with pytest.raises(ConfigError, match=r"pooling must be one of \('mean', 'first', 'last'\), got 'max'"):
        RunConfig(methods=[{"name": "heads", "head": "mlp", "pooling": "max"}]).validate()
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.0"):
        RunConfig(methods=[{"name": "heads", "dropout": 1.0}]).validate()
    with pytest.raises(ConfigError, match="loss_weight must be a finite number > 0, got 0"):
        RunConfig(methods=[{"name": "heads", "loss_weight": 0}]).validate()
    with pytest.raises(ConfigError, match="unexpected keyword argument 'spec'"):
        RunConfig(methods=[{"name": "heads", "spec": {}}]).validate()
    cases = [("bert-like", ["task=classification", "data.dataset=trec"], [CRF_SPEC],
              "head='bilstm_crf' is for task token-classification, not task='classification'"),
             ("llama-like", [], [MLP_SPEC], "head='mlp' is for task classification or token-classification, "
                                            "not task='causal-lm'"),
             ("bert-like", NER, [CRF_SPEC, MLP_SPEC], "already has a custom head; list the heads method once")]
    for model, extra, methods, message in cases:
        with pytest.raises(MethodError, match=message):
            Run(_cfg(tmp_path, model, *extra, methods=methods))
    assert not any(tmp_path.rglob("metrics.jsonl"))                    # nothing trained, nothing written
    with pytest.raises(MethodError, match="expected a transformers task model with an encoder .* got Sequential"):
        Heads().prepare(torch.nn.Sequential(torch.nn.Linear(2, 2)), RunConfig(task="token-classification"))


@pytest.mark.integration
def test_demo_crf_vs_linear_on_peoples_daily_ner():
    """Prints the figures table (run with -s to see it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import demo_heads_ner
    results = demo_heads_ner.main(["--train-samples", "96", "--eval-samples", "48", "--batch-size", "16",
                                   "--threads", "1"])
    linear, crf = results["linear"], results["bilstm_crf"]
    for r in (linear, crf):
        for key in ("entity_precision", "entity_recall", "entity_f1"):
            assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0, (r["head"], key, r[key])
        assert r["rescored_entity_f1"] == pytest.approx(r["entity_f1"])   # the demo scores what the engine scored
        assert r["invalid_bio_gold"] == 0
    assert linear["steps"] == crf["steps"] == 6
    assert crf["invalid_bio"] <= linear["invalid_bio"], (crf["invalid_bio"], linear["invalid_bio"])
