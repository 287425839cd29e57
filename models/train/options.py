"""Command-line options generated from config dataclasses, so defaults and help live in one place.

Every ``hf-train`` command that trains, packs or checks parses its arguments here (``hf-train``
forwards them), and so do the commands that must also run where typer is not installed (``burst`` on
a bare GPU machine: ``python -m hybridflow.models.train.burst``). One option per dataclass field:

- ``snake_case`` becomes ``--snake-case`` (``field(metadata={"flag": "other"})`` renames it);
- a field's help is ``field(metadata={"help": ...})``; a field without a default is required;
- ``bool`` becomes a ``--name/--no-name`` pair; ``tuple[T, ...]`` takes one or more values;
  ``T | None`` defaults to None; ``Path``, ``int``, ``float``, ``str`` as they are;
  ``metadata={"choices": (...)}`` limits a field to those values;
- ``metadata={"must_exist": True}`` marks a file the command reads (``must_exist`` lists them, so the
  command can refuse a missing one before any work);
- a field with ``metadata={"derived": "why"}`` is no option: the trainer sets it (from a frozen model,
  say), and a flag for it would be ignored.

Several dataclasses can share one command line (a stage's files, its training config and its model
config): their field names must differ, which building the parser checks."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Spec = type | tuple[type, Mapping[str, Any]]  # a dataclass, or one with other defaults for some fields


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage of a 40-option command is a page)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _kind(hint: Any) -> tuple[Any, dict[str, Any]]:
    """The argparse ``type`` and extra keywords for one field's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return _kind(next(a for a in args if a is not type(None)))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        kind, kw = _kind(args[0])
        return kind, {**kw, "nargs": "+"}
    if hint in (int, float, str, Path):
        return hint, {}
    raise TypeError(f"option type {hint} is not supported")


def add_options(p: argparse.ArgumentParser, cls: type, defaults: Mapping[str, Any] | None = None,
                taken: set[str] | None = None) -> None:
    """One option per field of dataclass ``cls``, in a help section named after it. ``defaults``
    replaces the dataclass's own defaults for some fields (what a command starts new runs with);
    ``taken`` collects the field names of a command's configs, which must not repeat."""
    taken = set() if taken is None else taken
    group = p.add_argument_group(cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or "derived" in f.metadata:
            continue
        if f.name in taken:
            raise TypeError(f"{cls.__name__}.{f.name}: another config of this command has that option")
        taken.add(f.name)
        if defaults and f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", " ")}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if default is dataclasses.MISSING:
            kw.update(required=True, default=argparse.SUPPRESS, help=kw["help"] + " (required)")
        else:
            kw["default"] = default
        if hints[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        try:
            kind, extra = _kind(hints[f.name])
        except TypeError as e:
            raise TypeError(f"{cls.__name__}.{f.name}: {e}") from None
        group.add_argument(flag, type=kind, **kw, **extra)


def parser(prog: str, description: str | None, *specs: Spec) -> Parser:
    """A parser with the options of every dataclass in ``specs`` (see :func:`add_options`)."""
    p = Parser(prog=prog, description=description, allow_abbrev=False,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    taken: set[str] = set()
    for spec in specs:
        cls, defaults = spec if isinstance(spec, tuple) else (spec, None)
        add_options(p, cls, defaults, taken)
    return p


def build(cls: type[T], ns: argparse.Namespace) -> T:
    """``cls`` filled from the parsed options that are its fields (the others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items() if k in names}
    return cls(**values)


def parse(cls: type[T], argv: Sequence[str] | None, prog: str) -> T:
    """``cls`` filled from ``argv``."""
    return build(cls, parser(prog, cls.__doc__, cls).parse_args(argv))


def must_exist(*configs: Any) -> list[str]:
    """The files that filled ``configs`` name in their ``must_exist`` fields (empty ones mean "none")."""
    return [str(getattr(c, f.name)) for c in configs for f in dataclasses.fields(c)
            if f.metadata.get("must_exist") and getattr(c, f.name) not in ("", None)]
