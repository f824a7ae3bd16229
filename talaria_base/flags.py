"""Command-line flags derived from a pydantic settings model, so a new setting is a new field only.

Each field `foo_bar` becomes `--foo-bar`, its help is the field's description plus its default,
and its type follows the annotation:

    int / float / str (or `X | None`)   one value, converted by argparse
    bool                                 --foo / --no-foo
    Literal["a", "b"]                    choices a, b
    list[X]                              repeatable, one item per flag, named in the singular
                                         (`api_keys` -> --api-key K1 --api-key K2)
    dict[str, X]                         repeatable KEY=VALUE, or one JSON object

Every flag defaults to None ("not given"), so `given_settings` passes on only what the user typed
and lower layers (YAML, environment, built-in defaults) decide the rest (`config.load_settings`).
An annotation outside this list raises TypeError when the parser is built: the `--help` tests
catch it before a user does.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal, Mapping, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_SCALARS = (int, float, str)


def flag_name(field: str, annotation: Any, renamed: Mapping[str, str]) -> str:
    """`--field-name`; a repeatable list flag names one item (`cors_origins` -> --cors-origin)."""
    if field in renamed:
        return renamed[field]
    name = field
    if typing.get_origin(annotation) is list and name.endswith("s"):
        name = name[:-1]
    return "--" + name.replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser, settings_cls: type[BaseModel],
                      renamed: Mapping[str, str] | None = None) -> None:
    """Add one flag per field of `settings_cls` (dest = field name, default None).

    `renamed` maps the few fields whose flag is not derived from the field name, e.g.
    {"cloud_url": "--cloud"}.
    """
    renamed = dict(renamed or {})
    unknown = set(renamed) - set(settings_cls.model_fields)
    if unknown:
        raise KeyError(f"renamed flags for fields {settings_cls.__name__} lacks: {sorted(unknown)}")
    for field, info in settings_cls.model_fields.items():
        annotation = _without_none(info.annotation)
        kwargs = _argument_kwargs(field, annotation, settings_cls)
        repeatable = kwargs.get("action") in ("append", _MergeMapping)
        parser.add_argument(flag_name(field, annotation, renamed), dest=field, default=None,
                            help=_help(info, repeatable), **kwargs)


def given_settings(args: argparse.Namespace, settings_cls: type[BaseModel]) -> dict[str, Any]:
    """The settings fields the user set on the command line, as `load_settings` overrides."""
    return {f: getattr(args, f) for f in settings_cls.model_fields if getattr(args, f, None) is not None}


def choices_of(settings_cls: type[BaseModel], field: str) -> list[Any]:
    """The values a Literal field allows, for a flag elsewhere that forwards to this setting."""
    annotation = _without_none(settings_cls.model_fields[field].annotation)
    if typing.get_origin(annotation) is not Literal:
        raise TypeError(f"{settings_cls.__name__}.{field} is not a Literal field")
    return list(typing.get_args(annotation))


def _without_none(annotation: Any) -> Any:
    """`X | None` -> X: on the command line, leaving a flag out is how one says None."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _argument_kwargs(field: str, annotation: Any, settings_cls: type) -> dict[str, Any]:
    origin, params = typing.get_origin(annotation), typing.get_args(annotation)
    where = f"{settings_cls.__name__}.{field}: {annotation!r}"
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in _SCALARS:
        return {"type": annotation, "metavar": field.upper()}
    if origin is Literal:
        kinds = {type(v) for v in params}
        if len(kinds) != 1 or not kinds <= set(_SCALARS):
            raise TypeError(f"cannot make a flag for {where}: mixed or non-scalar Literal values")
        return {"type": kinds.pop(), "choices": list(params)}
    if origin is list and len(params) == 1 and params[0] in _SCALARS:
        item = field[:-1] if field.endswith("s") else field
        return {"action": "append", "type": params[0], "metavar": item.upper()}
    if origin is dict and len(params) == 2 and params[0] is str and params[1] in _SCALARS:
        return {"action": _MergeMapping, "type": _mapping_parser(params[1]), "metavar": "KEY=VALUE"}
    raise TypeError(f"cannot make a flag for {where}; supported: int, float, str, bool, Literal, "
                    "list[scalar], dict[str, scalar] (each optionally `| None`)")


def _mapping_parser(value_type: type):
    def parse(text: str) -> dict[str, Any]:
        if text.lstrip().startswith("{"):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from None
            if not isinstance(loaded, dict):
                raise argparse.ArgumentTypeError("expected a JSON object")
            pairs = list(loaded.items())
        else:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"expected KEY=VALUE or a JSON object, got {text!r}")
            pairs = [(key, value)]
        try:
            return {str(k): value_type(v) for k, v in pairs}
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"values must be {value_type.__name__}: {text!r}") from None

    parse.__name__ = f"KEY={value_type.__name__}"  # argparse names the type in its error message
    return parse


class _MergeMapping(argparse.Action):
    """Repeated KEY=VALUE flags build one dict; a later flag wins for the same key."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest, None) or {})
        merged.update(values)
        setattr(namespace, self.dest, merged)


def _help(info: FieldInfo, repeatable: bool) -> str:
    notes = ["repeatable"] if repeatable else []
    if info.is_required():
        notes.append("required: here, in the YAML file or in the environment")
    elif info.default_factory is not None or info.default in (None, "", [], {}):
        pass  # nothing to show: the description says what "unset" or "empty" means
    elif isinstance(info.default, bool):
        notes.append("default: " + ("on" if info.default else "off"))
    else:
        notes.append(f"default: {info.default}")
    text = info.description or ""
    text = f"{text} ({'; '.join(notes)})" if notes else text
    return text.replace("%", "%%")  # argparse formats help with %-style placeholders
