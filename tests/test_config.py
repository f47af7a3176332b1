import pytest

from atesd import config as cfglib
from atesd.engine import EngineConfig
from atesd.tasks.synthetic import ChainBagConfig


def test_overrides_reach_nested_fields_with_types():
    cfg = cfglib.load(
        EngineConfig, None, ["lr=3e-4", "loss.kind=forward_kl", "loss.clip_tau=0.05", "batch_size=8"]
    )
    assert (
        cfg.lr == 3e-4 and cfg.loss.kind == "forward_kl" and cfg.loss.clip_tau == 0.05 and cfg.batch_size == 8
    )
    task = cfglib.load(ChainBagConfig, None, ["bands=[[2, 1], [0, 3]]", "chain_lengths=[1, 4]"])
    assert task.bands == ((2, 1), (0, 3)) and task.chain_lengths == (1, 4)


def test_round_trip_through_dict():
    cfg = EngineConfig()
    assert cfglib.from_dict(EngineConfig, cfglib.to_dict(cfg)) == cfg


def test_unknown_key_suggests_the_closest_name():
    with pytest.raises(cfglib.ConfigError, match="did you mean 'loss.temperature'"):
        cfglib.load(EngineConfig, None, ["loss.temprature=2"])


def test_bad_values_name_the_field():
    with pytest.raises(cfglib.ConfigError, match="lr"):
        cfglib.load(EngineConfig, None, ["lr=-1"])
    with pytest.raises(cfglib.ConfigError, match="loss.kind must be one of"):
        cfglib.load(EngineConfig, None, ["loss.kind=l2"])
    with pytest.raises(cfglib.ConfigError, match="batch_size must be a number"):
        cfglib.load(EngineConfig, None, ["batch_size=many"])
    with pytest.raises(cfglib.ConfigError, match="key.path=value"):
        cfglib.parse_overrides(["lr"])


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.001\nteacher:\n  kind: ema\n")
    cfg = cfglib.load(EngineConfig, path, ["teacher.ema_decay=0.9"])
    assert cfg.lr == 0.001 and cfg.teacher.kind == "ema" and cfg.teacher.ema_decay == 0.9
    with pytest.raises(cfglib.ConfigError, match="does not exist"):
        cfglib.load(EngineConfig, tmp_path / "missing.yaml")


def test_describe_lists_every_leaf_with_help():
    rows = {key: help_ for key, _, help_ in cfglib.describe(EngineConfig)}
    assert "loss.clip_tau" in rows and "teacher.kind" in rows and rows["batch_size"]
