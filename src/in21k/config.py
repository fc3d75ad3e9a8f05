"""Command configuration: dataclass defaults, then a YAML file, then command-line flags.

Every command describes its options as a dataclass. ``resolve_config`` merges, in order, the
dataclass defaults, the YAML file given with ``--config`` and the flags the user actually typed,
rejects unknown keys by name, checks types, and ``save_config`` writes the merged result next to the
command's outputs so a run can be repeated exactly, with its credentials taken out (``in21k.redact``): a saved
config, like ``--print-config``, shows ``<redacted>`` where a secret was. ``storage_options_option`` reads such a
config back: a ``<redacted>`` entry is dropped, so the credential comes from where it is given again (flags, YAML,
environment), never from a file a run wrote.

A field whose type is itself a dataclass is a *section*, owned by the module that defines it (e.g.
``loader:``, ``in21k.loaders.options.LoaderOptions``). In YAML it is a nested mapping; on the command line
its keys are ``--SECTION.KEY`` (``--loader.num-workers 4``); a YAML section and flags merge key by key.
Errors are ``ConfigError``s that name the key (``loader.shard_errors``).

A required option has an empty default (``None`` or ``""``) and its config's ``validate`` raises
``ConfigError("--NAME is required: ...")`` (``"NAME is required"`` for a positional one) when it is still
empty after merging. ``--print-config`` shows a
config without its required options (they print as empty): what a file in ``configs/`` holds can be looked at
alone, every other check still applies.

The command line is parsed by ``CommandParser``: every argparse error is one line, and an unknown flag is
answered with the closest known one (``--num-workers`` -> ``--loader.num-workers``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import logging
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from in21k.errors import ConfigError
from in21k.redact import redact, remember, scrub_text, strip_redacted

T = TypeVar("T")
log = logging.getLogger(__name__)


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
    cls: type[T],
    *,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    allow_missing: bool = False,
) -> T:
    """Merge defaults < ``config_file`` < ``overrides`` into a validated ``cls`` instance.

    ``overrides`` holds only the flags the user typed (``None`` means "not given"). ``allow_missing``: required
    options may stay empty (for ``--print-config``); every other check still applies.
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
    return _build(cls, values, where=cls.__name__, allow_missing=allow_missing)


def _build(cls: type[T], values: dict[str, Any], *, where: str, prefix: str = "", allow_missing: bool = False) -> T:
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
    if allow_missing:
        return _validated_without_required(cfg)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


_REQUIRED = re.compile(r"(?:--)?([a-z][a-z0-9_-]*) is required")  # "--out is required", "tree is required" (positional)
_PLACEHOLDER = "<required>"


def _validated_without_required(cfg: T) -> T:
    """``cfg`` validated as if its empty required options were given: each ``--NAME is required`` error of
    ``validate`` fills NAME with a placeholder and validates again (a required list, which no placeholder fits,
    ends the checks); any other error raises."""
    if not callable(getattr(cfg, "validate", None)):
        return cfg
    probe = copy.copy(cfg)
    filled: list[str] = []
    while True:
        try:
            probe.validate()  # type: ignore[attr-defined]
            break
        except ConfigError as exc:
            match = _REQUIRED.match(str(exc))
            name = match.group(1).replace("-", "_") if match else ""
            value = getattr(probe, name, 0)
            if value == []:  # a required list (NAME=VALUE items, say): no placeholder fits it; the checks stop here
                break
            if value not in (None, "") or name in filled:
                raise
            object.__setattr__(probe, name, _PLACEHOLDER)
            filled.append(name)
    for name in filled:  # validate may have normalised other fields: keep those, put the empty values back
        object.__setattr__(probe, name, getattr(cfg, name))
    return probe


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


def storage_options_option(name: str, value: Any) -> dict[str, Any] | None:
    """fsspec storage options given as YAML or JSON text (``json_option``), with the ``<redacted>`` placeholders of
    a saved config dropped (a warning names them); their secret values are remembered, so that logs and error
    messages never show them (``in21k.redact.remember``)."""
    options = json_option(name, value)
    if options is None:
        return None
    options, dropped = strip_redacted(options)
    if dropped:
        log.warning(
            "%s: %s were redacted in the config this run read, and are left out: give them again (flags, YAML) or "
            "let the environment or an instance role provide them",
            name,
            ", ".join(dropped),
        )
    remember(options)
    return options


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def saved_config(cfg: Any) -> dict[str, Any]:
    """The config as it is written or shown anywhere (files, checkpoints, ``--print-config``): ``config_to_dict``
    through ``in21k.redact.redact``."""
    return redact(config_to_dict(cfg))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the merged config as YAML (atomically), credentials redacted, so the run can be repeated with
    ``--config`` (and its credentials given again)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(saved_config(cfg), sort_keys=False))
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
            parser.add_argument(
                negative, dest=kwargs["dest"], action="store_const", const=False, default=None, help=argparse.SUPPRESS
            )
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
    """``resolve_config`` for an argparse namespace built by ``add_config_args`` (with ``--print-config``, required
    options may stay empty)."""
    return resolve_config(
        cls,
        config_file=args.config,
        overrides=overrides_from_args(args, cls),
        allow_missing=bool(getattr(args, "print_config", False)),
    )


def print_config_requested(args: Any, cfg: Any, *, as_dict: typing.Callable[[Any], dict] = saved_config) -> bool:
    """For ``--print-config``: print the merged config as YAML, credentials redacted, and return True (the command
    then exits 0)."""
    if not getattr(args, "print_config", False):
        return False
    print(yaml.safe_dump(as_dict(cfg), sort_keys=False), end="")
    return True


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``PROG: error: ...``, exit status 2) and which
    answers an unknown flag with the closest flag it knows (the subcommands it makes are ``CommandParser``s too).
    """

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._subparsers:  # a command's own parser: what it does not know is an error here
            self.error(self.unknown_message(extras))
        return parsed, extras

    def unknown_message(self, extras: list[str]) -> str:
        """What to say about arguments this parser does not know: the first unknown flag and the closest known one."""
        flags = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
        if not flags:
            return f"unrecognized arguments: {' '.join(extras)}"
        flag = flags[0]
        close = closest_flag(flag, list(self._option_string_actions))
        hint = f"did you mean {close}?" if close else f"{self.prog} --help lists the flags"
        return f"unknown flag {flag} ({hint})"


def closest_flag(flag: str, known: typing.Sequence[str]) -> str | None:
    """The known flag ``flag`` most likely meant: the same name inside a section (``--num-workers`` ->
    ``--loader.num-workers``), else the closest spelling, else ``None``."""
    name = flag.lstrip("-")
    in_section = sorted(k for k in known if k.startswith("--") and k.rsplit(".", 1)[-1] == name and "." in k)
    if in_section:
        return in_section[0]
    names = {k[2:]: k for k in known if k.startswith("--")}  # compared without the dashes every flag shares
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return names[close[0]] if close else None


def report_error(prog: str, exc: Exception) -> int:
    """Print a problem the user can fix as one line on stderr; the exit status of such a problem (2)."""
    print(f"{prog}: error: {scrub_text(str(exc))}", file=sys.stderr)
    return 2
