"""Triton model repositories for a tiny-bert classifier and a tiny-llama causal LM with a KV cache, both exported
with nbtune.export.onnx: the written configs parse into Triton's own ModelConfig and equal configs built with the
protobuf API; dims agree with what onnxruntime reads from the same file; and every broken rule (a misspelt
field, a wrong enum or data type, a missing version folder, a name mismatch, a preferred batch size above the
maximum, ...) is a TritonConfigError naming the config.pbtxt and the problem."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from nbtune.export.onnx import export_onnx  # noqa: E402
from nbtune.export.triton import (TritonConfigError, validate_repository,  # noqa: E402
                                  write_triton_repository)
from nbtune.export.types import ExportError  # noqa: E402

LABELS = ["greet", "bye", "thanks"]


def _tiny(name: str, task: str, path: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from nbtune.assets import resolve_model
    resolved = resolve_model(name)
    torch.manual_seed(0)
    if task == "causal-lm":
        model = AutoModelForCausalLM.from_config(resolved.config)
    else:
        resolved.config.num_labels = len(LABELS)
        model = AutoModelForSequenceClassification.from_config(resolved.config)
    return export_onnx(model, AutoTokenizer.from_pretrained(resolved.tokenizer_path), task, path)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    """Exported once per module: "cls" (tiny-bert, 3 classes) and "lm" (tiny-llama, 2 layers, KV cache)."""
    out = tmp_path_factory.mktemp("onnx")
    cls = _tiny("tiny-bert", "classification", out / "cls.onnx")
    lm = _tiny("tiny-llama", "causal-lm", out / "lm.onnx")
    assert lm.kv_cache and lm.num_layers == 2 and lm.kv_heads == 2 and lm.head_dim == 8
    return {"cls": cls.path, "lm": lm.path}


@pytest.fixture(scope="module")
def repo(onnx_files, tmp_path_factory) -> Path:
    """Both models with their tensorrt variants, written once; tests that break things copy `cls` first."""
    repo = tmp_path_factory.mktemp("triton") / "models"
    write_triton_repository(onnx_files["cls"], repo, "cls", labels=LABELS)
    write_triton_repository(onnx_files["lm"], repo, "lm")
    return repo


@pytest.fixture
def broken(repo, tmp_path) -> Path:
    """A private copy of the classifier's plain model folder, to break."""
    copy = tmp_path / "models"
    shutil.copytree(repo / "cls", copy / "cls")
    return copy


def _tensor(cls, name: str, data_type: str, dims: list[int], **extra):
    return cls(name=name, data_type=mc.DataType.Value(data_type), dims=dims, **extra)


def _expected_classifier(name: str, kind: str) -> "mc.ModelConfig":
    """The classifier's config built with the protobuf API, independent of the module's pbtxt writer."""
    config = mc.ModelConfig(name=name, backend="onnxruntime", default_model_filename="model.onnx", max_batch_size=32)
    config.input.extend([_tensor(mc.ModelInput, n, "TYPE_INT64", [-1]) for n in ("input_ids", "attention_mask")])
    config.output.append(_tensor(mc.ModelOutput, "logits", "TYPE_FP32", [3], label_filename="labels.txt"))
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.Kind.Value(kind))
    config.dynamic_batching.preferred_batch_size.extend([8, 16, 32])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    if kind == "KIND_GPU":
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16"
        trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return config


def test_classifier_repository_parses_into_the_expected_configs(repo, onnx_files):
    models = {m.name: m for m in validate_repository(repo)}
    assert sorted(models) == ["cls", "cls_tensorrt", "lm", "lm_tensorrt"]
    for name, kind in (("cls", "KIND_CPU"), ("cls_tensorrt", "KIND_GPU")):
        model = models[name]
        assert model.config == _expected_classifier(name, kind)
        assert model.versions == [1] and model.model_file == repo / name / "1" / "model.onnx"
        assert model.model_file.read_bytes() == onnx_files["cls"].read_bytes()
        assert (repo / name / "labels.txt").read_text().splitlines() == LABELS
    text = (repo / "cls" / "config.pbtxt").read_text()
    assert text.startswith('name: "cls"\nbackend: "onnxruntime"\n') and "\n  {\n    name: \"input_ids\"\n" in text
    reparsed = text_format.Parse(text_format.MessageToString(models["cls"].config), mc.ModelConfig())
    assert reparsed == models["cls"].config


def test_causal_lm_with_kv_cache_gets_full_dims_and_no_dynamic_batching(repo):
    models = {m.name: m for m in validate_repository(repo)}
    for name in ("lm", "lm_tensorrt"):
        config = models[name].config
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        inputs = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input}
        past = {f"past_key_values.{i}.{kv}": ("TYPE_FP32", [-1, 2, -1, 8]) for i in range(2) for kv in ("key", "value")}
        ids = {n: ("TYPE_INT64", [-1, -1]) for n in ("input_ids", "attention_mask", "position_ids")}
        assert inputs == {**ids, **past}
        outputs = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in config.output}
        assert outputs == {"logits": ("TYPE_FP32", [-1, -1, 30522]),
                           **{k.replace("past_key_values", "present"): v for k, v in past.items()}}
        assert not any(t.label_filename for t in config.output) and not (repo / name / "labels.txt").exists()
    assert models["lm"].config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    trt = models["lm_tensorrt"].config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in trt] == ["tensorrt"] and dict(trt[0].parameters)["precision_mode"] == "FP16"
    assert models["lm_tensorrt"].config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


@pytest.mark.parametrize("name", ["cls", "lm"])
def test_config_dims_agree_with_what_onnxruntime_reads(repo, name):
    """A second reader of the same file: onnxruntime's session signature, symbolic axes -> -1."""
    ort = pytest.importorskip("onnxruntime")
    model = next(m for m in validate_repository(repo) if m.name == name)
    session = ort.InferenceSession(str(model.model_file), providers=["CPUExecutionProvider"])
    types = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}
    skip = 1 if model.config.max_batch_size > 0 else 0
    for entries, args in ((model.config.input, session.get_inputs()), (model.config.output, session.get_outputs())):
        want = [(a.name, types[a.type], [d if isinstance(d, int) else -1 for d in a.shape][skip:]) for a in args]
        assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in entries] == want


def test_batch_size_limits_cap_the_default_preferred_sizes(onnx_files, tmp_path):
    write_triton_repository(onnx_files["cls"], tmp_path, "small", max_batch_size=12, tensorrt=False)
    write_triton_repository(onnx_files["cls"], tmp_path, "tiny", max_batch_size=4, tensorrt=False)
    write_triton_repository(onnx_files["cls"], tmp_path, "off", max_batch_size=0, tensorrt=False)
    models = {m.name: m.config for m in validate_repository(tmp_path)}
    assert list(models["small"].dynamic_batching.preferred_batch_size) == [8]
    assert list(models["tiny"].dynamic_batching.preferred_batch_size) == [4]
    assert models["off"].max_batch_size == 0 and not models["off"].HasField("dynamic_batching")
    assert [list(t.dims) for t in models["off"].input] == [[-1, -1], [-1, -1]]
    assert [list(t.dims) for t in models["off"].output] == [[-1, 3]]


def test_a_second_version_keeps_the_first(onnx_files, tmp_path):
    write_triton_repository(onnx_files["cls"], tmp_path, "cls", tensorrt=False)
    write_triton_repository(onnx_files["cls"], tmp_path, "cls", tensorrt=False, version=2)
    (model,) = validate_repository(tmp_path)
    assert model.versions == [1, 2] and model.model_file == tmp_path / "cls" / "2" / "model.onnx"
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == ["1", "2", "config.pbtxt"]


def test_external_weights_travel_with_the_model(onnx_files, tmp_path):
    import onnx
    src = tmp_path / "ext" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(onnx.load(str(onnx_files["cls"])), str(src), save_as_external_data=True, location="weights.bin")
    repo = write_triton_repository(src, tmp_path / "models", "ext", tensorrt=False)
    assert (repo / "ext" / "1" / "weights.bin").read_bytes() == (src.parent / "weights.bin").read_bytes()
    validate_repository(repo)
    (repo / "ext" / "1" / "weights.bin").unlink()
    with pytest.raises(TritonConfigError, match=r"keeps weights in weights\.bin, missing from 1/"):
        validate_repository(repo)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _fails(repo: Path, config: Path, *needles: str) -> str:
    with pytest.raises(TritonConfigError) as info:
        validate_repository(repo)
    message = str(info.value)
    assert message.startswith(f"{config}: "), message
    for needle in needles:
        assert re.search(needle, message), f"{needle!r} not in {message!r}"
    return message


def test_misspelt_field_fails_with_the_parsers_line_and_column(broken):
    config = broken / "cls" / "config.pbtxt"
    _edit(config, "max_batch_size: 32", "max_batch_sise: 32")
    _fails(broken, config, r"line:column 4:1 ", r'no field named "max_batch_sise"')


def test_wrong_enum_fails_with_the_parsers_line_and_column(broken):
    config = broken / "cls" / "config.pbtxt"
    _edit(config, "data_type: TYPE_INT64", "data_type: TYPE_INTEGER")
    _fails(broken, config, r"line:column 8:\d+ ", r'no value named TYPE_INTEGER')


def test_wrong_data_type_names_the_input_and_the_graphs_type(broken):
    config = broken / "cls" / "config.pbtxt"
    _edit(config, "data_type: TYPE_INT64", "data_type: TYPE_INT32")
    _fails(broken, config, r"input 'input_ids' has data_type TYPE_INT32 but the ONNX graph \S+/1/model\.onnx "
                           r"gives TYPE_INT64")


def test_wrong_dims_name_the_output_and_the_batch_rule(broken):
    config = broken / "cls" / "config.pbtxt"
    _edit(config, "dims: [ 3 ]", "dims: [ -1, 3 ]")
    _fails(broken, config, r"output 'logits' has dims \[-1, 3\]; expected \[3\] \(without the batch axis")


def test_missing_version_folder(broken):
    shutil.rmtree(broken / "cls" / "1")
    _fails(broken, broken / "cls" / "config.pbtxt", r"no version folder; expected a positive integer folder such "
                                                    r"as cls/1/ holding model\.onnx")


def test_version_folder_zero_and_missing_model_file(broken):
    (broken / "cls" / "1" / "model.onnx").rename(broken / "cls" / "1" / "other.onnx")
    _fails(broken, broken / "cls" / "config.pbtxt", r"version folder 1/ lacks the model file model\.onnx")
    (broken / "cls" / "1").rename(broken / "cls" / "0")
    _fails(broken, broken / "cls" / "config.pbtxt", r"version folder 0/ is not a positive integer")


def test_name_must_equal_the_folder(broken):
    (broken / "cls").rename(broken / "intents")
    _fails(broken, broken / "intents" / "config.pbtxt", r"name 'cls' does not match its folder 'intents'")


def test_preferred_batch_size_above_max_batch_size(broken, onnx_files, tmp_path):
    config = broken / "cls" / "config.pbtxt"
    _edit(config, "preferred_batch_size: [ 8, 16, 32 ]", "preferred_batch_size: [ 8, 16, 64 ]")
    _fails(broken, config, r"preferred_batch_size 64 is above max_batch_size 32")
    target = tmp_path / "fresh"
    with pytest.raises(TritonConfigError, match=r"fresh/cls/config\.pbtxt: preferred_batch_size 64 is above "
                                                r"max_batch_size 32"):
        write_triton_repository(onnx_files["cls"], target, "cls", preferred_batch_sizes=(16, 64))
    assert not target.exists()  # checked before anything is written


def test_dynamic_batching_without_a_batch_axis(broken):
    config = broken / "cls" / "config.pbtxt"
    _edit(config, "max_batch_size: 32", "max_batch_size: 0")
    _edit(config, "dims: [ -1 ]", "dims: [ -1, -1 ]")
    _edit(config, "dims: [ -1 ]", "dims: [ -1, -1 ]")
    _edit(config, "dims: [ 3 ]", "dims: [ -1, 3 ]")
    _fails(broken, config, r"dynamic_batching needs max_batch_size > 0")


def test_tensorrt_on_cpu_instances_and_a_bad_precision(repo, tmp_path):
    shutil.copytree(repo / "cls_tensorrt", tmp_path / "cls_tensorrt")
    config = tmp_path / "cls_tensorrt" / "config.pbtxt"
    _edit(config, "kind: KIND_GPU", "kind: KIND_CPU")
    _fails(tmp_path, config, r"gpu_execution_accelerator 'tensorrt' on a KIND_CPU instance_group")
    _edit(config, "kind: KIND_CPU", "kind: KIND_GPU")
    _edit(config, 'value: "FP16"', 'value: "FP8"')
    _fails(tmp_path, config, r"tensorrt precision_mode 'FP8'; expected FP32, FP16 or INT8")


def test_label_file_must_hold_one_label_per_class(broken, onnx_files, tmp_path):
    (broken / "cls" / "labels.txt").write_text("greet\nbye\n")
    _fails(broken, broken / "cls" / "config.pbtxt", r"labels\.txt has 2 labels but output 'logits' has 3 classes")
    with pytest.raises(TritonConfigError, match=r"2 labels given but the graph's outputs are logits \[-1, 3\]"):
        write_triton_repository(onnx_files["cls"], tmp_path / "fresh", "cls", labels=["greet", "bye"])


def test_kv_cache_model_refuses_a_batch_axis(onnx_files, tmp_path):
    with pytest.raises(TritonConfigError, match=r"lm/config\.pbtxt: max_batch_size 8 for a model with KV-cache inputs;"
                                                r" expected 0: requests with different past lengths"):
        write_triton_repository(onnx_files["lm"], tmp_path, "lm", max_batch_size=8)
    assert not (tmp_path / "lm").exists()


def test_bad_arguments_and_repositories(onnx_files, tmp_path):
    with pytest.raises(TritonConfigError, match=r"model name '\.\./x' must be one folder name"):
        write_triton_repository(onnx_files["cls"], tmp_path, "../x")
    with pytest.raises(TritonConfigError, match=r"no ONNX file at .*missing\.onnx; export one first"):
        write_triton_repository(tmp_path / "missing.onnx", tmp_path, "m")
    with pytest.raises(TritonConfigError, match=r"tensorrt_precision 'INT8'; expected one of FP32, FP16"):
        write_triton_repository(onnx_files["cls"], tmp_path, "m", tensorrt_precision="INT8")
    with pytest.raises(TritonConfigError, match=r"holds no model folder"):
        validate_repository(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TritonConfigError, match=r"empty/config\.pbtxt: missing"):
        validate_repository(tmp_path)


def test_missing_tritonclient_says_what_to_install(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)  # import now raises ImportError
    with pytest.raises(ExportError, match=r"need the 'tritonclient' package: pip install 'nbtune\[export\]'"):
        validate_repository(repo)
