"""Command configuration: dataclass defaults, then a YAML file, then command-line flags.

Every command describes its options as a dataclass. ``resolve_config`` merges, in order, the
dataclass defaults, the YAML file given with ``--config`` and the flags the user actually typed,
rejects unknown keys by name, checks types, and ``save_config`` writes the merged result next to the
command's outputs so a run can be repeated exactly.

A field whose type is itself a dataclass is a *section*, owned by the module that defines it (e.g.
``loader:``, ``in21k.loaders.options.LoaderOptions``). In YAML it is a nested mapping; on the command line
its keys are ``--SECTION.KEY`` (``--loader.num-workers 4``); a YAML section and flags merge key by key.
Errors are ``ConfigError``s that name the key (``loader.shard_errors``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from in21k.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint, converting where YAML or argparse is lossy."""
    if _is_section(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: a section of keys (a YAML mapping), got {value!r}")
        return _build(hint, value, where=f"section {name!r}", prefix=f"{name}.")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key {name!r}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {name!r}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_coerce(name, v, item) for v in value]
        return tuple(out) if origin is tuple else out
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {name!r}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r}: expected a string, got {value!r}")
        return value
    return value


def check_keys(cls: type, keys: typing.Iterable[str], where: str) -> None:
    """Raise a ``ConfigError`` naming every key of ``keys`` that ``cls`` does not define."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"unknown config key(s) in {where}: {', '.join(hints)}. Known keys: {', '.join(sorted(known))}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def resolve_config(
    cls: type[T], *, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> T:
    """Merge defaults < ``config_file`` < ``overrides`` into a validated ``cls`` instance.

    ``overrides`` holds only the flags the user typed (``None`` means "not given").
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        data = load_yaml(config_file)
        _check_tree(cls, data, f"config file {str(config_file)!r}")
        _merge(values, data)
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        _check_tree(cls, given, "command-line overrides")
        _merge(values, given)
    return _build(cls, values, where=cls.__name__)


def _build(cls: type[T], values: dict[str, Any], *, where: str, prefix: str = "") -> T:
    check_keys(cls, values, where)
    hints = _field_types(cls)
    values = dict(values)
    for f in dataclasses.fields(cls):
        # A section given in part (a YAML mapping, --section.key flags) completes this command's own default
        # for it, which may differ from the section class's defaults (bench loader: a worker per core).
        given = values.get(f.name)
        if _is_section(hints[f.name]) and isinstance(given, dict) and f.default_factory is not dataclasses.MISSING:
            base = config_to_dict(f.default_factory())  # type: ignore[misc]
            _merge(base, values[f.name])
            values[f.name] = base
    checked = {k: _coerce(prefix + k, v, hints[k]) for k, v in values.items()}
    try:
        cfg = cls(**checked)
    except TypeError as exc:  # a required field was not given
        raise ConfigError(f"incomplete config for {cls.__name__}: {exc}") from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def _check_tree(cls: type, data: dict[str, Any], where: str) -> None:
    check_keys(cls, data, where)
    hints = _field_types(cls)
    for k, v in data.items():
        if _is_section(hints[k]) and isinstance(v, dict):
            _check_tree(hints[k], v, f"{where}, section {k!r}")


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge ``new`` into ``into``; sections (nested mappings) merge key by key."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def json_option(name: str, value: Any, *, kind: type = dict) -> Any:
    """A mapping option given as YAML (already a dict) or on the command line as JSON text; ``None`` stays."""
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f'{name} must be a JSON object, e.g. \'{{"key": "value"}}\': {exc}') from None
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{name} must be a mapping of options, got {type(value).__name__}")
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the merged config as YAML (atomically) so the run can be repeated with ``--config``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def add_config_args(parser: Any, cls: type, *, positional: typing.Sequence[str] = ()) -> None:
    """Add ``--config`` and one flag per field of ``cls`` (``field_name`` -> ``--field-name``).

    Help text comes from ``field(metadata={"help": ...})``. Every flag defaults to ``None`` so
    ``overrides_from_args`` can tell "not given" from "given"; the real default is shown in the help.
    """
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML file of config keys (see configs/)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the merged config as YAML and exit without running"
    )
    _add_field_args(parser, cls, positional=positional)


def _add_field_args(parser: Any, cls: type, *, positional: typing.Sequence[str] = (), prefix: str = "") -> None:
    import argparse

    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if _is_section(hint):
            title = f.metadata.get("help", f"{f.name} options")
            group = parser.add_argument_group(f"{f.name} section", f"{title} (YAML: a '{f.name}:' mapping)")
            _add_field_args(group, hint, prefix=f"{prefix}{f.name}.")
            continue
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if default not in (None, "", [], ()):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": None}
        metavar = f.metadata.get("metavar")
        if metavar:
            kwargs["metavar"] = metavar
        base = hint
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            base = next(a for a in typing.get_args(hint) if a is not type(None))
            origin = typing.get_origin(base)
        if f.name in positional and not prefix:
            kwargs.pop("default")
            parser.add_argument(f.name, nargs="?", **kwargs)
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        if prefix:
            kwargs["dest"] = prefix + f.name
        if base is bool and prefix:  # --section.key / --section.no-key (argparse would make --no-section.key)
            kwargs.update(action="store_const", const=True)
            parser.add_argument(flag, **kwargs)
            negative = "--" + prefix + "no-" + f.name.replace("_", "-")
            parser.add_argument(negative, dest=kwargs["dest"], action="store_const", const=False, default=None,
                                help=argparse.SUPPRESS)  # fmt: skip
            continue
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            kwargs["nargs"] = "+"
            kwargs["action"] = "extend"  # --opt A B and --opt A --opt B both give [A, B]
            item = typing.get_args(base)[0]
            if item in (int, float):
                kwargs["type"] = item
        elif origin is typing.Literal:
            kwargs["choices"] = typing.get_args(base)
        elif base in (int, float):
            kwargs["type"] = base
        parser.add_argument(flag, **kwargs)


def overrides_from_args(args: Any, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line (sections as nested dicts)."""
    given = vars(args)
    out: dict[str, Any] = {}
    for name, hint in _field_types(cls).items():
        if _is_section(hint):
            nested = overrides_from_args(args, hint, prefix=f"{prefix}{name}.")
            if nested:
                out[name] = nested
        elif given.get(prefix + name) is not None:
            out[name] = given[prefix + name]
    return out


def config_from_args(args: Any, cls: type[T]) -> T:
    """``resolve_config`` for an argparse namespace built by ``add_config_args``."""
    return resolve_config(cls, config_file=args.config, overrides=overrides_from_args(args, cls))


def print_config_requested(args: Any, cfg: Any, *, as_dict: typing.Callable[[Any], dict] = config_to_dict) -> bool:
    """For ``--print-config``: print the merged config as YAML and return True (the command then exits 0)."""
    if not getattr(args, "print_config", False):
        return False
    print(yaml.safe_dump(as_dict(cfg), sort_keys=False), end="")
    return True
