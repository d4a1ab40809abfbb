"""AnnotatePanel: label texts one at a time with the keyboard; every action goes to an append-only LabelStore.

Keys (after clicking the key strip): 1..9 pick a label, s or the right arrow skips, u or backspace undoes the
latest action and goes back to its item. Only the current text is sent to the browser. All user text (texts,
label names, guideline, errors) is escaped. Re-running the cell resumes at the first item without an action.

Example:
    >>> panel = AnnotatePanel(["free prize!!", "see you at 6"], ["ham", "spam"], "labels.jsonl")  # doctest: +SKIP
    >>> panel.press("2"); panel.press("s"); panel.position                                    # doctest: +SKIP
    2
"""
from __future__ import annotations

import html
import os
from typing import Any, Callable, Sequence

import ipywidgets as widgets

from nbtune.data.label_store import LabelRecord, LabelStore, text_sha1
from nbtune.ui.widgets.keys import KeyCapture

SKIP_KEYS = ("s", "S", "ArrowRight")
UNDO_KEYS = ("u", "U", "Backspace")
MAX_KEYED_LABELS = 9


class AnnotatePanel:
    """Keyboard-first labelling of `texts` with `labels`, written to `store_path` as `annotator`.

    Args:
        texts: the texts to label, in order.
        labels: the label names; the first nine get the number keys 1..9.
        store_path: the JSONL label file (shared with other annotators, or one per annotator).
        annotator: the name written on each action.
        guideline: labelling instructions shown beside the text (escaped, preformatted).
        item_ids: a stable id per text (default: its position as a string).
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[str], store_path: str | os.PathLike,
                 annotator: str = "me", guideline: str = "", item_ids: Sequence[Any] | None = None) -> None:
        self.texts = _check_texts(texts)
        self.labels = _check_labels(labels)
        self.item_ids = _check_ids(item_ids, len(self.texts))
        self.guideline = str(guideline or "")
        self.store = LabelStore(store_path, annotator)
        self._index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.message = ""
        self.error: str | None = None
        self.position = self._first_open(0)

        self.text_html = widgets.HTML()
        self.progress_html = widgets.HTML()
        self.message_html = widgets.HTML()
        self.guideline_html = widgets.HTML(_guideline_html(self.guideline))
        self.label_buttons = []
        for i, name in enumerate(self.labels):
            button = widgets.Button(description=f"{i + 1}  {name}" if i < MAX_KEYED_LABELS else name,
                                    tooltip=name, layout={"width": "auto"})
            button.add_class(f"nbtune-label-{i}")
            button.on_click(self._guarded(lambda _b, i=i: self.label(i)))
            self.label_buttons.append(button)
        self.skip_button = widgets.Button(description="Skip (s / →)", layout={"width": "auto"})
        self.undo_button = widgets.Button(description="Undo (u / ⌫)", layout={"width": "auto"})
        self.skip_button.on_click(self._guarded(lambda _b: self.skip()))
        self.undo_button.on_click(self._guarded(lambda _b: self.undo()))
        n_keyed = min(len(self.labels), MAX_KEYED_LABELS)
        self.keys = KeyCapture(keys=[str(i + 1) for i in range(n_keyed)] + list(SKIP_KEYS) + list(UNDO_KEYS),
                               hint=f"1-{n_keyed} label · s or → skip · u or ⌫ undo",
                               on_key=self._guarded(self.press))

        buttons = widgets.HBox(self.label_buttons + [self.skip_button, self.undo_button],
                               layout={"flex_flow": "row wrap"})
        main = widgets.VBox([self.progress_html, self.text_html, buttons, self.keys, self.message_html],
                            layout={"flex": "2 1 0%", "min_width": "0"})
        side = widgets.VBox([self.guideline_html], layout={"flex": "1 1 0%", "min_width": "0"})
        self.widget = widgets.HBox([main, side] if self.guideline else [main], layout={"width": "100%"})
        for w, name in ((self.widget, "annotate"), (self.text_html, "annotate-text"), (self.keys, "annotate-keys"),
                        (self.progress_html, "annotate-progress"), (self.message_html, "annotate-message"),
                        (self.guideline_html, "annotate-guideline"), (self.skip_button, "annotate-skip"),
                        (self.undo_button, "annotate-undo")):
            w.add_class(f"nbtune-{name}")
        notes = list(self.store.notes) + self._changed_texts()
        if notes:
            self.message = " · ".join(notes)
        self._render()

    # ---- state ----
    @property
    def n_labelled(self) -> int:
        """How many of this panel's items carry a label (undos applied) from this annotator."""
        return sum(1 for i in self.item_ids if (s := self.store.state.state(i)) is not None and s.action == "label")

    @property
    def n_skipped(self) -> int:
        return sum(1 for i in self.item_ids if (s := self.store.state.state(i)) is not None and s.action == "skip")

    @property
    def done(self) -> bool:
        return self.position >= len(self.texts)

    def labelled_pairs(self) -> list[tuple[str, str]]:
        """(text, label) for every item this annotator labelled (undos applied): what
        `run.continue_with(...)` takes to train further on the new labels."""
        pairs = []
        for item_id, text in zip(self.item_ids, self.texts):
            state = self.store.state.state(item_id)
            if state is not None and state.action == "label":
                pairs.append((text, state.label))
        return pairs

    def _first_open(self, start: int) -> int:
        """The first item at or after `start` with no action in force."""
        for i in range(start, len(self.texts)):
            if self.store.state.state(self.item_ids[i]) is None:
                return i
        return len(self.texts)

    def _changed_texts(self) -> list[str]:
        changed = [i for i, item_id in enumerate(self.item_ids)
                   if (s := self.store.state.state(item_id)) is not None and s.text_sha1 != text_sha1(self.texts[i])]
        if not changed:
            return []
        return [f"{len(changed)} item(s) were labelled with a different text under the same id "
                f"(first: id {self.item_ids[changed[0]]!r}); check item_ids"]

    # ---- actions ----
    def press(self, key: str) -> str | None:
        """Apply a key as the keyboard would: '1'..'9' label, 's'/'ArrowRight' skip, 'u'/'Backspace' undo.
        Returns the action taken ('label', 'skip', 'undo') or None."""
        if key in SKIP_KEYS:
            return "skip" if self.skip() else None
        if key in UNDO_KEYS:
            return "undo" if self.undo() else None
        if key.isdigit() and 1 <= int(key) <= min(len(self.labels), MAX_KEYED_LABELS):
            return "label" if self.label(int(key) - 1) else None
        self.message = f"key {key!r} does nothing here; {self.keys.hint}"
        self._render()
        return None

    def label(self, i: int) -> LabelRecord | None:
        """Give the current item label number `i` (0-based) and move to the next item."""
        if not isinstance(i, int) or not 0 <= i < len(self.labels):
            raise ValueError(f"label index must be 0..{len(self.labels) - 1}; found {i!r}")
        if self.done:
            return self._all_done()
        rec = self.store.label(self.item_ids[self.position], self.texts[self.position], self.labels[i])
        self._advance(f"labelled item {self.position + 1} as {self.labels[i]!r}")
        return rec

    def skip(self) -> LabelRecord | None:
        """Skip the current item (recorded, so a resume does not show it again) and move on."""
        if self.done:
            return self._all_done()
        rec = self.store.skip(self.item_ids[self.position], self.texts[self.position])
        self._advance(f"skipped item {self.position + 1}")
        return rec

    def undo(self) -> LabelRecord | None:
        """Revert the latest action and go back to its item; returns the reverted action (None: nothing)."""
        undone = self.store.undo()
        if undone is None:
            self.message = "nothing to undo"
        else:
            if undone.item_id in self._index:
                self.position = self._index[undone.item_id]
            what = f"label {undone.label!r}" if undone.action == "label" else "skip"
            where = (f"item {self._index[undone.item_id] + 1}" if undone.item_id in self._index
                     else f"item id {undone.item_id!r} (not in this panel)")
            self.message = f"undid the {what} of {where}"
        self._render()
        return undone

    def _advance(self, message: str) -> None:
        self.message = message
        self.position = self._first_open(self.position + 1)
        self._render()

    def _all_done(self) -> None:
        self.message = "all items have an action; press u to undo the latest"
        self._render()
        return None

    def _guarded(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Run a widget callback; show an error in the panel instead of losing it in the kernel log."""
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self.show_error(f"{type(exc).__name__}: {exc}")
                return None
        return run

    def show_error(self, message: str) -> None:
        self.error = message
        self.message_html.value = f'<div style="color:#b00020"><b>Error:</b> {html.escape(message)}</div>'

    # ---- render ----
    def _render(self) -> None:
        n = len(self.texts)
        self.progress_html.value = progress_html(self.n_labelled, self.n_skipped, n, self.position)
        if self.done:
            self.text_html.value = ('<div style="padding:8px"><b>All items have an action.</b> '
                                    'Press u to undo the latest one.</div>')
        else:
            self.text_html.value = text_html(self.texts[self.position], self.item_ids[self.position])
        for button in self.label_buttons + [self.skip_button]:
            button.disabled = self.done
        self.undo_button.disabled = self.store.state.last() is None
        self.message_html.value = f'<div style="color:#555">{html.escape(self.message)}</div>'

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


# ---- pure HTML builders (escaped) ----
def progress_html(n_labelled: int, n_skipped: int, n_items: int, position: int) -> str:
    """'12 / 200 labelled' plus skipped count and the current item number.

    >>> progress_html(3, 1, 10, 4)
    '<div><b>3 / 10 labelled</b> · 1 skipped · item 5 of 10</div>'
    """
    where = f"item {position + 1} of {n_items}" if position < n_items else "done"
    return f"<div><b>{n_labelled} / {n_items} labelled</b> · {n_skipped} skipped · {where}</div>"


def text_html(text: str, item_id: str) -> str:
    """The current text, escaped, under its id.

    >>> text_html("<b>hi</b>", "7").endswith(">&lt;b&gt;hi&lt;/b&gt;</div>")
    True
    """
    return (f'<div style="font-size:11px;color:#777">id {html.escape(item_id)}</div>'
            f'<div style="white-space:pre-wrap;font-size:15px;padding:10px;border:1px solid #ddd;'
            f'border-radius:4px;max-height:40vh;overflow:auto">{html.escape(text)}</div>')


def _guideline_html(guideline: str) -> str:
    if not guideline:
        return ""
    return (f'<div style="font-size:12px"><b>Guideline</b><pre style="white-space:pre-wrap;margin:4px 0">'
            f"{html.escape(guideline)}</pre></div>")


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__} ({t!r}); expected a string")
    if not texts:
        raise ValueError("texts is empty; expected at least one text to label")
    return texts


def _check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of names; found the string {labels!r}")
    labels = list(labels)
    for i, name in enumerate(labels):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"labels[{i}] is {name!r}; expected a non-empty string")
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes or not labels:
        raise ValueError(f"labels must be distinct and non-empty; found {labels}")
    return labels


def _check_ids(item_ids: Sequence[Any] | None, n: int) -> list[str]:
    if item_ids is None:
        return [str(i) for i in range(n)]
    ids = [str(i) for i in item_ids]
    if len(ids) != n:
        raise ValueError(f"item_ids has {len(ids)} entries but texts has {n}; expected one id per text")
    seen: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise ValueError(f"item_ids[{i}] is {item_id!r}, already used by item_ids[{seen[item_id]}]; "
                             f"expected unique ids")
        seen[item_id] = i
    return ids
