"""A self-contained model directory from a run: LoRA/DoRA adapters merged into the weights, the tokenizer, the
label names in the model config, and `nbtune.json` with what serving needs to rebuild the model's inputs (the
cleaning steps, the text column, the maximum length), plus the model card (README.md).

    >>> directory = save_merged(run, "exports/intent-model")                      # doctest: +SKIP
    >>> model, tokenizer, meta = load_merged(directory)                           # doctest: +SKIP
    >>> texts = preprocess(["<p>Turn the lights off</p>"], meta)                  # doctest: +SKIP
    >>> model(**tokenizer(texts, return_tensors="pt", truncation=True,
    ...                   max_length=meta["max_length"])).logits.argmax(-1)       # doctest: +SKIP

The directory is built beside its target and renamed into place, so a crash never leaves half a model where a
server might load it, and an earlier export at the same path survives until the new one is complete.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nbtune.export.types import ExportError

META_FILE = "nbtune.json"
META_FORMAT = 1
REQUIRED_META = ("task", "model", "labels", "text_column", "max_length", "cleaning")
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification",
                "causal-lm": "AutoModelForCausalLM"}


def _unwrapped(run: Any) -> torch.nn.Module:
    model = getattr(run, "raw_model", None)
    if model is None:  # a run-like object without raw_model: take the accelerator's unwrapped model
        model = run.accelerator.unwrap_model(run.model)
    return model


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy whose tensors live on the CPU, made without a second copy on the accelerator: parameters
    and buffers are copied to the CPU first and handed to deepcopy through its memo (tied weights stay tied,
    since a shared tensor has one id)."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
        for b in model.buffers():
            if id(b) not in memo:
                memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo).to("cpu")


def _refuse_unmergeable(run: Any, model: torch.nn.Module) -> None:
    if getattr(run, "is_running", False) and not run.control.paused:
        raise ExportError("the run is training in the background, so its weights change between steps; pause it "
                          "(run.control.pause()) or wait for the end (run.wait()) before exporting")
    if hasattr(model, "peft_config") and model.active_peft_config.is_prompt_learning:
        kind = model.active_peft_config.peft_type.value.lower()
        raise ExportError(f"this run was trained with prompt tuning ({kind}): it learns virtual tokens that are "
                          "prepended to every input, not weight changes, so there is nothing to merge into a plain "
                          "model. Save the adapters with nbtune.methods.lora.save_adapters(run, directory) and load "
                          "them with peft's PeftModel.from_pretrained, or train with LoRA to export a merged model")
    from transformers import PreTrainedModel
    inner = model.get_base_model() if hasattr(model, "peft_config") else model
    if not isinstance(inner, PreTrainedModel):
        spec = getattr(inner, "spec", None)
        head = f" (head {spec['head']!r})" if isinstance(spec, dict) and "head" in spec else ""
        raise ExportError(f"the run's model is a {type(inner).__name__}{head}, a custom module rather than a "
                          "transformers model, so it cannot be saved as one merged transformers directory; save it "
                          "with run.save_pretrained(directory) (encoder + head files) instead")


def merged_model(run: Any) -> torch.nn.Module:
    """A plain transformers model in eval mode on the CPU: LoRA/DoRA adapters merged into a copy (the run keeps
    its adapters and can go on training); a run without adapters gives a CPU copy of its model.

        >>> model = merged_model(run)                                  # doctest: +SKIP
        >>> any("lora_" in n for n, _ in model.named_parameters())     # doctest: +SKIP
        False

    Raises ExportError for prompt tuning (virtual tokens cannot be merged) and for custom heads (BiLSTM+CRF,
    MLP, multi-task) that are not transformers models.
    """
    model = _unwrapped(run)
    _refuse_unmergeable(run, model)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    source = model if on_cpu else _cpu_copy(model)  # merge on the CPU: no second copy in accelerator memory
    if hasattr(source, "peft_config") and source is model:
        from nbtune.methods.lora import merge_adapters
        merged = merge_adapters(source)  # peft merge_and_unload on a deep copy
    elif hasattr(source, "peft_config"):
        merged = source.merge_and_unload()  # already a private copy: merge it in place, no third copy
    else:
        merged = copy.deepcopy(source) if source is model else source
    return merged.to("cpu").eval()


def _cleaning_spec(cleaning: list) -> list:
    """The config's steps verbatim; a step object (allowed in a Python-built config) as its plain spec."""
    return [step.to_spec() if hasattr(step, "to_spec") else copy.deepcopy(step) for step in cleaning]


def _meta(run: Any) -> dict[str, Any]:
    from nbtune import __version__
    cfg = run.cfg
    return {"format": META_FORMAT, "task": cfg.task, "model": cfg.model.name,
            "labels": list(run.data.label_names), "text_column": cfg.data.text_column,
            "max_length": cfg.data.max_length, "cleaning": _cleaning_spec(cfg.data.cleaning),
            "nbtune_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _set_label_names(model: torch.nn.Module, labels: list[str]) -> None:
    """id2label / label2id from the run's labels, so pipelines and servers report names rather than LABEL_3."""
    if not labels:  # causal LM: no label head
        return
    config = model.config
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}


def _write(run: Any, model: torch.nn.Module, target: Path) -> None:
    """Fill a fresh directory; each step is named in the error if it fails."""
    from nbtune.export.card import model_card
    steps = [("saving the merged weights", lambda: model.save_pretrained(target)),
             ("saving the tokenizer", lambda: run.tokenizer.save_pretrained(target)),
             (f"writing {META_FILE}", lambda: (target / META_FILE).write_text(
                 json.dumps(_meta(run), indent=1, ensure_ascii=False), encoding="utf-8")),
             ("writing the model card README.md", lambda: (target / "README.md").write_text(
                 model_card(run), encoding="utf-8"))]
    from nbtune.engine.build import _quiet_load  # no "Writing model shards" bar in the notebook
    for what, step in steps:
        try:
            with _quiet_load():
                step()
        except Exception as exc:  # noqa: BLE001 - named and re-raised as the export error
            raise ExportError(f"save_merged: {what} failed ({type(exc).__name__}: {exc}); the target directory "
                              "was left as it was") from exc


def _check_target(directory: Path) -> None:
    """Replace only what we wrote before: a non-empty directory without nbtune.json may be the user's files."""
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"save_merged: {directory} exists and is a file; expected a directory path (new, or one "
                          "written by save_merged before)")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / META_FILE).is_file():
        raise ExportError(f"save_merged: {directory} is a non-empty directory without {META_FILE}, so it was not "
                          "written by save_merged and will not be replaced; choose a new directory or empty it")


def _swap_in(built: Path, directory: Path) -> None:
    """Rename the finished directory over the target; the old one is kept aside until the rename succeeded."""
    old = None
    if directory.exists():
        old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".old"))
        os.rmdir(old)
        os.replace(directory, old)
    try:
        os.replace(built, directory)
    except BaseException:
        if old is not None:
            os.replace(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_merged(run: Any, directory: str | Path, *, model: torch.nn.Module | None = None) -> Path:
    """Write the merged model (model.safetensors, config with id2label), the tokenizer, nbtune.json and README.md
    into `directory`, atomically. `model` reuses a model from merged_model(run); by default one is merged here.

        >>> path = save_merged(run, "exports/intents")                 # doctest: +SKIP
        >>> sorted(p.name for p in path.iterdir())                     # doctest: +SKIP
        ['README.md', 'config.json', 'model.safetensors', 'nbtune.json', 'tokenizer.json', ...]

    Only the main process writes under a distributed launch; the others return the path.
    """
    directory = Path(directory)
    accelerator = getattr(run, "accelerator", None)
    if accelerator is not None and not accelerator.is_main_process:
        return directory
    _check_target(directory)
    model = merged_model(run) if model is None else model
    _set_label_names(model, list(run.data.label_names))
    directory.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        _write(run, model, built)
        os.chmod(built, 0o755)  # mkdtemp makes it private; a model directory is meant to be shared
        _swap_in(built, directory)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    """nbtune.json of a saved directory, checked; ExportError names the file and what was expected."""
    path = Path(directory) / META_FILE
    expected = f"a JSON object with the keys {', '.join(REQUIRED_META)}, as written by nbtune's save_merged"
    if not path.is_file():
        raise ExportError(f"{path} not found; expected {expected}. Is {Path(directory)} a merged nbtune export?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); expected {expected}") from exc
    if not isinstance(meta, dict):
        raise ExportError(f"{path} holds a {type(meta).__name__}; expected {expected}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ExportError(f"{path} lacks {', '.join(missing)}; expected {expected}")
    if meta["task"] not in AUTO_CLASSES:
        raise ExportError(f"{path}: task {meta['task']!r} is not one of {', '.join(AUTO_CLASSES)}")
    return meta


def load_merged(directory: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, the nbtune.json dict) from a directory written by save_merged.

        >>> model, tokenizer, meta = load_merged("exports/intents")    # doctest: +SKIP
        >>> meta["labels"][:2], meta["cleaning"]                       # doctest: +SKIP
        (['abbreviation', 'description'], ['strip_html'])
    """
    import transformers
    meta = read_meta(directory)
    auto = getattr(transformers, AUTO_CLASSES[meta["task"]])
    model = auto.from_pretrained(str(directory))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    return model.eval(), tokenizer, meta


def preprocess(texts: list[str], meta: dict[str, Any]) -> list[str]:
    """The cleaning steps of nbtune.json applied to raw texts, so served text is cleaned like training text.

        >>> preprocess(["<p>Turn <b>off</b> the lights &amp; fan</p>"], {"cleaning": ["strip_html"]})
        ['Turn off the lights & fan']
    """
    from nbtune.data.clean import apply_steps
    if not isinstance(meta, dict) or not isinstance(meta.get("cleaning"), list):
        raise ExportError(f"preprocess: expected the nbtune.json dict with a 'cleaning' list (from load_merged), "
                          f"got {type(meta).__name__}" + (f" with cleaning={meta.get('cleaning')!r}"
                                                          if isinstance(meta, dict) else ""))
    return apply_steps(texts, meta["cleaning"])
