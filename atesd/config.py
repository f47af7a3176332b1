"""Config plumbing: nested frozen dataclasses <-> dicts, YAML files and dotted CLI overrides.

Every component owns its config dataclass (validated in its own __post_init__); this module only
builds them from plain data, with clear errors naming the bad key (closest valid name suggested)
or value. It knows nothing of what the configs mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names it and what would fix it."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build `cls` from a (nested) dict; unknown keys are rejected with the closest valid name. A
    section given in part goes on top of the field's own default (a parent may default a section
    otherwise than the section's class does: `real.env.total_steps=20` keeps RealEnvConfig's
    eval_every, `real.engine.loss.chunk_size=512` EngineConfig's reverse KL)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    _refuse_keys_not_text(data, path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{path}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            inner = _inner_paths(cls, key)
            hint = (
                f"; did you mean '{path}{close[0]}'?" if close
                else f"; did you mean {' or '.join(repr(path + p) for p in inner[:3])}?" if inner
                else f"; valid keys: {', '.join(fields)}"
            )  # fmt: skip
            raise ConfigError(f"unknown config key '{name}'{hint}")
        default = _default(fields[key])
        optional = type(None) in typing.get_args(hints[key])
        if value is None and dataclasses.is_dataclass(default) and not optional:
            value = {}  # an empty section (`loss:` with its keys commented out): the defaults it sits in
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            value = merge(to_dict(default), value)
        kwargs[key] = coerce(hints[key], value, name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names its keys
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path.rstrip('.') or cls.__name__}: {err}") from err


def _refuse_keys_not_text(value: Any, path: str) -> None:
    """Refuse a key that is not text, at any depth of `value`, naming it and where it is: YAML reads
    `1:`, `true:` or `null:` as a number, a bool or None, which no field name matches (difflib's
    suggestion then fails on it), and a mapping-typed field (`controllers`) would pass it on unchecked."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if not isinstance(key, str):
                where = f"in '{path.rstrip('.')}'" if path else "at the top level"
                raise ConfigError(f"config key {key!r} {where} must be text, got {type(key).__name__}")
            _refuse_keys_not_text(inner, f"{path}{key}.")
    elif isinstance(value, (list, tuple)):
        for inner in value:
            _refuse_keys_not_text(inner, path)


def _inner_paths(cls: type, key: str, depth: int = 2) -> list[str]:
    """Dotted paths below `cls` whose last part is `key` (`engine` under RunConfig: `real.engine`),
    nearest first: the full key a user who left out the leading sections meant."""
    found, level = [], [("", cls)]
    for _ in range(depth):
        below = []
        for prefix, tp in level:
            hints = typing.get_type_hints(tp)
            for f in dataclasses.fields(tp):
                inner = _dataclass_of(hints[f.name])
                if inner is not None:
                    if key in {g.name for g in dataclasses.fields(inner)}:
                        found.append(f"{prefix}{f.name}.{key}")
                    below.append((f"{prefix}{f.name}.", inner))
        level = below
    return found


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field's annotation holds (`X` or `X | None`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product), or None where it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert YAML/CLI data to the annotated type (dataclasses, tuples, numbers, Literal, Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{name}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(inner[0], value, name)
        errors = []
        for option in inner:  # `int | str`: the first type the value converts to, in the order written
            try:
                return coerce(option, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{name} must be one of {' | '.join(map(_type_name, inner))}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list or tp is list:  # list[float]: each value its type (a list was passed through as text)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [coerce(args[0], v, name) for v in value] if args else list(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, name) for v in value)
        if args and len(value) != len(args):
            raise ConfigError(f"{name} must hold {len(args)} values, got {list(value)!r}")
        return tuple(coerce(a, v, name) for a, v in zip(args, value)) if args else tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number ({tp.__name__}), got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError, OverflowError):
            out = _whole_text(value) if tp is int else None  # `1e3` for an int field, as `1.0e+3` was read
            if out is None:
                raise ConfigError(f"{name} must be a number ({tp.__name__}), got {value!r}") from None
        if tp is float and not math.isfinite(out):  # no field means anything by NaN or infinity
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return out
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping (key: value), got {value!r}")
    if tp is str and not isinstance(value, str):  # YAML read `2024`, `~`, `a: b` or `- a` as another type
        raise ConfigError(
            f"{name} must be a string, got {value!r}; text that YAML reads as a number, null, mapping or "
            f'list must be quoted: {name}=\'"..."\' on the command line, "..." in a config file'
        )
    return value


def _whole_text(value: Any) -> int | None:
    """The integer a text such as `1e3` writes (YAML reads it as text: no dot), else None."""
    try:
        number = float(value) if isinstance(value, str) else math.nan
    except ValueError:
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        value = parse_value(raw, item) if raw else ""
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override '{item}': {'.'.join(parts[: i + 1])} was given a value, not keys"
                )
        _set_override(node, parts[-1], value, key, item)
    return out


def _set_override(node: dict[str, Any], part: str, value: Any, key: str, item: str) -> None:
    """`node[part] = value`, a mapping merged key by key into the keys given before (`real.engine.lr=0.5`
    then `real.engine={batch_size: 2}` keeps the lr; the later value wins where both give one); a value
    where keys were given, or keys where a value was, is refused as for dotted keys."""
    old = node.get(part)
    if isinstance(old, dict) and isinstance(value, dict):
        for inner, inner_value in value.items():
            _set_override(old, inner, inner_value, f"{key}.{inner}", item)
    elif isinstance(old, dict):
        raise ConfigError(f"override '{item}': {key} was given keys, not a value")
    elif part in node and isinstance(value, dict):
        raise ConfigError(f"override '{item}': {key} was given a value, not keys")
    else:
        node[part] = value


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, `extra` winning."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def command_overrides(
    words: list[str], flags: dict[str, Any], names: dict[str, str] | None = None
) -> list[str]:
    """A recipe's overrides: its `key=value` words, then one per flag given (None: not given). A text
    flag is quoted, so `--name 2024` is the name "2024", not a number; a bool is `true`/`false`. A flag
    whose key a word gives another value is refused (appended last, it silently won); `names` maps a
    key to its flag where that is not `--key` (for the message)."""
    given = parse_overrides(list(words))
    overrides = list(words)
    for key, value in flags.items():
        if value is None:
            continue
        raw = value
        if isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, bool):
            value = str(value).lower()
        node: Any = given
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        same_text = str(node) == str(raw)  # `name=2024` beside `--name 2024`: one intent (YAML's int)
        if node is not _MISSING and not same_text and node != parse_value(str(value), f"{key}={value}"):
            flag = (names or {}).get(key, f"--{key}")
            raise ConfigError(f"{flag} {raw} contradicts --set {key}={node}: give it once")
        overrides.append(f"{key}={value}")
    return overrides


_MISSING = object()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file's mapping; ConfigError in one line when it is missing, unreadable, not
    UTF-8, not YAML or not a mapping."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys (key: value lines), got {type(data).__name__}"
        )
    return data


def differences(
    a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = (), prefix: str = ""
) -> list[str]:
    """The dotted keys whose values differ between two config dicts (a list equals the tuple of its
    values, at any depth: a stored JSON config's [[3, 0]] is to_dict's ((3, 0),)), but those in `ignore`."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb, name = a.get(key), b.get(key), f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, ignore, f"{name}.")
        elif _as_lists(va) != _as_lists(vb) and name not in ignore:
            out.append(name)
    return out


def _as_lists(value: Any) -> Any:
    """`value` with every tuple, at any depth, a list: what it reads as once stored as JSON."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return value


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults, then a YAML file, then dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, merge(data, parse_overrides(overrides or [])))


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):  # noqa: D102 - PyYAML's hook
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys give way to these
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Booleans as YAML 1.2's core schema reads them, not PyYAML's YAML 1.1: `yes`, `no`, `on`, `off` stay
# text (a run named "no" is a name; a bool field given "yes" is refused by name). A number with a
# leading zero stays text (`0801` is a name; an int field still reads `010` as ten, never YAML 1.1's
# octal eight), 0x1F stays hex, and `2024-01-05` is text, not a date.
_YAML11 = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 16) if text.startswith("0x") else int(text, 10)


StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_value(raw: str, item: str) -> Any:
    """One --set value as a YAML scalar or list: no anchors, aliases or tags (an override is a
    value, not a document), and a parse error in one line."""
    try:
        tokens = list(yaml.scan(raw))
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': not a valid value ({' '.join(str(err).split())})") from None
    if any(isinstance(t, (yaml.AliasToken, yaml.AnchorToken, yaml.TagToken)) for t in tokens):
        raise ConfigError(f"override '{item}': YAML anchors, aliases and tags are not allowed in a value")
    try:
        value = yaml.load(raw, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{item}': not a valid value ({' '.join(str(err).split())}); if it is text, quote "
            f"it: {item.partition('=')[0]}={shlex.quote(json.dumps(raw, ensure_ascii=False))}"
        ) from None
    _refuse_comment(raw, item, tokens, value)
    return value


def _refuse_comment(raw: str, item: str, tokens: list[yaml.Token], value: Any) -> None:
    """Refuse a value holding a YAML comment (a '#' first or after a space, outside quotes). YAML would
    drop it unsaid (`name=trial #2` is the name 'trial'), yet nobody writes a comment inside one
    command-line word: the '#' is meant as text. Keeping the raw text instead would make a value YAML
    except when it holds ' #' (`bands=[[3, 0]] #x` a string, `name="a" #b` a name with quotes), so it is
    refused, with the quoted value that says it; a '#' inside a word (`name=a#b`) is no comment."""
    end = 0
    for token in tokens:  # the scanner skips only blanks and comments between tokens
        at = raw.find("#", end, token.start_mark.index)
        if at >= 0:
            dropped = raw[at:].splitlines()[0].rstrip()
            words = [t for t in tokens if not isinstance(t, (yaml.StreamStartToken, yaml.StreamEndToken))]
            # plain text on one line (not a number, list or quoted text): quoted whole, it is the text given
            plain = all(isinstance(t, yaml.ScalarToken) and t.plain for t in words) and "\n" not in raw
            fix = (
                "quote the value to keep it: "
                f"{item.partition('=')[0]}={shlex.quote(json.dumps(raw, ensure_ascii=False))}"
                if plain and (value is None or isinstance(value, str))
                else "quote the text that holds the '#', or leave the comment out"
            )
            raise ConfigError(
                f"override '{item}': '{dropped}' would be read as a YAML comment and dropped; {fix}"
            )
        end = max(end, token.end_mark.index)


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field: the text of --help.

    `defaults` is the instance whose values are listed (default: `cls()`); a nested config's values
    come from its parent's instance, so a parent that sets its own child defaults (say
    `RealEnvConfig.env = ExposureEnvConfig(eval_every=4)`) is listed with those.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.", value)
        else:
            rows.append((f"{prefix}{f.name}", repr(value), f.metadata.get("help", "")))
    return rows
