"""Settings declared once: a dataclass field that is also a CLI option.

A component's settings are one frozen dataclass; each field that a user sets from the
command line is declared with `setting(...)`, which carries its click option. From that one
declaration come the click options (`cli_options`, with the field's default shown in
`--help` and the generated docs) and the settings parsed from a command's options
(`from_options`, where an option left out, or a configuration built without the CLI, gets
the field's default). So every default is written once, as Redpanda Connect derives a
component's parsing and its docs from one config spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

import click
import orjson

T = TypeVar("T")
_OPTION = "facespace_bridge.option"
_UNSET = object()


@dataclasses.dataclass(frozen=True)
class _Option:
    decls: tuple[str, ...]
    kwargs: dict[str, Any]
    cli_default: Any  # what the option holds when not given; _UNSET: the field's default


def setting(*decls: str, default: Any, cli_default: Any = _UNSET, **option: Any) -> Any:
    """A dataclass field with `default`, set by the click option `decls` (as `click.option`
    takes them, with `option` its other keywords: help, type, envvar...).

    `cli_default`: what the option holds when the user leaves it out, where that must differ
    from the field's default (None, to tell "not given" from a value); `--help` still shows
    the field's default."""
    spec = _Option(decls, option, cli_default)
    return dataclasses.field(default=default, metadata={_OPTION: spec})


class NameList(click.types.StringParamType):
    """The type of a repeatable option whose values are names (camera ids, people): from the
    environment, a comma-separated list whose spaces belong to the names (`Mary Ann Smith,Björk`),
    or a JSON array for names that hold a comma (`["Smith, Anne"]`). (click's own split, at
    whitespace, would cut a name in two.)"""

    name = "name"

    def split_envvar_value(self, rv: str) -> list[str]:
        text = rv.strip()
        if text.startswith("["):
            try:
                items = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise click.BadParameter(f"not a JSON array of names: {exc}") from None
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise click.BadParameter("a JSON list of names must hold only strings")
            return items
        return [part.strip() for part in text.split(",") if part.strip()]


NAMES = NameList()


def _specs(cls: type) -> list[tuple[dataclasses.Field[Any], _Option]]:
    return [(f, f.metadata[_OPTION]) for f in dataclasses.fields(cls) if _OPTION in f.metadata]


def cli_options(cls: type) -> list[Callable[[Any], Any]]:
    """The click options of the settings class `cls`, in field order."""
    options = []
    for field, spec in _specs(cls):
        kwargs = dict(spec.kwargs)
        if spec.cli_default is _UNSET:
            kwargs.setdefault("default", field.default)
            kwargs.setdefault("show_default", field.default is not None)
        else:
            kwargs.setdefault("default", spec.cli_default)
            if "show_default" not in kwargs and field.default is not None:
                # click would show the option's own default, which only means "not given"
                kwargs["show_default"] = False
                kwargs["help"] = f"{kwargs.get('help', '')} [default: {field.default}]".strip()
            if field.default is not None:  # what click would infer from the field's default
                kwargs.setdefault("type", type(field.default))
        options.append(click.option(*spec.decls, **kwargs))
    return options


@cache
def option_name(cls: type, field_name: str) -> str:
    """The click parameter name (the key in a command's options) of `cls`'s field `field_name`."""
    for field, spec in _specs(cls):
        if field.name == field_name:
            name = click.Option(list(spec.decls)).name
            assert name is not None
            return name
    raise KeyError(field_name)


@cache
def flag(cls: type, field_name: str) -> str:
    """The long flag of `cls`'s field `field_name` (for messages: `param_hint`)."""
    for field, spec in _specs(cls):
        if field.name == field_name:
            option = click.Option(list(spec.decls))
            return max(option.opts, key=len)
    raise KeyError(field_name)


def from_options(cls: type[T], config: Mapping[str, Any], **values: Any) -> T:
    """`cls` from a command's parsed options (click parameter names): each setting's value, or
    its default where the option is missing or None; `values` set the other fields."""
    for field, _spec in _specs(cls):
        value = config.get(option_name(cls, field.name))
        values.setdefault(field.name, field.default if value is None else value)
    return cls(**values)
