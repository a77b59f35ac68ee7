"""One declaration per config field: type, range, choices, default and help, written once.

A config dataclass declares each setting with :func:`option` (a ``dataclasses.field`` carrying a
:class:`Spec`); from that one declaration come the config's own validation (:func:`check_fields`),
its command-line flags (:func:`add_flags`, with the default shown in ``--help``) and a study kind's
parameter table (``prunelab.study.method_tools.schema_params``), so a setting has one name, one
default and one message everywhere. The idea is scikit-learn's ``_parameter_constraints``
(``sklearn/utils/_param_validation.py``): one table per estimator yields every error message.

Names: the field name is the YAML key; the flag is ``--`` plus the name with ``-`` for ``_``
(``channels_per_prune`` is ``--channels-per-prune``) unless the spec names another ``flag``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.errors import PrunelabError, check_choice

KEY = "prunelab"
KINDS = (int, float, str, bool, list)


@dataclass(frozen=True)
class Spec:
    """What one setting accepts. ``kind``: int, float, str, bool or list (of names); ``choices`` (a
    sequence, or a function giving the registered names); ``lo`` / ``hi`` bounds (``lo_open`` /
    ``hi_open`` exclude them); ``optional``: None is accepted; ``valid``: how a message says what is
    valid (derived when empty); ``flag`` / ``metavar`` / ``dest``: the command-line spelling."""

    kind: type
    help: str
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False
    valid: str = ""
    flag: str | None = None
    metavar: str | None = None
    #: the argparse attribute, where it is not the field's name
    dest: str | None = None
    #: a further rule a value must meet (beyond kind, range and choices), said in ``valid``
    rule: Callable[[Any], bool] | None = None

    def options(self) -> tuple[Any, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def describe(self, null: bool = True) -> str:
        """What is valid, in words: ``one of a, b``, ``a whole number >= 1``, ``null or ...`` (``null``:
        say that None is valid too, for an optional setting)."""
        if self.valid:
            text = self.valid
        elif self.options() is not None:
            text = ("a list of " if self.kind is list else "one of ") + ", ".join(str(c) for c in self.options())
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is list:
            text = "a list of names"
        else:
            text = "a whole number" if self.kind is int else "a number" if self.kind is float else "a string"
            if self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {self.lo:g}"
            if self.hi is not None:
                text += f"{' and' if self.lo is not None else ''} {'<' if self.hi_open else '<='} {self.hi:g}"
        return f"null or {text}" if self.optional and null else text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is list:
            choices = self.options()
            return isinstance(value, list | tuple) and all(
                isinstance(v, str) and v and (choices is None or v in choices) for v in value)
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and (not isinstance(value, int | float) or not math.isfinite(value)):
            return False
        if self.kind is str and not isinstance(value, str):
            return False
        choices = self.options()
        if choices is not None:
            return value in choices
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return self.rule is None or bool(self.rule(value))

    def check(self, name: str, value: Any) -> Any:
        """``value`` if accepted, else one line: ``NAME must be VALID, got VALUE`` (for choices, the
        unknown-name message of :func:`prunelab.errors.check_choice`)."""
        choices = self.options()
        if choices is not None and isinstance(value, str) and value not in choices:
            check_choice(name, value, choices)
        if choices is not None and self.kind is list and isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, str) and item:
                    check_choice(name, item, choices)
        if not self.accepts(value):
            raise PrunelabError(f"{name} must be {self.describe(null=value is None)}, got {value!r}")
        return value


def option(default: Any, help: str, kind: type | None = None, **spec: Any):
    """A dataclass field whose :class:`Spec` is ``kind`` (default: the default's type) and ``spec``."""
    if kind is None:
        kind = list if isinstance(default, list | tuple) else type(default)
    if kind not in KINDS:
        raise TypeError(f"option kind must be one of {KINDS}, got {kind}")
    meta = {KEY: Spec(kind, help, **spec)}
    if isinstance(default, list | tuple):
        frozen = tuple(default)
        return dataclasses.field(default=frozen, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def specs(cls) -> dict[str, tuple[Spec, Any]]:
    """``name -> (spec, default)`` of every field of ``cls`` declared with :func:`option`."""
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(KEY)
        if spec is not None:
            out[f.name] = (spec, f.default)
    return out


def label(name: str, spec: Spec) -> str:
    """How messages name a setting: its flag without the dashes (``round-to``)."""
    return (spec.flag or name.replace("_", "-")).lstrip("-")


def check_fields(obj, names: Sequence[str] | None = None) -> None:
    """Check every declared field of the dataclass instance ``obj`` (or those in ``names``)."""
    for name, (spec, _) in specs(type(obj)).items():
        if names is None or name in names:
            spec.check(label(name, spec), getattr(obj, name))


def flag(name: str, spec: Spec) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def dest(name: str, spec: Spec) -> str:
    """The argparse attribute of a setting: its name, unless the spec names another ``dest`` (so two
    configs' fields of one name, such as a pruning and a learning-rate ``schedule``, never share one)."""
    return spec.dest or name


def add_flags(container, cls, names: Sequence[str], *, defaults: dict[str, Any] | None = None,
              more_choices: dict[str, Sequence[Any]] | None = None, notes: dict[str, str] | None = None) -> None:
    """Add the command-line flags of ``cls``'s fields ``names`` to an argparse ``container``: type,
    choices, default (``defaults`` may override) and help from each field's spec. ``more_choices``:
    choices the command offers beyond the config's (a mode it hands elsewhere); ``notes``: text the
    command adds to a flag's help."""
    table = specs(cls)
    for name in names:
        spec, default = table[name]
        default = (defaults or {}).get(name, default)
        text = spec.help + ((notes or {}).get(name) or "")
        kw: dict[str, Any] = {"dest": dest(name, spec), "help": text.replace("%", "%%")}
        if spec.kind is bool:
            container.add_argument(flag(name, spec), action="store_true", default=bool(default), **kw)
            continue
        if spec.kind is list:
            kw.update(nargs="+", default=list(default or ()))
            if spec.options() is not None:
                kw["choices"] = spec.options()
            else:
                kw["metavar"] = spec.metavar or "NAME"
        else:
            kw.update(type=spec.kind, default=default)
            if spec.options() is not None:
                kw["choices"] = (*spec.options(), *(more_choices or {}).get(name, ()))
            elif spec.metavar:
                kw["metavar"] = spec.metavar
        container.add_argument(flag(name, spec), **kw)


def yaml_default(default: Any) -> Any:
    """A field default as a study parameter holds it (tuples as lists, as YAML gives them)."""
    return list(default) if isinstance(default, tuple) else default
