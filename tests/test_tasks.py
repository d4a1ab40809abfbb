"""The three tasks end to end on tiny random models, plus the pieces they are built from: tokenization with
label masking, evaluation metrics and the deterministic batch plan."""
import json
import math
from pathlib import Path

import datasets
import pytest

from nbtune import assets
from nbtune.config import RunConfig
from nbtune.engine import metrics, tasks
from nbtune.engine.batching import epoch_batches
from nbtune.engine.run import Run
from nbtune.engine.sinks import MemorySink

BASE = ["model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=32", "data.max_eval_samples=8",
        "data.max_length=32", "train.batch_size=8", "train.max_steps=3", "train.progress_bar=false",
        "train.tensorboard=false", "train.precision=fp32", "train.seed=7"]


def _config(tmp_path: Path, *extra: str) -> RunConfig:
    return RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}", *extra])


def _records(run: Run) -> list[dict]:
    return [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(assets.resolve_model("tiny-bert").tokenizer_path)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    # The first call on a fresh machine converts the GGUF (~30 s); later calls read the cache.
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(assets.resolve_model("smollm2").tokenizer_path)


# --------------------------------------------------------------------------------------- classification
def test_classification_run_logs_and_scores(tmp_path):
    run = Run(_config(tmp_path, "task=classification"), run_dir=tmp_path / "cls")
    run.start()
    assert run.state.status == "finished" and run.state.step == 3

    for split in ("validation", "test"):
        res = run.results[split]
        assert math.isfinite(res["loss"])
        assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["macro_f1"] <= 1.0

    records = _records(run)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert {"start", "step", "eval", "checkpoint", "end"} <= set(kinds)
    assert records[-1]["status"] == "finished"
    assert records[0]["total_steps"] == 3 and records[0]["label_names"] == run.data.label_names
    assert {r["split"] for r in records if r["kind"] == "eval"} == {"validation", "test"}

    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert set(r["grad_norm_groups"]) == {"decay", "no_decay"}
        assert all(math.isfinite(v) and v >= 0 for v in r["grad_norm_groups"].values())
        # The total norm is the norm of the per-group norms.
        total = math.sqrt(sum(v * v for v in r["grad_norm_groups"].values()))
        assert r["grad_norm"] == pytest.approx(total, rel=1e-4)
        assert set(r["lr"]) == {"decay", "no_decay"} and all(v > 0 for v in r["lr"].values())
        assert r["samples_per_second"] > 0 and r["tokens_per_second"] > 0
        assert isinstance(r["clipped"], bool)
    ckpts = [r for r in records if r["kind"] == "checkpoint"]
    assert ckpts and Path(ckpts[-1]["path"]).name == "step-000003"


def test_gradient_accumulation_halves_step_records(tmp_path):
    # 32 rows in micro-batches of 4 = 8 micro-batches per epoch; accumulating 2 gives 4 optimizer steps.
    cfg = _config(tmp_path, "train.batch_size=4", "train.gradient_accumulation_steps=2", "train.max_steps=null",
                  "train.num_train_epochs=1")
    run = Run(cfg, run_dir=tmp_path / "accum")
    micro_batches = len(run.epoch_plan(0))
    assert micro_batches == 8
    run.start()
    steps = [r for r in _records(run) if r["kind"] == "step"]
    assert len(steps) == micro_batches // 2 == run.total_steps
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert run.state.samples_seen == 32



def test_log_every_n_steps_thins_step_records_but_keeps_the_last(tmp_path):
    cfg = _config(tmp_path, "train.batch_size=4", "train.max_steps=7", "train.log_every_n_steps=3")
    run = Run(cfg, run_dir=tmp_path / "thin")
    run.start()
    assert [r["step"] for r in _records(run) if r["kind"] == "step"] == [3, 6, 7]
    assert run.state.samples_seen == 28  # every step still trained and counted


# ---------------------------------------------------------------------------------- token classification
def test_token_classification_run(tmp_path):
    cfg = _config(tmp_path, "task=token-classification", "data.dataset=peoples-daily-ner", "train.max_steps=2")
    run = Run(cfg, run_dir=tmp_path / "ner")
    assert run.data.label_names == assets.NER_TAGS
    run.start()
    assert run.state.status == "finished"
    for split in ("validation", "test"):
        res = run.results[split]
        assert math.isfinite(res["loss"])
        for key in ("token_f1", "entity_f1", "token_accuracy"):
            assert 0.0 <= res[key] <= 1.0


def test_tokenize_tagging_labels_first_subtoken_only(minilm_tokenizer):
    words = [["the", "unbelievableness", "of", "hyperparameterization"], ["nbtune", "works"]]
    tags = [[0, 1, 0, 2], [3, 0]]
    feats = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                               "tags": datasets.List(datasets.ClassLabel(names=["O", "B-X", "I-X", "B-Y"]))})
    split = datasets.Dataset.from_dict({"tokens": words, "tags": tags}, features=feats)
    ds = datasets.DatasetDict({"train": split, "validation": split, "test": split})

    data = tasks.tokenize_tagging(ds, minilm_tokenizer, max_length=64, where="hand-made")
    assert data.label_names == ["O", "B-X", "I-X", "B-Y"]
    for row, sentence, sentence_tags in zip(data.rows["train"], words, tags):
        pieces = [minilm_tokenizer.tokenize(w) for w in sentence]
        assert max(len(p) for p in pieces) > 1  # the case under test: a word split into several pieces
        expected = [tasks.IGNORE]  # [CLS]
        for word_pieces, tag in zip(pieces, sentence_tags):
            expected += [tag] + [tasks.IGNORE] * (len(word_pieces) - 1)
        expected.append(tasks.IGNORE)  # [SEP]
        assert row["labels"] == expected
        assert len(row["labels"]) == len(row["input_ids"])
        tokens = minilm_tokenizer.convert_ids_to_tokens(row["input_ids"])
        assert [t for t, lab in zip(tokens, row["labels"]) if lab != tasks.IGNORE] == [p[0] for p in pieces]


def _tagging_pairs(data, ds):
    """(label name the row carries, tag the word had) for every first sub-token."""
    pairs = []
    for row, sentence_tags in zip(data.rows["train"], ds["train"]["tags"]):
        carried = [lab for lab in row["labels"] if lab != tasks.IGNORE]
        pairs += [(data.label_names[lab], str(tag)) for lab, tag in zip(carried, sentence_tags)]
    return pairs


def test_tokenize_tagging_accepts_string_tags(minilm_tokenizer):
    split = datasets.Dataset.from_dict({"tokens": [["John", "lives", "in", "Paris"], ["hello"]],
                                        "tags": [["B-PER", "O", "O", "B-LOC"], ["O"]]})
    ds = datasets.DatasetDict({"train": split, "validation": split, "test": split})
    data = tasks.tokenize_tagging(ds, minilm_tokenizer, max_length=32, where="tags.jsonl")
    pairs = _tagging_pairs(data, ds)
    assert len(pairs) == 5 and all(name == tag for name, tag in pairs)


def test_tokenize_tagging_integer_tags_keep_their_names(minilm_tokenizer):
    split = datasets.Dataset.from_dict({"tokens": [list("abcdefghijkl")], "tags": [list(range(12))]})
    ds = datasets.DatasetDict({"train": split, "validation": split, "test": split})
    data = tasks.tokenize_tagging(ds, minilm_tokenizer, max_length=32, where="ints.jsonl")
    pairs = _tagging_pairs(data, ds)
    assert len(pairs) == 12 and all(name == tag for name, tag in pairs)


# ------------------------------------------------------------------------------------------ causal LM
def test_sft_row_masks_exactly_the_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    question, answer = "What is the capital of France?", "Paris is the capital."
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    row = tasks._sft_row(tok, messages, max_length=512)

    prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    full = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert row["input_ids"] == full
    assert len(row["labels"]) == len(full)
    n = len(prompt)
    assert row["input_ids"][:n] == prompt
    assert row["labels"][:n] == [tasks.IGNORE] * n  # system + user turns and the assistant header
    assert row["labels"][n:] == row["input_ids"][n:]
    assert tasks.IGNORE not in row["labels"][n:]
    assert tok.decode(row["input_ids"][:n]).endswith("<|im_start|>assistant\n")

    learned = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != tasks.IGNORE])
    assert learned.strip() == answer + "<|im_end|>"


def test_sft_row_truncated_inside_prompt_learns_nothing(smollm2_tokenizer):
    messages = [{"role": "user", "content": "Tell me a long story " * 20}, {"role": "assistant", "content": "No."}]
    row = tasks._sft_row(smollm2_tokenizer, messages, max_length=16)
    assert len(row["input_ids"]) == len(row["labels"]) == 16
    assert row["labels"] == [tasks.IGNORE] * 16


def test_tiny_deepseek_v3_plain_text_lm(tmp_path):
    texts = list(assets.load_dataset("movie-sentiment")["train"]["text"][:64])
    ds = datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": rows}) for name, rows in
                               (("train", texts[:16]), ("validation", texts[48:56]), ("test", texts[56:64]))})
    cfg = RunConfig().with_overrides([
        "task=causal-lm", "model.name=tiny-deepseek-v3", "data.dataset=movie-sentiment", "data.max_length=32",
        "train.batch_size=4", "train.max_steps=5", "train.learning_rate=1e-3", "train.warmup_ratio=0",
        "train.scheduler=constant", "train.precision=fp32", "train.progress_bar=false", "train.tensorboard=false",
        "train.seed=3", f"output_dir={tmp_path}"])
    sink = MemorySink()
    run = Run(cfg, ds, sinks=[sink], run_dir=tmp_path / "dsv3")

    model = run.raw_model
    assert type(model).__name__ == "DeepseekV3ForCausalLM"
    assert model.config.model_type == "deepseek_v3"
    assert model.config.n_routed_experts == 4
    moe_layers = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]
    assert moe_layers, "expected MoE layers after the first dense one"
    assert all(hasattr(m, "gate") for m in moe_layers)
    assert run.data.rows["train"][0]["labels"] == run.data.rows["train"][0]["input_ids"]

    run.start()
    losses = [r["loss"] for r in sink.of_kind("step")]
    assert len(losses) == 5
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    for split in ("validation", "test"):
        res = run.results[split]
        assert math.isfinite(res["perplexity"]) and res["perplexity"] > 1
        assert res["perplexity"] == pytest.approx(math.exp(res["loss"]), rel=1e-6)


# -------------------------------------------------------------------------------------------- metrics
def test_entities_bio_decoding():
    assert metrics.entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert metrics.entities(["O", "I-ORG", "I-ORG", "O"]) == {("ORG", 1, 3)}  # a stray I- starts an entity
    assert metrics.entities(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # type change splits
    assert metrics.entities(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}
    assert metrics.entities(["O", "O"]) == set()
    assert metrics.entities([]) == set()


def test_tagging_scores_known_answers():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    perfect = metrics.tagging_scores(gold, gold)
    assert perfect == {"token_accuracy": 1.0, "token_f1": 1.0, "entity_precision": 1.0, "entity_recall": 1.0,
                       "entity_f1": 1.0}

    # A partial span: the PER entity is cut short, so it does not count; LOC is exact.
    partial = metrics.tagging_scores(gold, [["B-PER", "O", "O", "B-LOC"]])
    assert partial["entity_precision"] == pytest.approx(1 / 2)  # predicted {PER(0,1), LOC}: one right
    assert partial["entity_recall"] == pytest.approx(1 / 2)
    assert partial["entity_f1"] == pytest.approx(1 / 2)
    assert partial["token_accuracy"] == pytest.approx(3 / 4)
    assert partial["token_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # tp=2, fp=0, fn=1

    # A stray I- tag in the prediction is an extra (wrong) entity.
    stray = metrics.tagging_scores([["O", "O", "B-LOC"]], [["I-PER", "O", "B-LOC"]])
    assert stray["entity_precision"] == pytest.approx(1 / 2)
    assert stray["entity_recall"] == 1.0
    assert stray["entity_f1"] == pytest.approx(2 / 3)

    nothing = metrics.tagging_scores([["B-PER"]], [["O"]])
    assert nothing["entity_f1"] == 0.0 and nothing["token_f1"] == 0.0 and nothing["token_accuracy"] == 0.0


def test_macro_f1_and_accuracy_known_answers():
    assert metrics.macro_f1([0, 1, 1], [0, 1, 0]) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert metrics.macro_f1([0, 1, 2], [0, 1, 2]) == 1.0
    assert metrics.macro_f1([0, 0], [1, 1]) == 0.0
    # A class only predicted (never gold) counts with F1 0: classes are the union of gold and pred.
    assert metrics.macro_f1([0, 0, 0], [0, 0, 1]) == pytest.approx((0.8 + 0.0) / 2)
    assert metrics.macro_f1([], []) == 0.0
    assert metrics.accuracy([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    assert metrics.accuracy([], []) == 0.0


# ------------------------------------------------------------------------------------------- batching
LENGTHS = [(i * 37) % 23 + 1 for i in range(103)]


def test_epoch_batches_cover_every_index_once():
    for group in (True, False):
        for epoch in (0, 1, 2):
            plan = epoch_batches(LENGTHS, 8, seed=5, epoch=epoch, group_by_length=group)
            flat = [i for b in plan for i in b]
            assert sorted(flat) == list(range(len(LENGTHS)))
            assert all(1 <= len(b) <= 8 for b in plan)
            assert sum(len(b) < 8 for b in plan) <= 1  # only one short remainder batch


def test_epoch_batches_deterministic_and_vary_by_epoch():
    for group in (True, False):
        a = epoch_batches(LENGTHS, 8, seed=5, epoch=1, group_by_length=group)
        assert a == epoch_batches(list(LENGTHS), 8, seed=5, epoch=1, group_by_length=group)
        assert a != epoch_batches(LENGTHS, 8, seed=5, epoch=2, group_by_length=group)
        assert a != epoch_batches(LENGTHS, 8, seed=6, epoch=1, group_by_length=group)


def test_epoch_batches_two_ranks_disjoint_and_equal():
    for group in (True, False):
        r0 = epoch_batches(LENGTHS, 8, seed=5, epoch=0, group_by_length=group, rank=0, world_size=2)
        r1 = epoch_batches(LENGTHS, 8, seed=5, epoch=0, group_by_length=group, rank=1, world_size=2)
        assert len(r0) == len(r1) == len(epoch_batches(LENGTHS, 8, 5, 0, group)) // 2
        s0, s1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
        assert not s0 & s1
        assert sum(map(len, r0)) == len(s0) and sum(map(len, r1)) == len(s1)  # no index twice on one rank


def _padding(plan: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plan)


def test_group_by_length_reduces_padding_on_real_lengths(minilm_tokenizer):
    texts = list(assets.load_dataset("trec")["train"]["text"])
    lengths = [len(ids) for ids in minilm_tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    assert len(set(lengths)) > 5
    grouped = [_padding(epoch_batches(lengths, 16, 42, e, group_by_length=True), lengths) for e in range(3)]
    plain = [_padding(epoch_batches(lengths, 16, 42, e, group_by_length=False), lengths) for e in range(3)]
    assert sum(grouped) / 3 < sum(plain) / 3
    assert max(grouped) < min(plain)
