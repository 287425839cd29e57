"""Command-line options generated from a config dataclass, so defaults and help live in one place.

Used by the commands that must also run where typer is not installed (``burst`` on a bare GPU
machine: ``python -m hybridflow.models.train.burst``); ``hf-train`` forwards its arguments here.
A field's help is ``field(metadata={"help": ...})``; ``snake_case`` becomes ``--snake-case``;
a bool field becomes a ``--name/--no-name`` pair."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description or cls.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f.metadata.get("help", " ")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif kind in (int, float, str):
            p.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text,
                           required=f.metadata.get("required", False))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: option type {kind} is not supported")
    return p


def parse(cls: type[T], argv: Sequence[str] | None, prog: str) -> T:
    """``cls`` filled from ``argv`` (fields without a flag keep their defaults)."""
    ns: dict[str, Any] = vars(parser(cls, prog).parse_args(argv))
    return cls(**ns)
