"""What a setting's value may be, said once: a Rule checks a value given to the Python API (`epochs must
be a whole number, 0 or more; received -1.`) and reads the text of its command-line flag (`expected a
whole number, 0 or more, received '-1'`). Light: the command line builds its flags from these before
PyTorch loads."""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ParameterError


@dataclass(frozen=True)
class Rule:
    what: str  # what a value must be, to follow "must be" / "expected"
    ok: Callable[[Any], bool]  # a value the API was given
    read: Callable[[str], Any] = str  # a flag's text -> the value (ValueError where the text is not one)
    choices: tuple[str, ...] | None = None  # the values a flag lists in its help, where they are few

    def check(self, name: str, value) -> None:
        """Raise ParameterError naming `name` where `value` breaks the rule."""
        if not self.ok(value):
            raise ParameterError(name, f"{{name}} must be {self.what}; received {value!r}.")

    def parse(self, text: str):
        """A flag's text -> its value, or ValueError("expected ...") where it breaks the rule."""
        try:
            value = self.read(text)
        except ValueError:
            value = _UNREAD
        if value is _UNREAD or not self.ok(value):
            raise ValueError(f"expected {self.what}, received {text!r}")
        return value


_UNREAD = object()


def _is_whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # NumPy's integers too


def whole(lo: int, hi: int | None = None, *, auto: bool = False) -> Rule:
    """A whole number from lo (to hi); with `auto`, also None (the flag's text 'auto')."""
    what = f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number, {lo} or more"
    return Rule(what + (", or auto" if auto else ""),
                lambda v: (auto and v is None) or _is_whole(v) and lo <= v and (hi is None or v <= hi),
                lambda t: None if auto and t == "auto" else int(t))


def number(lo: float, hi: float, what: str) -> Rule:
    """A real number from lo to hi (inclusive)."""
    return Rule(what, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi, float)


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(f"one of {', '.join(choices)}", lambda v: v in choices, choices=choices)


def path() -> Rule:
    return Rule("a path", lambda v: isinstance(v, (str, os.PathLike)))


def name() -> Rule:
    return Rule("a model name or 'auto'", lambda v: isinstance(v, str) and bool(v))


def flag() -> Rule:
    return Rule("True or False", lambda v: isinstance(v, (bool, int)))


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def device() -> Rule:
    """Where to run: whether it is there is resolve_device's to say, with the devices that are."""
    return Rule(DEVICES, lambda v: isinstance(v, str) and bool(re.fullmatch(r"auto|cpu|cuda|mps|cuda:\d+", v)),
                lambda t: t.strip().lower())


def seconds() -> Rule:
    return number(0.0, float("inf"), "0 or more seconds")


def probability() -> Rule:
    return number(0.0, 1.0, "a number from 0 to 1")


IMAGE_SIZES = (16, 2048)  # the input sizes in pixels a model may take
IMAGE_SIZE = whole(*IMAGE_SIZES)  # an input size, wherever it comes from (a parameter, a flag, config.json)
