"""Merged export (nbtune.export.merge) and its model card (nbtune.export.card): a LoRA run and a plain run on
tiny-bert are saved, loaded back and compared logit for logit; nbtune.json carries the cleaning steps; the
card carries the config, the metrics and the live edits; a crash mid-save leaves nothing half-written."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import datasets
import pytest
import torch
import yaml

import nbtune
from nbtune.config import RunConfig
from nbtune.data.clean import apply_steps
from nbtune.engine.run import Run
from nbtune.export.card import escape, model_card
from nbtune.export.merge import _cpu_copy, load_merged, merged_model, preprocess, save_merged
from nbtune.export.types import ExportError

BASE = ["model.name=tiny-bert", "data.max_train_samples=64", "data.max_eval_samples=16", "train.batch_size=8",
        "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false", "train.precision=fp32"]
ODD_LABELS = ["billing|refund", "`tech` support", "other"]   # a pipe and backticks: must not break the card
NEW_LR = 2e-3


def _cfg(out: Path, *extra: str, methods=()) -> RunConfig:
    cfg = RunConfig().with_overrides([*BASE, f"output_dir={out}", *extra])
    cfg.methods = list(methods)
    return cfg


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Run:
    """LoRA r=4 on trec with HTML stripping and a live LR edit queued before start."""
    run = Run(_cfg(tmp_path_factory.mktemp("lora"), "data.dataset=trec", "data.cleaning=[strip_html]",
                   methods=[{"name": "lora", "r": 4}]))
    run.control.set("lr", NEW_LR)
    return run.start()


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Run:
    """Full fine-tuning on a small in-memory dataset whose labels hold Markdown specials."""
    words = ["refund", "router", "invoice", "printer", "weather", "parcel"]
    rows = [{"text": f"<p>Please help with the <b>{words[i % 6]}</b> #{i}</p>", "label": ODD_LABELS[i % 3]}
            for i in range(60)]
    cfg = _cfg(tmp_path_factory.mktemp("plain"), "data.cleaning=[strip_html, whitespace]")
    return Run(cfg, datasets.Dataset.from_list(rows)).start()


def _batch(run: Run) -> dict[str, torch.Tensor]:
    rows = run.data.rows["validation"]
    batch = run.collate(list(range(min(8, len(rows)))), rows)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    model.train(was_training)
    return out


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("which", ["lora_run", "plain_run"])
def test_saved_model_loads_back_with_the_runs_logits(request, tmp_path, which):
    run = request.getfixturevalue(which)
    batch, reference = _batch(run), _logits(run.raw_model, _batch(run))
    trainable = {n for n, p in run.raw_model.named_parameters() if p.requires_grad}
    directory = save_merged(run, tmp_path / "model")
    names = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "nbtune.json", "README.md"} <= names
    assert not names & {"adapter_model.safetensors", "adapter_config.json", "pytorch_model.bin"}

    model, tokenizer, meta = load_merged(directory)
    assert not model.training and type(model).__name__ == "BertForSequenceClassification"
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in model.named_parameters())
    assert (_logits(model, batch) - reference).abs().max().item() < 1e-5
    assert model.config.id2label == dict(enumerate(run.data.label_names)) and meta["labels"] == run.data.label_names
    assert model.config.label2id == {name: i for i, name in enumerate(run.data.label_names)}
    texts = ["what is the capital of peru ?", "who wrote hamlet"]
    assert tokenizer(texts)["input_ids"] == run.tokenizer(texts)["input_ids"]
    # The run is untouched: same adapters, same trainable set, same outputs.
    assert {n for n, p in run.raw_model.named_parameters() if p.requires_grad} == trainable
    assert torch.equal(_logits(run.raw_model, batch), reference)


def test_a_causal_lm_round_trips_without_labels(tmp_path):
    lm = tmp_path / "lm.jsonl"
    lm.write_text("".join(json.dumps({"text": f"the kitchen light {i} is on and the door {i % 7} is shut"}) + "\n"
                          for i in range(40)))
    run = Run(_cfg(tmp_path, "task=causal-lm", "model.name=tiny-llama", f"data.dataset={lm}", "train.max_steps=2",
                   "data.max_length=32", methods=[{"name": "lora", "r": 4}])).start()
    batch = _batch(run)
    model, _, meta = load_merged(save_merged(run, tmp_path / "lm-model"))
    assert type(model).__name__ == "LlamaForCausalLM" and meta["task"] == "causal-lm" and meta["labels"] == []
    assert (_logits(model, batch) - _logits(run.raw_model, batch)).abs().max().item() < 1e-5   # (B, T, V)
    assert (tmp_path / "lm-model" / "generation_config.json").is_file()
    card = (tmp_path / "lm-model" / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-generation" in card and "Labels in the train split" not in card


def test_lora_merge_folds_the_trained_adapters_in(lora_run):
    batch = _batch(lora_run)
    assert any(p.abs().max() > 0 for n, p in lora_run.raw_model.named_parameters() if "lora_B" in n)
    with lora_run.raw_model.disable_adapter():
        base = _logits(lora_run.raw_model, batch)
    merged = merged_model(lora_run)
    assert type(merged).__name__ == "BertForSequenceClassification" and not merged.training
    assert all(p.device.type == "cpu" for p in merged.parameters())
    assert (_logits(merged, batch) - base).abs().max().item() > 1e-4          # the adapters changed the output
    assert any("lora_" in n for n, _ in lora_run.raw_model.named_parameters())  # the run keeps its adapters


def test_plain_merge_is_a_copy(plain_run):
    merged = merged_model(plain_run)
    with torch.no_grad():
        next(merged.parameters()).add_(1.0)
    assert not torch.equal(next(merged.parameters()), next(plain_run.raw_model.parameters()))


def test_cpu_copy_keeps_ties_and_shares_nothing(lora_run):
    """The copy merged_model takes of an accelerator model (run here on the CPU): same outputs, tied weights
    still tied, no tensor shared with the run, adapters mergeable."""
    net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    net[1].weight = net[0].weight                                          # tied, as in an LM head
    net.register_buffer("scale", torch.ones(3))
    copied = _cpu_copy(net)
    assert copied[1].weight is copied[0].weight and copied[0].weight is not net[0].weight
    assert torch.equal(copied[0].weight, net[0].weight) and torch.equal(copied.scale, net.scale)
    copied.scale.add_(1)
    assert torch.equal(net.scale, torch.ones(3))
    batch = _batch(lora_run)
    merged = _cpu_copy(lora_run.raw_model).merge_and_unload().eval()
    assert (_logits(merged, batch) - _logits(lora_run.raw_model, batch)).abs().max().item() < 1e-5
    assert any("lora_" in n for n, _ in lora_run.raw_model.named_parameters())


@pytest.mark.gpu
def test_merging_a_cuda_run_gives_a_cpu_model_with_its_logits(tmp_path):
    run = Run(_cfg(tmp_path, "data.dataset=trec", methods=[{"name": "lora", "r": 4}]))
    assert run.device.type == "cuda"
    run.start()
    batch = _batch(run)
    reference = _logits(run.raw_model, {k: v.to(run.device) for k, v in batch.items()}).cpu()
    allocated = torch.cuda.memory_allocated()
    _, _, meta = load_merged(save_merged(run, tmp_path / "model"))
    model = merged_model(run)
    assert torch.cuda.memory_allocated() <= allocated                      # no copy left on the GPU
    assert all(p.device.type == "cpu" for p in model.parameters()) and meta["model"] == "tiny-bert"
    assert (_logits(model, batch) - reference).abs().max().item() < 1e-4
    assert next(run.raw_model.parameters()).device.type == "cuda"


def test_nbtune_json_carries_the_cleaning_steps(lora_run, plain_run, tmp_path):
    _, _, meta = load_merged(save_merged(lora_run, tmp_path / "lora"))
    assert {k: meta[k] for k in ("task", "model", "labels", "text_column", "max_length", "cleaning")} == {
        "task": "classification", "model": "tiny-bert", "labels": lora_run.data.label_names,
        "text_column": "text", "max_length": 128, "cleaning": ["strip_html"]}
    assert meta["nbtune_version"] == nbtune.__version__
    assert datetime.strptime(meta["created"], "%Y-%m-%dT%H:%M:%SZ").year >= 2024
    assert preprocess(["<p>What is <b>NASA</b> ?</p>"], meta) == ["What is NASA ?"]

    plain = json.loads((save_merged(plain_run, tmp_path / "plain") / "nbtune.json").read_text())
    assert plain["cleaning"] == ["strip_html", "whitespace"] and plain["labels"] == sorted(ODD_LABELS)
    raw = ["<div>  Please help\nwith the <i>router</i>  </div>"]
    assert preprocess(raw, plain) == apply_steps(raw, ["strip_html", "whitespace"]) == ["Please help with the router"]
    with pytest.raises(ExportError, match="expected the nbtune.json dict with a 'cleaning' list"):
        preprocess(raw, {"task": "classification"})


def _yaml_block(card: str) -> str:
    match = re.search(r"^(`{3,})yaml\n(.*?)\n\1$", card, flags=re.S | re.M)
    assert match, card
    return match.group(2)


def test_card_holds_config_metrics_and_the_live_edit(lora_run, tmp_path):
    card = model_card(lora_run)
    assert (save_merged(lora_run, tmp_path / "m") / "README.md").read_text(encoding="utf-8") == card
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification\n")
    assert "# tiny-bert fine-tuned for classification on trec" in card
    assert yaml.safe_load(_yaml_block(card)) == lora_run.cfg.to_dict()
    test, val = lora_run.results["test"], lora_run.results["validation"]
    assert f"| accuracy | {val['accuracy']:.4f} | {test['accuracy']:.4f} |" in card
    assert f"| loss | {val['loss']:.4f} | {test['loss']:.4f} |" in card
    assert "| step | name | old | new |" in card and f"| 0 | lr | 5e-05 | {NEW_LR:g} |" in card
    assert "| train | 64 |" in card and "| validation | 16 |" in card
    counts = [int(m) for m in re.findall(r"^\| (?:abbreviation|description|entity|human|location|number) \| (\d+) \|$",
                                         card, flags=re.M)]
    names = lora_run.data.label_names
    expected = sorted((sum(r["labels"] == i for r in lora_run.data.rows["train"]) for i in range(len(names))),
                      reverse=True)
    assert counts == expected and sum(counts) == 64 and 0 in counts       # a label absent from train is listed
    assert "- lora (r=4)" in card and "## Intended use and limitations" in card


def test_card_with_no_edits_and_many_labels_says_so(plain_run):
    card = model_card(plain_run)
    assert "No live edits were made during training." in card and "- full fine-tuning (no methods)" in card
    assert "on a dataset passed to Run" in card
    labels = plain_run.data.label_names
    try:   # 25 labels: the first 20 shown, the rest summed in one row
        plain_run.data.label_names = [f"label {i}" for i in range(25)]
        rows = plain_run.data.rows["train"]
        saved = [r["labels"] for r in rows]
        for i, r in enumerate(rows):
            r["labels"] = i % 25
        many = model_card(plain_run)
    finally:
        plain_run.data.label_names = labels
        for r, y in zip(rows, saved):
            r["labels"] = y
    assert "| label 19 |" in many and "| label 20 |" not in many
    assert "…and 5 more" in many and ", …and 5 more" in many


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_a_label_with_a_pipe_stays_one_table_cell(plain_run):
    card = model_card(plain_run)
    label_rows = [line for line in card.splitlines()
                  if line.startswith("| ") and ("refund" in line or "support" in line)]
    assert len(label_rows) == 2, label_rows
    assert {_cells(line)[0] for line in label_rows} == {r"billing\|refund", r"\`tech\` support"}
    assert all(len(_cells(line)) == 2 for line in label_rows)
    assert escape("a|b`c`\nd <num>") == r"a\|b\`c\` d &lt;num&gt;"


def test_markdown_renders_the_odd_labels_in_one_cell_each(plain_run):
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(model_card(plain_run))
    assert "<td>billing|refund</td>" in html and "<td>`tech` support</td>" in html
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    assert all(r.count("<td>") in (0, 2, 3, 4) for r in rows)       # no row grew an extra cell
    assert "<code>tech</code>" not in html


def test_prompt_tuning_cannot_be_merged(tmp_path):
    run = Run(_cfg(tmp_path, "data.dataset=trec", "data.max_length=64",
                   methods=[{"name": "prompt_tuning", "num_virtual_tokens": 4}]))
    with pytest.raises(ExportError, match=r"prompt tuning \(prompt_tuning\).*virtual tokens.*nothing to merge.*"
                                          r"save_adapters\(run, directory\)"):
        merged_model(run)
    with pytest.raises(ExportError, match="virtual tokens"):
        save_merged(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_custom_head_is_named_in_the_error(tmp_path):
    run = Run(_cfg(tmp_path, "data.dataset=trec", methods=[{"name": "heads", "head": "mlp"}]))
    with pytest.raises(ExportError, match=r"the run's model is a HeadModel \(head 'mlp'\), a custom module .*"
                                          r"run.save_pretrained\(directory\)"):
        merged_model(run)


def test_a_training_run_must_be_paused_first(lora_run, monkeypatch):
    monkeypatch.setattr(Run, "is_running", property(lambda self: True))
    with pytest.raises(ExportError, match=r"training in the background.*run.control.pause\(\)"):
        merged_model(lora_run)


def test_a_crash_mid_save_keeps_the_previous_export(lora_run, tmp_path, monkeypatch):
    target = save_merged(lora_run, tmp_path / "model")
    before = _digest(target)

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(lora_run.tokenizer, "save_pretrained", boom)
    with pytest.raises(ExportError, match=r"saving the tokenizer failed \(OSError: disk full\)"):
        save_merged(lora_run, target)
    assert _digest(target) == before                                      # the old export, byte for byte
    with pytest.raises(ExportError, match="saving the tokenizer failed"):
        save_merged(lora_run, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]        # no partial or temporary directory
    monkeypatch.undo()
    assert save_merged(lora_run, target) == target and _digest(target).keys() == before.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]        # replaced in place, old copy removed


def test_save_refuses_to_replace_a_foreign_directory(lora_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"non-empty directory without nbtune.json.*will not be replaced"):
        save_merged(lora_run, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="exists and is a file"):
        save_merged(lora_run, tmp_path / "file")


@pytest.mark.parametrize("content, message", [
    (None, r"nbtune.json not found; expected a JSON object with the keys task, model"),
    ("{not json", r"nbtune.json is not valid JSON"),
    ("[1, 2]", r"nbtune.json holds a list; expected a JSON object"),
    ('{"task": "classification"}', r"nbtune.json lacks model, labels, text_column, max_length, cleaning"),
    ('{"task": "ranking", "model": "m", "labels": [], "text_column": "text", "max_length": 8, "cleaning": []}',
     r"task 'ranking' is not one of classification, token-classification, causal-lm"),
], ids=["missing", "corrupt", "not-an-object", "keys-missing", "unknown-task"])
def test_load_merged_explains_a_bad_nbtune_json(tmp_path, content, message):
    if content is not None:
        (tmp_path / "nbtune.json").write_text(content)
    with pytest.raises(ExportError, match=message):
        load_merged(tmp_path)
