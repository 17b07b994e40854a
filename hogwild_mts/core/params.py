"""Declarative option tables, in the spirit of scikit-learn's ``_parameter_constraints``.

A :class:`Table` names each option of a trainer once: its constraint, its default and where it
goes.  :func:`validate` checks given values against a table (every constraint in table order,
then the table's rules, which check options against each other and derive what the run needs)
and returns the validated :class:`Options`, the one place a trainer keeps its options.  The
constraints call the validators of :mod:`hogwild_mts.core.options`, so every message names the
value and what is allowed in the one shape the project uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

from hogwild_mts.core.options import (check_choice, check_int, check_nonnegative, check_positive,
                                      check_probability)


@dataclass(frozen=True)
class Integer:
    """An integer >= ``minimum`` (bool is not an integer)."""

    minimum: int

    def __call__(self, name: str, value) -> int:
        return check_int(name, value, self.minimum)

    def __str__(self) -> str:
        return f"integer >= {self.minimum}"


@dataclass(frozen=True)
class Positive:
    """A finite number > 0, as float."""

    def __call__(self, name: str, value) -> float:
        return check_positive(name, value)

    def __str__(self) -> str:
        return "finite > 0"


@dataclass(frozen=True)
class NonNegative:
    """A finite number >= 0, as float."""

    def __call__(self, name: str, value) -> float:
        return check_nonnegative(name, value)

    def __str__(self) -> str:
        return "finite >= 0"


@dataclass(frozen=True)
class Fraction:
    """A finite number in [0, 1] with the chosen open or closed ends, as float."""

    allow_zero: bool
    allow_one: bool

    def __call__(self, name: str, value) -> float:
        return check_probability(name, value, allow_zero=self.allow_zero, allow_one=self.allow_one)

    def __str__(self) -> str:
        return f"in {'[' if self.allow_zero else '('}0, 1{']' if self.allow_one else ')'}"


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (strings)."""

    choices: tuple

    def __call__(self, name: str, value):
        return check_choice(name, value, self.choices)

    def __str__(self) -> str:
        return " or ".join(repr(choice) for choice in self.choices)


@dataclass(frozen=True)
class Flag:
    """Anything, taken as a bool."""

    def __call__(self, name: str, value) -> bool:
        return bool(value)

    def __str__(self) -> str:
        return "bool"


@dataclass(frozen=True)
class Optional:
    """None, or a value ``constraint`` accepts."""

    constraint: Callable

    def __call__(self, name: str, value):
        return None if value is None else self.constraint(name, value)

    def __str__(self) -> str:
        return f"None or {self.constraint}"


@dataclass(frozen=True)
class Checked:
    """A value the table's rules check (``allowed`` says what they allow), kept as given."""

    allowed: str

    def __call__(self, name: str, value):
        return value

    def __str__(self) -> str:
        return self.allowed


@dataclass(frozen=True)
class Option:
    """One option: its ``name`` (the constructor argument), the ``constraint`` that checks a
    value (``constraint(name, value) -> the value converted``, or ValueError), its ``default``
    and where it ``goes`` (what reads it: the run, the policy, the model, the processes, Ray,
    checkpoints)."""

    name: str
    constraint: Callable
    default: object
    goes: str


Rule = Callable[[Mapping], dict]  # checked values -> the entries it derives ({} for a check)


class Options(Mapping):
    """Validated options, read-only: ``options.epochs`` or ``options["epochs"]``; ``replace``
    makes a changed copy."""

    def __init__(self, values: Mapping):
        self._values = dict(values)

    def __getitem__(self, name: str):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"no option {name!r}") from None

    def replace(self, **changes) -> "Options":
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise KeyError(f"no options {unknown}")
        return Options({**self._values, **changes})

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{name}={value!r}" for name, value in self._values.items()) + ")"


@dataclass(frozen=True)
class Table:
    """A trainer's options in validation order, and the ``rules`` that run after every option's
    constraint, in order (each gets the values checked so far and returns the entries it derives,
    which later rules see)."""

    options: tuple
    rules: tuple = ()

    def __post_init__(self):
        names = self.names
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"options {repeated} appear twice in one table")

    def __getitem__(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    @property
    def names(self) -> tuple:
        return tuple(option.name for option in self.options)

    def arguments(self, given: Mapping) -> dict:
        """The table's options among ``given`` (a constructor's ``locals()``)."""
        return {name: given[name] for name in self.names}

    @property
    def defaults(self) -> Options:
        """Every option's default (``table.defaults.epochs``)."""
        return Options({option.name: option.default for option in self.options})


def validate(table: Table, values: Mapping) -> Options:
    """``values`` (by option name; a missing one takes its default) checked against ``table``:
    each option's constraint in table order, then the table's rules.  Returns the validated
    Options (the rules' derived entries included); raises what the first failing check raises
    (ValueError naming the value and what is allowed), or TypeError for a name the table lacks."""
    unknown = sorted(set(values) - {option.name for option in table.options})
    if unknown:
        raise TypeError(f"unknown options {unknown}")
    checked = {option.name: option.constraint(option.name, values.get(option.name, option.default))
               for option in table.options}
    for rule in table.rules:
        checked.update(rule(checked))
    return Options(checked)


def defaults_table(table: Table) -> str:
    """``table`` as a markdown table: option, allowed values, default, where it goes."""
    rows = ["| option | allowed | default | goes to |", "|---|---|---|---|"]
    rows += [f"| `{option.name}` | {option.constraint} | `{option.default!r}` | {option.goes} |"
             for option in table.options]
    return "\n".join(rows)
