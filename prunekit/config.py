"""Typed configs: one frozen dataclass per stage, its defaults and help in one place.

A stage declares its config with `opt(...)` fields and checks them in `validate()`, which runs when
the config is built (so a bad value fails before any model loads, in the CLI and the Python API
alike). The CLI derives its flags from the same fields (`add_args`), so `--help` shows the defaults
that the code uses.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from .errors import PrunekitError


def opt(
    default: Any = MISSING,
    help: str = "",
    *,
    type: Callable | None = None,
    choices=None,
    flag: str | None = None,
    positional: bool = False,
    cli: bool = True,
    required: bool = False,
    metavar: str | None = None,
    append: bool = False,
):
    """A config field. `type` parses the CLI string (default: the default's type; tuples are comma
    lists of their first element's type); `cli=False` keeps a field out of the command line;
    `append` makes a repeatable flag whose values collect into a tuple."""
    md = {
        "help": help,
        "type": type,
        "choices": choices,
        "flag": flag,
        "positional": positional,
        "cli": cli,
        "required": required,
        "metavar": metavar,
        "append": append,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable config defaults: use a tuple")
    return field(default=default, metadata=md)


def comma_list(item: Callable = str) -> Callable[[str], tuple]:
    def parse(s: str) -> tuple:
        try:
            return tuple(item(x.strip()) for x in s.split(",") if x.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{s!r} is not a comma list of {item.__name__}: {e}") from e

    parse.__name__ = f"comma list of {item.__name__}"
    return parse


class Config:
    """Base of the stage configs: validation on construction, replace(), a JSON-able dict."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by each stage
        pass

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self, exclude: tuple[str, ...] = ()) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in exclude}


def add_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per CLI field of the config class, with its default shown in the help."""
    for f in dataclasses.fields(cls):
        md = f.metadata
        if not md.get("cli", True) or f.name in skip:
            continue
        default = f.default
        text = md.get("help", "").replace("%", "%%")  # argparse formats help with %
        if md.get("positional"):
            parser.add_argument(f.name, help=text, metavar=md.get("metavar"))
            continue
        name = md.get("flag") or "--" + f.name.replace("_", "-")
        if md.get("append"):
            parser.add_argument(name, dest=f.name, action="append", default=[], help=text, metavar=md.get("metavar"))
            continue
        if isinstance(default, bool):
            if default:
                parser.add_argument(
                    md.get("flag") or f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=text
                )
            else:
                parser.add_argument(name, dest=f.name, action="store_true", help=text)
            continue
        typ = md.get("type")
        if typ is None:
            if isinstance(default, tuple):
                typ = comma_list(type(default[0]) if default else str)
            elif default is not None and default is not MISSING:
                typ = type(default)
            else:
                typ = str
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if md.get("required") or default is MISSING:
            kw = {"required": True}
        else:
            kw = {"default": default}
            if shown not in (None, ""):
                text = f"{text} (default: {shown})" if text else f"default: {shown}"
        parser.add_argument(
            name, dest=f.name, type=typ, choices=md.get("choices"), help=text, metavar=md.get("metavar"), **kw
        )


def from_args(cls, args: argparse.Namespace, **overrides):
    """Build (and so validate) a config from parsed arguments."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    kw.update(overrides)
    return cls(**kw)


# ---------------------------------------------------------------- checks shared by the stages


def check(ok: bool, msg: str) -> None:
    """Raise a user-facing error (exit 2 in the CLI) when ok is False."""
    if not ok:
        raise PrunekitError(msg)


def check_choice(name: str, value, choices) -> None:
    check(value in choices, f"--{name.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got {value!r}.")


def check_positive(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.",
    )


DTYPES = ("auto", "bfloat16", "float16", "float32")
