"""A Triton Inference Server model repository for an exported ONNX model, and a validator that checks it the way
Triton would: the config parsed into Triton's own `ModelConfig` schema, the folder layout, and the config's inputs
and outputs against the ONNX graph itself.

    repo/
      tiny/                     the ONNX Runtime model, CPU instances, dynamic batching
        config.pbtxt
        labels.txt              one label per line (classifiers)
        1/model.onnx
      tiny_tensorrt/            the same file on GPU through ORT's TensorRT execution provider
        config.pbtxt
        1/model.onnx

Example:
    >>> write_triton_repository("out/model.onnx", "out/triton", "intents", labels=["greet", "bye"])  # doctest: +SKIP
    >>> [m.name for m in validate_repository("out/triton")]                                        # doctest: +SKIP
    ['intents', 'intents_tensorrt']
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbtune.export.types import ExportError
from nbtune.fileio import atomic_write_text

INSTALL = "pip install 'nbtune[export]'"
CONFIG = "config.pbtxt"
LABELS = "labels.txt"
DEFAULT_MAX_BATCH_SIZE = 32
_DEFAULT_PREFERRED = (8, 16, 32)
TRT_PRECISIONS = ("FP32", "FP16")      # INT8 needs a calibration table or a Q/DQ graph, which we do not write
TRT_WORKSPACE_BYTES = 1 << 30
# ONNX element type name -> Triton data type (model_config.proto)
_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16", "DOUBLE": "TYPE_FP64",
          "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
          "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64",
          "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING"}


class TritonConfigError(ExportError):
    """A Triton model repository (or the request to write one) breaks a rule Triton enforces; the message names
    the config.pbtxt and what is wrong."""


@dataclass
class TritonModel:
    """One validated model folder of a repository."""
    name: str
    config: Any                # tritonclient.grpc.model_config_pb2.ModelConfig, as parsed from config.pbtxt
    versions: list[int]
    model_file: Path           # the newest version's model file


@dataclass(frozen=True)
class _Tensor:  # one graph input or output: Triton data type, full shape with -1 where the axis is symbolic
    name: str
    data_type: str
    shape: tuple[int, ...]


def _import(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"Triton repositories need the '{module.split('.')[0]}' package: {INSTALL}") from exc


@dataclass
class _Graph:  # what a config is checked against
    inputs: list[_Tensor]
    outputs: list[_Tensor]
    external: list[str]        # paths relative to the model file (large models keep weights outside)


def _graph(path: Path, where: Path) -> _Graph:
    """Read an ONNX file's signature without loading its weights."""
    onnx = _import("onnx")
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a protobuf DecodeError, an OSError: either way not a usable model file
        raise TritonConfigError(f"{where}: cannot read the ONNX model {path}: {exc}") from exc
    graph = model.graph
    weights = {t.name for t in graph.initializer}  # old exporters list weights as inputs too

    def tensor(value) -> _Tensor:
        kind = value.type.tensor_type
        name = onnx.TensorProto.DataType.Name(kind.elem_type)
        if name not in _TYPES or not kind.HasField("shape"):
            raise TritonConfigError(f"{where}: graph tensor {value.name!r} of {path} has element type {name} or "
                                    f"no shape; expected a tensor of one of {', '.join(sorted(_TYPES))} with a shape")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
        return _Tensor(value.name, _TYPES[name], dims)

    external = sorted({ExternalDataInfo(t).location for t in graph.initializer if uses_external_data(t)})
    for location in external:
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise TritonConfigError(f"{where}: {path} keeps weights in {location!r}, outside the model's folder; "
                                    "re-save it with relative external data (onnx.save(..., location=...))")
    return _Graph([tensor(v) for v in graph.input if v.name not in weights], [tensor(v) for v in graph.output],
                  external)


def _kv_cache(inputs: list[_Tensor]) -> bool:
    return any(t.name.startswith("past_key_values.") for t in inputs)


def _parse(text: str, where: Path):
    """Triton's ModelConfig from pbtxt text; a misspelt field or enum fails with the parser's line:column."""
    from google.protobuf import text_format
    model_config_pb2 = _import("tritonclient.grpc.model_config_pb2")
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonConfigError(f"{where}: not a valid Triton model config at line:column {exc}") from exc


# ------------------------------------------------------------------------------------------------- pbtxt writer
class _Enum(str):
    """A bare enum identifier (TYPE_FP32, KIND_CPU), written without quotes."""


def _scalar(value: Any) -> str:
    from google.protobuf import text_encoding
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, (int, _Enum)):
        return str(value)
    return '"' + text_encoding.CEscape(str(value), as_utf8=True) + '"'


def _render(message: dict[str, Any], depth: int = 0) -> list[str]:
    """pbtxt lines of a message given as a dict: dict = nested message, list of dicts = repeated message,
    list of scalars = repeated scalar; 2-space indents, repeated messages in Triton's `key [ {...}, {...} ]` form."""
    pad, lines = "  " * depth, []
    for key, value in message.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) and set(v) == {"key", "value"}
                                                     for v in value):  # map entries, one a line as Triton's docs do
            lines += [f'{pad}{key} {{ key: {_scalar(v["key"])} value: {_scalar(v["value"])} }}' for v in value]
        elif isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_render(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", *_render(item, depth + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _tensor_entry(t: _Tensor, max_batch: int, label_file: str | None = None) -> dict[str, Any]:
    entry = {"name": t.name, "data_type": _Enum(t.data_type), "dims": list(t.shape[1:] if max_batch else t.shape)}
    return {**entry, "label_filename": label_file} if label_file else entry


def _config(name: str, graph: _Graph, labelled: set[str], max_batch: int, batching: dict | None, kind: str,
            count: int, accelerator: dict | None) -> str:
    fields: dict[str, Any] = {
        "name": name, "backend": "onnxruntime", "default_model_filename": "model.onnx", "max_batch_size": max_batch,
        "input": [_tensor_entry(t, max_batch) for t in graph.inputs],
        "output": [_tensor_entry(t, max_batch, LABELS if t.name in labelled else None) for t in graph.outputs],
        "instance_group": [{"count": count, "kind": _Enum(kind)}]}
    if batching:
        fields["dynamic_batching"] = batching
    if accelerator:
        fields["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    return "\n".join(_render(fields)) + "\n"


# ------------------------------------------------------------------------------------------------------- writer
def write_triton_repository(onnx_path, repo_dir, model_name: str, *, max_batch_size: int | None = None,
                            labels: list[str] | None = None, preferred_batch_sizes=_DEFAULT_PREFERRED,
                            max_queue_delay_us: int = 2000, instance_count: int = 1, version: int = 1,
                            tensorrt: bool = True, tensorrt_precision: str = "FP16",
                            tensorrt_onnx_path=None) -> Path:
    """Write `repo_dir/<model_name>/{config.pbtxt, <version>/model.onnx[, labels.txt]}` (ONNX Runtime, CPU
    instances) and, with `tensorrt`, `repo_dir/<model_name>_tensorrt/` (the same file on GPU instances through
    ORT's TensorRT execution provider at `tensorrt_precision`). Inputs and outputs come from the ONNX graph.

    Batching: a classifier or tagger gets `max_batch_size` 32 (the batch axis leaves `dims`) and dynamic batching
    with `preferred_batch_sizes` (the default set is capped at `max_batch_size`; sizes you pass must not exceed it).
    A causal LM with KV-cache inputs (`past_key_values.*`) gets `max_batch_size: 0`, full dims and no dynamic
    batching: requests carry caches of different past lengths, which cannot be stacked along dim 0. Serving many
    such streams well needs Triton's stateful sequence batching (cache kept server-side), which is out of scope.
    `tensorrt_onnx_path`: the graph the tensorrt variant serves (default: `onnx_path`), for when the CPU model is
    an int8 or ORT-fused graph whose contrib ops TensorRT cannot run; it must have the same inputs and outputs.
    `labels` go to labels.txt; an output of per-row class scores (B, C) names it as `label_filename` (Triton's
    classification extension); a tagger's (B, T, C) output does not, as that extension ranks one vector per row.
    Other versions already in the model folder are kept and must match the new config. Nothing is written if the
    config would be invalid. Returns `repo_dir`.

        >>> write_triton_repository("model.onnx", "triton", "intents", labels=names, tensorrt=False)  # doctest: +SKIP
        PosixPath('triton')
    """
    onnx_path, repo_dir = Path(onnx_path), Path(repo_dir)
    where = repo_dir / model_name / CONFIG
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", model_name or ""):
        raise TritonConfigError(f"{where}: model name {model_name!r} must be one folder name of letters, digits, "
                                "'_', '.', '-' (not starting with '.')")
    if not onnx_path.is_file():
        raise TritonConfigError(f"{where}: no ONNX file at {onnx_path}; export one first (export_onnx)")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1 or instance_count < 1:
        raise TritonConfigError(f"{where}: version {version!r} and instance_count {instance_count!r} must be "
                                "positive integers (Triton ignores version folders like 0/)")
    graph = _graph(onnx_path, where)
    default = 0 if _kv_cache(graph.inputs) else DEFAULT_MAX_BATCH_SIZE  # < 0, or > 0 with a cache: _check_config
    max_batch = default if max_batch_size is None else int(max_batch_size)
    batching = _batching(preferred_batch_sizes, max_queue_delay_us, max_batch)
    labelled = _labelled_outputs(labels, graph.outputs, where)
    variants = [(model_name, "KIND_CPU", None)]
    sources = {model_name: onnx_path, f"{model_name}_tensorrt": Path(tensorrt_onnx_path or onnx_path)}
    if tensorrt:
        if tensorrt_precision not in TRT_PRECISIONS:
            raise TritonConfigError(f"{where}: tensorrt_precision {tensorrt_precision!r}; expected one of "
                                    f"{', '.join(TRT_PRECISIONS)} (INT8 needs a calibration table)")
        variants.append((f"{model_name}_tensorrt", "KIND_GPU", {"name": "tensorrt", "parameters": [
            {"key": "precision_mode", "value": tensorrt_precision},
            {"key": "max_workspace_size_bytes", "value": str(TRT_WORKSPACE_BYTES)}]}))
    texts = {}
    for name, kind, accelerator in variants:  # check every config before any file is written
        text = _config(name, graph, labelled, max_batch, batching, kind, instance_count, accelerator)
        config_path = repo_dir / name / CONFIG
        variant_graph = graph if sources[name] == onnx_path else _graph(sources[name], config_path)
        _check_config(_parse(text, config_path), name, variant_graph, sources[name], config_path, labels)
        texts[name] = (text, variant_graph)
    for name, (text, variant_graph) in texts.items():
        _write_model_dir(repo_dir / name, sources[name], variant_graph.external, version, text, labels)
        _validate_model_dir(repo_dir / name)  # older versions kept in the folder must fit the new config too
    return repo_dir


def _batching(preferred, delay_us: int, max_batch: int) -> dict | None:
    if max_batch == 0:
        return None
    sizes = [int(s) for s in preferred]
    if tuple(sizes) == _DEFAULT_PREFERRED:  # the default set adapts to a smaller max; sizes you pass are checked
        sizes = [s for s in sizes if s <= max_batch] or [max_batch]
    return {"preferred_batch_size": sizes, "max_queue_delay_microseconds": int(delay_us)}


def _labelled_outputs(labels: list[str] | None, outputs: list[_Tensor], where: Path) -> set[str]:
    """Names of the outputs that get label_filename: per-row class scores (B, C) with C == len(labels)."""
    if labels is None:
        return set()
    bad = [x for x in labels if not isinstance(x, str) or not x.strip() or "\n" in x or "\r" in x]
    if not labels or bad:
        raise TritonConfigError(f"{where}: labels must be non-empty strings without line breaks, one per class; "
                                f"got {bad[:3] if bad else 'an empty list'}")
    per_row = [t for t in outputs if len(t.shape) == 2 and t.shape[0] == -1]
    per_token = [t for t in outputs if len(t.shape) == 3 and t.shape[-1] == len(labels)]
    wrong = [t for t in per_row if t.shape[1] not in (-1, len(labels))]
    if wrong or not (per_row or per_token):
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in outputs)
        raise TritonConfigError(f"{where}: {len(labels)} labels given but the graph's outputs are {shapes}; expected "
                                f"class scores (batch, {len(labels)}) or (batch, sequence, {len(labels)})")
    return {t.name for t in per_row}


def _write_model_dir(model_dir: Path, onnx_path: Path, external: list[str], version: int, text: str,
                     labels: list[str] | None) -> None:
    """The version folder is built beside its final place and renamed in, so Triton never sees half a model."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))  # not a number: Triton ignores it
    try:
        shutil.copy2(onnx_path, tmp / "model.onnx")
        for location in external:  # weights stored beside the graph travel with it
            (tmp / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(onnx_path.parent / location, tmp / location)
        tmp.chmod(0o755)
        final = model_dir / str(version)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if labels is not None:
        atomic_write_text(model_dir / LABELS, "".join(f"{x}\n" for x in labels))
    atomic_write_text(model_dir / CONFIG, text)


# ---------------------------------------------------------------------------------------------------- validator
def validate_repository(repo_dir) -> list[TritonModel]:
    """Check every `*/config.pbtxt` of a Triton model repository: it parses into Triton's ModelConfig, the folder
    layout holds (name == folder, positive integer version folders each with the model file), the inputs and
    outputs match the ONNX graph (name, data type, dims; the batch axis left out when max_batch_size > 0), and
    dynamic batching fits max_batch_size. Raises TritonConfigError on the first problem.

        >>> [(m.name, m.config.max_batch_size, m.versions) for m in validate_repository("triton")]  # doctest: +SKIP
        [('intents', 32, [1]), ('intents_tensorrt', 32, [1])]
    """
    repo_dir = Path(repo_dir)
    if not repo_dir.is_dir():
        raise TritonConfigError(f"{repo_dir}: no such model repository folder")
    folders = sorted(p for p in repo_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TritonConfigError(f"{repo_dir}: the model repository holds no model folder (<name>/{CONFIG})")
    return [_validate_model_dir(folder) for folder in folders]


def _validate_model_dir(model_dir: Path) -> TritonModel:
    where = model_dir / CONFIG
    if not where.is_file():
        raise TritonConfigError(f"{where}: missing; every model folder needs its {CONFIG}")
    config = _parse(where.read_text(encoding="utf-8"), where)
    versions = _versions(model_dir, config, where)
    filename = config.default_model_filename or "model.onnx"
    files = []
    for v in versions:
        model_file = model_dir / str(v) / filename
        if not model_file.is_file():
            raise TritonConfigError(f"{where}: version folder {v}/ lacks the model file {filename} "
                                    f"(default_model_filename)")
        graph = _graph(model_file, where)
        for location in graph.external:
            if not (model_file.parent / location).is_file():
                raise TritonConfigError(f"{where}: {model_file} keeps weights in {location}, missing from {v}/")
        _check_config(config, model_dir.name, graph, model_file, where)
        files.append(model_file)
    return TritonModel(model_dir.name, config, versions, files[-1])


def _versions(model_dir: Path, config, where: Path) -> list[int]:
    names = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    ignored = [n for n in names if n.startswith("0")]
    if ignored:
        raise TritonConfigError(f"{where}: version folder {ignored[0]}/ is not a positive integer without leading "
                                "zeros; Triton would ignore it (use 1/, 2/, ...)")
    versions = sorted(int(n) for n in names)
    if not versions:
        raise TritonConfigError(f"{where}: no version folder; expected a positive integer folder such as "
                                f"{model_dir.name}/1/ holding {config.default_model_filename or 'model.onnx'}")
    return versions


def _check_config(config, folder: str, graph: _Graph, model_file: Path, where: Path,
                  labels: list[str] | None = None) -> None:
    """Every rule on one parsed config against one graph. `labels` stand in for labels.txt before it is written."""
    if config.name != folder:
        problem = f"name {config.name!r} does not match its folder {folder!r}; Triton requires them equal"
    elif config.backend != "onnxruntime" and config.platform != "onnxruntime_onnx":
        problem = f"backend {config.backend!r}; expected backend: \"onnxruntime\" for an ONNX model"
    elif config.max_batch_size < 0:
        problem = f"max_batch_size {config.max_batch_size} must be >= 0 (0 turns batching off)"
    elif config.max_batch_size > 0 and _kv_cache(graph.inputs):
        problem = (f"max_batch_size {config.max_batch_size} for a model with KV-cache inputs; expected 0: requests "
                   "with different past lengths cannot be batched along dim 0")
    else:
        problem = None
    if problem:
        raise TritonConfigError(f"{where}: {problem}")
    _check_tensors("input", config.input, graph.inputs, config.max_batch_size, model_file, where, exact=True)
    _check_tensors("output", config.output, graph.outputs, config.max_batch_size, model_file, where, exact=False)
    _check_batching(config, where)
    _check_instances(config, where)
    _check_labels(config, graph, where, labels)


def _check_labels(config, graph: _Graph, where: Path, labels: list[str] | None) -> None:
    shapes = {t.name: t.shape for t in graph.outputs}
    for out in config.output:
        if not out.label_filename:
            continue
        path = where.parent / out.label_filename
        if labels is None and not path.is_file():
            raise TritonConfigError(f"{where}: output {out.name!r} names label_filename {out.label_filename!r}, "
                                    f"which is not in {where.parent}")
        names = labels if labels is not None else path.read_text(encoding="utf-8").splitlines()
        classes = shapes[out.name][-1] if shapes[out.name] else -1
        if classes != -1 and len(names) != classes:
            raise TritonConfigError(f"{where}: {out.label_filename} has {len(names)} labels but output "
                                    f"{out.name!r} has {classes} classes; expected one label per class, one a line")


def _check_tensors(kind: str, entries, graph: list[_Tensor], max_batch: int, model_file: Path, where: Path,
                   exact: bool) -> None:
    """Config entries against graph tensors: every input (a subset of outputs), same data type, compatible dims."""
    by_name = {t.name: t for t in graph}
    names = [e.name for e in entries]
    unknown = [n for n in names if n not in by_name]
    missing = [t.name for t in graph if t.name not in names] if exact else []
    if not names:
        raise TritonConfigError(f"{where}: no {kind} listed; expected the ONNX graph's {', '.join(by_name)}")
    if unknown or missing:
        raise TritonConfigError(f"{where}: {kind}s {names} do not match the ONNX graph {model_file} ("
                                f"{', '.join(by_name)}): unknown {unknown}, missing {missing}")
    for entry in entries:
        t = by_name[entry.name]
        data_type = _import("tritonclient.grpc.model_config_pb2").DataType.Name(entry.data_type)
        if data_type != t.data_type:
            raise TritonConfigError(f"{where}: {kind} {t.name!r} has data_type {data_type} but the ONNX graph "
                                    f"{model_file} gives {t.data_type}")
        expected = t.shape
        if max_batch > 0:
            if not t.shape or t.shape[0] != -1:
                raise TritonConfigError(f"{where}: max_batch_size {max_batch} needs a dynamic first (batch) axis, "
                                        f"but {kind} {t.name!r} has shape {list(t.shape)}; set max_batch_size: 0")
            expected = t.shape[1:]
        dims = list(entry.dims)
        if len(dims) != len(expected) or any(g != -1 and c != g for c, g in zip(dims, expected)) \
                or any(c == 0 or c < -1 for c in dims):
            rule = "without the batch axis, as max_batch_size > 0" if max_batch > 0 else "with the batch axis"
            raise TritonConfigError(f"{where}: {kind} {t.name!r} has dims {dims}; expected {list(expected)} "
                                    f"({rule}; -1 where the graph axis is dynamic)")


def _check_batching(config, where: Path) -> None:
    if not config.HasField("dynamic_batching"):
        return
    if config.max_batch_size == 0:
        raise TritonConfigError(f"{where}: dynamic_batching needs max_batch_size > 0; remove it or set a maximum")
    for size in config.dynamic_batching.preferred_batch_size:
        if not 0 < size <= config.max_batch_size:
            raise TritonConfigError(f"{where}: preferred_batch_size {size} is above max_batch_size "
                                    f"{config.max_batch_size} (or not positive); each must be in 1..max_batch_size")


def _check_instances(config, where: Path) -> None:
    cpu = _import("tritonclient.grpc.model_config_pb2").ModelInstanceGroup.KIND_CPU
    if any(g.count < 0 for g in config.instance_group):
        raise TritonConfigError(f"{where}: instance_group count must be >= 1")
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        params = dict(accelerator.parameters)
        precision, workspace = params.get("precision_mode", "FP32"), params.get("max_workspace_size_bytes", "1")
        if accelerator.name not in ("tensorrt", "cuda"):
            problem = f"gpu_execution_accelerator {accelerator.name!r}; the onnxruntime backend has tensorrt, cuda"
        elif any(g.kind == cpu for g in config.instance_group):
            problem = f"gpu_execution_accelerator {accelerator.name!r} on a KIND_CPU instance_group; expected KIND_GPU"
        elif accelerator.name == "tensorrt" and precision not in ("FP32", "FP16", "INT8"):
            problem = f"tensorrt precision_mode {precision!r}; expected FP32, FP16 or INT8"
        elif not workspace.isdigit() or int(workspace) <= 0:
            problem = f"max_workspace_size_bytes {workspace!r}; expected a positive integer"
        else:
            continue
        raise TritonConfigError(f"{where}: {problem}")
