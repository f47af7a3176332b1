import re

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
    from atesd.engine import SamplingConfig
    from atesd.losses import LossConfig
    from atesd.teacher import TeacherConfig

    cfg = EngineConfig(
        lr=3e-4,
        batch_size=5,
        loss=LossConfig(kind="forward_kl", clip_tau=0.05),
        teacher=TeacherConfig(kind="ema", ema_decay=0.9),
        sampling=SamplingConfig(max_new_tokens=17),
    )
    assert cfg != EngineConfig()
    data = cfglib.to_dict(cfg)
    assert data["lr"] == 3e-4 and data["batch_size"] == 5
    assert data["loss"]["kind"] == "forward_kl" and data["loss"]["clip_tau"] == 0.05
    assert data["teacher"] == {"kind": "ema", "ema_decay": 0.9}
    assert data["sampling"]["max_new_tokens"] == 17
    assert isinstance(data["loss"], dict)  # plain nested dicts, ready for JSON/YAML
    assert cfglib.from_dict(EngineConfig, data) == cfg


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
    with pytest.raises(cfglib.ConfigError, match="seed was given a value, not keys"):
        cfglib.parse_overrides(["seed=1", "seed.x=2"])
    with pytest.raises(cfglib.ConfigError, match="loss was given keys, not a value"):
        cfglib.parse_overrides(["loss.kind=l2", "loss=3"])
    from atesd.tasks.synthetic import ChainBagConfig  # fixed-length pairs: no value dropped unsaid

    with pytest.raises(cfglib.ConfigError, match=r"chain_lengths must hold 2 values, got \[1, 5, 9\]"):
        cfglib.load(ChainBagConfig, None, ["chain_lengths=[1,5,9]"])
    with pytest.raises(cfglib.ConfigError, match="bands must hold 2 values"):
        cfglib.load(ChainBagConfig, None, ["bands=[[3,0,7],[0,2,5]]"])


def test_values_read_as_yaml_1_2():
    """yes/no/on/off are text, a leading zero is text (a name) or ten in an int field (never YAML 1.1's
    octal eight), a date is text."""
    parsed = cfglib.parse_overrides(["a=010", "b=yes", "c=off", "d=true", "e=0x1F", "f=2024-01-05", "g=-7"])
    assert parsed == {"a": "010", "b": "yes", "c": "off", "d": True, "e": 31, "f": "2024-01-05", "g": -7}
    assert cfglib.load(EngineConfig, None, ["seed=010"]).seed == 10
    with pytest.raises(cfglib.ConfigError, match="must be true or false, got 'yes'"):
        cfglib.load(EngineConfig, None, ["grounded=yes"])


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


def _float_fields(cls, prefix=""):
    """Every float field of a config tree, by dotted key."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _float_fields(tp, f"{prefix}{f.name}.")
        elif tp is float:
            yield f"{prefix}{f.name}"


def test_every_float_field_refuses_nan_and_infinity():
    """The class, not the listed cases: every float of the run config, NaN, inf and -inf, refused in
    one line naming the key (real.engine.lr=inf once crashed inside sampling)."""
    from atesd import config as cfglib
    from recipes.common import RunConfig

    keys = list(_float_fields(RunConfig))
    assert len(keys) > 20 and "real.engine.lr" in keys and "mock.noise" in keys
    for key in keys:
        for bad in (".nan", ".inf", "-.inf", "inf", "nan"):
            with pytest.raises(cfglib.ConfigError, match=f"{key} must be a finite number"):
                cfglib.load(RunConfig, None, [f"{key}={bad}"])
    with pytest.raises(cfglib.ConfigError, match="episodes must be a number"):
        cfglib.load(RunConfig, None, ["episodes=.inf"])


CONFIG_FILES = [  # (file bytes, the message's telling part)
    (b"episodes: 1\nepisodes: 2\n", "the key 'episodes' is given twice"),
    (b"- 1\n- 2\n", "must hold a mapping of keys"),
    (b"5\n", "must hold a mapping of keys"),
    (b"name: caf\xe9\n", "is not UTF-8 text"),
    (b"mock: [1, 2\n", "is not valid YAML"),
]


@pytest.mark.parametrize("text,message", CONFIG_FILES, ids=[m for _, m in CONFIG_FILES])
def test_a_malformed_config_file_is_one_line(tmp_path, text, message):
    from recipes.common import RunConfig

    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(cfglib.ConfigError, match=re.escape(message)) as exc:
        cfglib.load(RunConfig, path)
    assert "\n" not in str(exc.value)


OVERRIDES = [
    ("mock.noise=[1,2", "not a valid value"),
    ("controllers=5", "controllers must be a mapping"),
    ("mock.noise=&a 1", "anchors, aliases and tags are not allowed"),
    ("mock.noise=!!float 1", "anchors, aliases and tags are not allowed"),
    ("mock.noise=*a", "anchors, aliases and tags are not allowed"),
    ("mock={a: 1, a: 2}", "given twice"),
]


@pytest.mark.parametrize("override,message", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_a_malformed_override_is_refused(override, message):
    from recipes.common import RunConfig

    with pytest.raises(cfglib.ConfigError, match=re.escape(message)):
        cfglib.load(RunConfig, None, [override])


def test_a_list_equals_the_tuple_of_its_values_at_any_depth():
    """A stored JSON config holds lists of lists where to_dict holds tuples of tuples (RealConfig's task
    bands); the resume check once found every stored config different from itself in real.task.bands."""
    import json

    from atesd.builder import RealConfig

    given = cfglib.to_dict(RealConfig())
    stored = json.loads(json.dumps(given))
    assert isinstance(given["task"]["bands"][0], tuple) and isinstance(stored["task"]["bands"][0], list)
    assert cfglib.differences(stored, given) == []
    assert cfglib.differences({"a": [[1, [2, 3]], {"b": [4]}]}, {"a": ((1, (2, 3)), {"b": (4,)})}) == []
    changed = cfglib.to_dict(cfglib.load(RealConfig, None, ["task.bands=[[3, 0], [0, 3]]"]))
    assert cfglib.differences(stored, changed) == ["task.bands"]  # a value inside still counts
    assert cfglib.differences({"a": [[1, 2]]}, {"a": ((1, 2, 3),)}) == ["a"]


KEYS_NOT_TEXT = [  # (YAML file, the message)
    ("1: x\n", "config key 1 at the top level must be text, got int"),
    ("real: {engine: {true: 1}}\n", "config key True in 'real.engine' must be text, got bool"),
    ("controllers: {1: {}}\n", "config key 1 in 'controllers' must be text, got int"),
    (
        "controllers: {fixed: {null: 1}}\n",
        "config key None in 'controllers.fixed' must be text, got NoneType",
    ),
]


@pytest.mark.parametrize("text,message", KEYS_NOT_TEXT, ids=[t.strip() for t, _ in KEYS_NOT_TEXT])
def test_a_key_that_is_not_text_is_refused_naming_it_and_where(tmp_path, text, message):
    """YAML reads `1:` or `true:` as a number or a bool: once a TypeError from the closest-name
    suggestion, or "RunConfig: 'int' object is not iterable" under controllers."""
    from recipes.common import RunConfig

    path = tmp_path / "k.yaml"
    path.write_text(text)
    with pytest.raises(cfglib.ConfigError, match=re.escape(message)):
        cfglib.load(RunConfig, path)
    with pytest.raises(cfglib.ConfigError, match=re.escape("config key 1 in 'real' must be text, got int")):
        cfglib.load(RunConfig, None, ["real={1: 2}"])


def test_a_later_mapping_override_merges_into_the_keys_given_before():
    """`real.engine={batch_size: 2}` after `real.engine.lr=0.5` once erased the lr (back to its default)."""
    from recipes.common import RunConfig

    given = ["real.engine.lr=0.5", "real.engine={batch_size: 2, loss: {kind: forward_kl}}"]
    engine = cfglib.load(RunConfig, None, given).real.engine
    assert (engine.lr, engine.batch_size, engine.loss.kind) == (0.5, 2, "forward_kl")
    parsed = cfglib.parse_overrides(["a.b=1", "a.c.d=2", "a={b: 3, c: {e: 4}}", "a.c={d: 5}"])
    assert parsed == {"a": {"b": 3, "c": {"d": 5, "e": 4}}}  # in order, the later value winning key by key
    with pytest.raises(cfglib.ConfigError, match="a.c was given keys, not a value"):
        cfglib.parse_overrides(["a.c.d=2", "a={c: 1}"])
    with pytest.raises(cfglib.ConfigError, match="a.b was given a value, not keys"):
        cfglib.parse_overrides(["a.b=1", "a={b: {c: 2}}"])


def test_a_value_whose_hash_would_start_a_comment_is_refused_with_the_quoted_form():
    """YAML reads ` #` as a comment: `name=trial #2` was silently the name 'trial'. A '#' inside a word or
    inside quotes is text, as before."""
    message = (
        "'#2' would be read as a YAML comment and dropped; quote the value to keep it: name='\"trial #2\"'"
    )
    with pytest.raises(cfglib.ConfigError, match=re.escape(message)) as exc:
        cfglib.parse_overrides(["name=trial #2"])
    assert "\n" not in str(exc.value)
    for item in ("name=#2", "bands=[[3, 0]] #x", "lr=0.5 # rate", 'name="a" #b'):
        with pytest.raises(cfglib.ConfigError, match="would be read as a YAML comment and dropped"):
            cfglib.parse_overrides([item])
    given = ["name=a#b", 'n="trial #2"', "m='x #y'", 'l=[a#b, "c #d"]']
    expected = {"name": "a#b", "n": "trial #2", "m": "x #y", "l": ["a#b", "c #d"]}
    assert cfglib.parse_overrides(given) == expected
    assert cfglib.parse_overrides(cfglib.command_overrides([], {"name": "trial #2"})) == {"name": "trial #2"}


@pytest.mark.parametrize(
    "override",
    ["name=2024", "out_dir=~", "name=Note: a box", "name=- a", "name={answer} in a box", "name=[a"],
)
def test_text_that_yaml_reads_otherwise_is_refused_with_how_to_quote_it(override):
    """`name=2024` said only "must be a string, got 2024" and `{answer} in a box` dumped the YAML
    parser's error: both now say to quote the text."""
    from recipes.common import RunConfig

    with pytest.raises(cfglib.ConfigError, match="quote") as err:
        cfglib.load(RunConfig, None, [override])
    assert "\n" not in str(err.value)
    key = override.partition("=")[0]
    quoted = cfglib.load(RunConfig, None, [f'{key}="{override.partition("=")[2]}"'])
    assert getattr(quoted, key) == override.partition("=")[2]


def test_a_flag_that_an_override_contradicts_is_refused(tmp_path, capsys):
    """run.py's `--controller bandit --set controller=fixed` ran bandit: the flag, appended last, won."""
    from recipes import run

    assert cfglib.command_overrides(["seed=3", "name=a"], {"seed": 3, "name": "a", "env": None}) == [
        "seed=3", "name=a", "seed=3", 'name="a"',
    ]  # fmt: skip
    # the same value as text (YAML reads `name=2024` as a number) is one intent, not a contradiction
    assert cfglib.command_overrides(["name=2024"], {"name": "2024"}) == ["name=2024", 'name="2024"']
    with pytest.raises(cfglib.ConfigError, match=r"--model m contradicts --set real.hf.name_or_path=n"):
        cfglib.command_overrides(["real.hf={name_or_path: n}"], {"real.hf.name_or_path": "m"},
                                 {"real.hf.name_or_path": "--model"})  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        run.main(["--controller", "bandit", "--set", "controller=fixed", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--controller bandit contradicts --set controller=fixed" in err
    assert list(tmp_path.iterdir()) == []


def test_lists_and_unions_are_converted_like_the_other_types():
    """A config field `grid: list[float]` took `[a,b]` as text (passed through unchecked), as did
    `int | str` unions: lists convert each value, a union takes the first type that fits."""
    from atesd.config import ConfigError, coerce

    assert coerce(list[float], [1, "2.5"], "grid") == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"grid must be a number \(float\), got 'a'"):
        coerce(list[float], ["a", "b"], "grid")
    with pytest.raises(ConfigError, match="grid must be a list"):
        coerce(list[float], 0.5, "grid")
    assert coerce(int | str, 3, "k") == 3 and coerce(int | str, "auto", "k") == "auto"
    with pytest.raises(ConfigError, match=r"k must be one of int \| float: "):
        coerce(int | float, "many", "k")
