"""RunConfig: YAML round trip, dotted overrides with aliases and type checks, and actionable errors."""
import pytest

from nbtune.config import ConfigError, RunConfig, config_diff


def test_yaml_round_trip_keeps_every_field(tmp_path):
    cfg = RunConfig(model="smollm2", task="causal-lm").with_overrides(
        ["train.lr=3e-4", "train.edits=[{step: 5, name: lr, value: 0.0001}]", "data.max_train_samples=100"])
    path = tmp_path / "run.yaml"
    cfg.to_yaml(path)
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.train.learning_rate == 3e-4 and again.train.edits == [{"step": 5, "name": "lr", "value": 0.0001}]


def test_overrides_parse_types_and_aliases():
    cfg = RunConfig().with_overrides(["train.lr=3e-4", "train.epochs=2", "train.max_grad_norm=null",
                                      "data.group_by_length=false", "model.name=tiny-bert"])
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.train.num_train_epochs == 2.0 and isinstance(cfg.train.num_train_epochs, float)
    assert cfg.train.max_grad_norm is None
    assert cfg.data.group_by_length is False
    assert cfg.model.name == "tiny-bert"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.learnig_rate'.*Did you mean 'train.learning_rate'"):
        RunConfig().with_overrides(["train.learnig_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"Did you mean 'train'"):
        RunConfig().with_overrides(["trian.lr=1e-4"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.batch_sise'.*'train.batch_size'"):
        RunConfig.from_yaml(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: 1e-4\n  batch_size: [8\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line \d+, column \d+: not valid YAML"):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=abc", "train.batch_size expects an integer, got 'abc'"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.scheduler=exp", "train.scheduler='exp' is not one of linear, cosine, constant"),
    ("train.precision=fp8", "train.precision='fp8' is not one of auto, fp32, bf16, fp16"),
    ("task=ner", "task='ner' is not one of"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio must be in [0, 1)"),
    ("train.lr", "must look like section.key=value"),
    ("train.lr.x=1", "'train.learning_rate' is a value, not a section"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides([override])
    assert message in str(err.value)


def test_fingerprint_ignores_operational_keys_only():
    base = RunConfig()
    assert base.fingerprint() == base.with_overrides(["output_dir=/elsewhere", "train.progress_bar=false"]).fingerprint()
    assert base.fingerprint() != base.with_overrides(["train.seed=7"]).fingerprint()
    assert config_diff(base.to_dict(), base.with_overrides(["train.seed=7"]).to_dict()) == {"train.seed": (42, 7)}


def test_a_checkpoint_config_from_before_new_fields_reads_as_their_defaults():
    """state_io.check_compatible compares through RunConfig.from_dict: a checkpoint saved before a field existed
    (here the guard's and the pickle-weights switch) is not refused for lacking it."""
    old = RunConfig().to_dict()
    del old["train"]["skip_nonfinite_steps"], old["train"]["oom_backoff"], old["model"]["allow_pickle_weights"]
    assert RunConfig.from_dict(old).to_dict() == RunConfig().to_dict()
