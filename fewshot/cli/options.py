"""Command options made from a config dataclass's fields, so each setting is declared once.

A field declared with `fewshot.config.setting(default, help)` becomes `--field-name` (a
`--name/--no-name` switch for booleans, a repeatable option for `tuple[str, ...]`). The command receives the options the user gave as
one dict, `given`, and the dataclass keeps its defaults and its checks for the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional

import typer


def _option_type(annotation: Any) -> type:
    """The plain type typer parses for a field: Optional and Literal (checked by the config) drop away."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _option_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return type(args[0])
    if typing.get_origin(annotation) is tuple:  # tuple[str, ...]: a repeatable option
        return list[args[0]]
    return annotation


def config_options(config: type, *, skip: tuple[str, ...] = (), defaults: Any = None, into: str = "given",
                   helps: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one option per `setting` field of `config` to a command that takes `given: dict`.

    `defaults`, an instance of `config`, is what the command falls back to (the help shows its
    values); without it, the fields' own defaults. `into` names the dict parameter, so that a
    command can take the options of two configs (one decorator each). `helps` replaces the
    help of fields whose default this command sets otherwise."""
    hints = typing.get_type_hints(config)
    fields = [f for f in dataclasses.fields(config) if "help" in f.metadata and f.name not in skip]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        resolved = typing.get_type_hints(command, include_extras=True)  # the module's own annotations are strings
        own = [p.replace(annotation=resolved[name]) for name, p in signature.parameters.items() if name != into]
        added, annotations = [], {}
        for f in fields:
            kind = _option_type(hints[f.name])
            flag = f"--{f.name.replace('_', '-')}"
            declaration = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
            default = f.default if defaults is None else getattr(defaults, f.name)
            shown = "" if default is None else f" Default: {default}."
            text = (helps or {}).get(f.name, f.metadata["help"])
            annotation = Annotated[Optional[kind], typer.Option(declaration, help=f"{text}{shown}",
                                                               show_default=False)]
            added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
            annotations[f.name] = annotation

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            chosen = {f.name: values.pop(f.name) for f in fields}
            given = {name: value for name, value in chosen.items() if value is not None}
            return command(**{into: given}, **values)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])
        wrapper.__annotations__ = {**{k: v for k, v in resolved.items() if k != into}, **annotations}
        return wrapper

    return decorate
