# Copyright 2026 ki_vla_ros maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Dataclass configs from YAML files and `key=value` command lines, with every value coerced to its field's type.

Why: YAML 1.1 (PyYAML) reads `1e-3` as a string and `5e-4` in a config file likewise, so a valid learning rate
used to end in a TypeError deep inside `validate`. Coercing by the declared annotation gives the types the user
meant (`1e-3` -> 0.001, `9000` -> 9000, `"true"` -> True) and, for anything that cannot mean the field's type,
one line naming the field, the expected type and the value.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A config value that does not fit its field (a ValueError, so CLIs print it as one clear line)."""


def load_yaml(source: str | Path, what: str = "") -> Any:
    """YAML from a file (a Path) or a string; a syntax error becomes one ConfigError naming the file and line
    (PyYAML's own error is a multi-line report with a caret, printed as a traceback by every CLI)."""
    text = source.read_text() if isinstance(source, Path) else source
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        label = what or (str(source) if isinstance(source, Path) else repr(source))
        raise ConfigError(f"{label}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (int, float, bool, str, X | None, tuple[...], list[X], dict, nested dataclass)."""
    def bad(expected: Any = tp) -> ConfigError:
        return ConfigError(f"{where}: expected {_type_name(expected)}, got {value!r}")

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise bad()
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise bad()
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad()
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number != int(number):
            raise bad()
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a numeric path or name, e.g. 123
            return str(value)
        raise bad()
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
            items = [coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad()
        return value
    return value  # a type this module does not know: left to the dataclass's own validation


def build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """`cls(**data)` with unknown keys refused and every value coerced to its field's annotation."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: check_range(coerce(v, hints[k], f"{where}.{k}"), fields[k], f"{where}.{k}")
                  for k, v in data.items()})


def check_range(value: Any, f: dataclasses.Field, where: str) -> Any:
    """`value` unless the field declares a `range` (metadata {"range": (lo, hi)}) that it is outside of."""
    bounds = f.metadata.get("range")
    if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = bounds
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {value!r} is outside its range [{lo}, {hi}]")
    return value
