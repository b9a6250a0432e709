"""Bad arguments: the one error every command reports the same way, and the checks configs share.

The config dataclasses check their fields in `__post_init__`, so a flag or YAML value that cannot work
stops the command while it parses, before any model or data loads. The CLI prints an `ArgumentError` (or
any `ValueError` raised while parsing) as one line, `selftaught <command>: error: ...`, and exits 2.
A YAML value is first checked against its field's type (`as_field_type`): argparse passes a default on
unchecked, so a wrong type would otherwise fail once the models had loaded.
"""

from __future__ import annotations

import argparse
import types
import typing
from enum import Enum
from pathlib import Path

from transformers.hf_argparser import string_to_bool


class ArgumentError(ValueError):
    """A flag or config value that cannot be used; the message names it and says what to give instead."""


def check_at_least(config: object, minimums: dict[str, int | float]) -> None:
    """Each named field is at least its minimum (a field left at None is not checked)."""
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ArgumentError(f"--{name} must be at least {minimum}, got {value}")


def check_fraction(config: object, name: str) -> None:
    """A probability threshold such as top_p: in (0, 1]."""
    value = getattr(config, name)
    if not 0 < value <= 1:
        raise ArgumentError(f"--{name} must lie in (0, 1], got {value}")


def check_training_length(max_steps: int, num_train_epochs: float) -> None:
    """A training run that would take no step. transformers reads any max_steps <= 0 as "use the epochs",
    and with 0 it took one step at learning rate 0 and saved the unchanged model as if trained."""
    if max_steps == 0 or max_steps < -1:
        raise ArgumentError(
            f"--max_steps {max_steps} trains nothing: give a number of optimizer steps, or -1 to train "
            "for --num_train_epochs"
        )
    if max_steps == -1 and num_train_epochs <= 0:
        raise ArgumentError(
            f"--num_train_epochs {num_train_epochs} trains nothing: give a positive number of epochs, or "
            "--max_steps"
        )


def check_output_folder(value: str | None, flag: str) -> None:
    """A folder the command will create or write into: nothing on the way to it may be a file."""
    if value is None:
        return
    path = Path(value).expanduser()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"cannot be made: {folder} is a file"
                raise ArgumentError(f"{flag} {value} {what}; name a folder (it is created if missing)")
            return


def type_options(hint) -> tuple:
    """The types a field accepts: each member of a union, else the hint itself."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return typing.get_args(hint) if union else (hint,)


def as_field_type(value, hint):
    """`value` as a field typed `hint` takes it (the first of a union's types that fits), or a TypeError."""
    for option in type_options(hint):
        try:
            return as_type(value, option)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
    raise TypeError(f"{value!r} is not {type_name(hint)}")


def as_type(value, option):
    """`value` as one type: text converted as its flag would convert it ("1e-4" to a float), a number
    given where text is expected as its text; YAML's true and false only where a bool is expected."""
    kind = typing.get_origin(option) or option
    if value is None:
        if option is type(None):
            return None
    elif kind is typing.Literal:
        if value in typing.get_args(option):
            return value
    elif kind is bool:
        if isinstance(value, (bool, str)):
            return string_to_bool(value) if isinstance(value, str) else value
    elif isinstance(value, bool):
        pass  # YAML's true and false are no number and no text
    elif kind is int:
        if isinstance(value, (int, str)):
            return int(value)
    elif kind in (float, str):
        if isinstance(value, (int, float, str)):
            return kind(value)
    elif kind in (dict, list):
        if isinstance(value, kind):
            return value
    elif isinstance(kind, type) and issubclass(kind, Enum):
        return kind(value).value  # a ValueError unless one of its values
    raise TypeError(f"{value!r} is not {type_name(option)}")


def type_name(hint) -> str:
    """How an error names the type a field expects: "an integer", "a number or null", ..."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", dict: "a mapping",
             list: "a list", type(None): "null"}  # fmt: skip
    described = []
    for option in type_options(hint):
        kind = typing.get_origin(option) or option
        if kind is typing.Literal:
            described += [repr(v) for v in typing.get_args(option)]
        elif isinstance(kind, type) and issubclass(kind, Enum):
            described.append(f"one of {[e.value for e in kind]}")
        else:
            described.append(names.get(kind, getattr(kind, "__name__", str(kind))))
    return " or ".join(dict.fromkeys(described))
