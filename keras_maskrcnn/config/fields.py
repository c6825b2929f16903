"""Config fields: the base of every schema section, type coercion and the validation rules.

Not a paper section: the vocabulary ``schema.py`` is written in. A field is declared as
``name: type = param(default, rule, doc, source)``; the rule travels with the field, so a bad
value is reported under the field's own key without the section naming it again.

Conventions pinned here:
- A value is checked against its annotation first (``coerce``), then against the field's rules,
  then the section's ``validate()`` runs its cross-field rules.
- Lists become tuples (sections are frozen and hashable); an int is accepted where a float is
  expected, bools never count as numbers, strings are never converted, floats must be finite.
- A rule is a function ``value -> reason or None``; range rules check each element of a tuple.
  ``None`` (an optional field left empty) is never passed to a rule.
- ``ConfigError`` keys are relative to the section raising them; loading.py prefixes the path.
- A section with ``validated_by_parent = True`` leaves its ``validate()`` to the section holding
  it (``ModelConfig`` runs the cross-field rules of the active architecture's sections only);
  its fields' types and rules are checked in any case.
- Messages show values through ``brief`` (at most ~80 characters): a huge value never floods
  the terminal.
- Every int lies in int64 (TensorFlow's and NumPy's widest); a field's rule bounds it further.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import typing
from typing import Any, Callable, Dict, Literal, Optional, Tuple, Union

Rule = Callable[[Any], Optional[str]]

# Where a default comes from (the ``source`` of a model field).
TORCHVISION = "torchvision"
PAPER = "paper"
DETECTRON = "Detectron"
OURS = "ours"
YOLACT = "YOLACT"  # Bolya et al. 2019 or its reference code (dbolya/yolact)


class ConfigError(ValueError):
    """A bad config: ``str(err)`` is ``"<source>: <dotted.key>: <reason>"``."""

    def __init__(self, reason: str, key: Optional[str] = None, source: Optional[str] = None):
        self.reason, self.key, self.source = reason, key, source
        super().__init__(": ".join(p for p in (source, key, reason) if p))


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 3
_REPR.maxlevel = 2
INT64_MAX = 2**63 - 1


def brief(value) -> str:
    """``repr(value)`` cut to about 80 characters (nested and long values elided with ...)."""
    if type(value) is int and value.bit_length() > 4000:  # repr would be slow or fail
        return f"<an int of {value.bit_length()} bits>"
    return _REPR.repr(value)


# ----------------------------------------------------------------------------- declaring fields
def param(default, rule: Union[Rule, Tuple[Rule, ...], None] = None, doc: str = "",
          source: Optional[str] = None, from_bool: Optional[Tuple[str, str]] = None):
    """A schema field: its default, validation rule(s), meaning and where the value comes from.

    ``from_bool = (false_value, true_value)`` maps a YAML boolean to a string choice (YAML 1.1
    reads a bare ``on``/``off`` as true/false).
    """
    rules = () if rule is None else rule if isinstance(rule, tuple) else (rule,)
    metadata = {"rules": rules, "doc": doc, "source": source, "from_bool": from_bool}
    return dataclasses.field(default=default, metadata=metadata)


def section(factory: Callable[[], Any], doc: str = ""):
    """A nested section field, defaulting to ``factory()``."""
    return dataclasses.field(default_factory=factory,
                             metadata={"rules": (), "doc": doc, "source": None,
                                       "from_bool": None})


# ----------------------------------------------------------------------------- rules
def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi == math.inf:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def in_range(lo, hi=math.inf, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """The value (or each element of a tuple) lies in the interval lo..hi."""
    interval = _interval(lo, hi, lo_open, hi_open)

    def rule(value):
        for v in value if isinstance(value, tuple) else (value,):
            bad = v <= lo if lo_open else v < lo
            bad = bad or (v >= hi if hi_open else v > hi)
            if bad:
                return f"must be {interval}, got {brief(v)}"
        return None

    rule.__doc__ = f"must be {interval}"
    return rule


def at_least(lo) -> Rule:
    return in_range(lo)


def non_empty(value) -> Optional[str]:
    """A list with at least one element."""
    return None if len(value) > 0 else "must not be empty"


positive = in_range(0, lo_open=True)
non_negative = in_range(0)
unit = in_range(0, 1)  # probabilities, IoU and score thresholds


def check(obj, name: str, rule: Rule) -> None:
    """Applies ``rule`` to field ``name`` of ``obj``: for rules whose bounds are other fields."""
    reason = rule(getattr(obj, name))
    if reason:
        raise ConfigError(reason, name)


def require(cond: bool, key: str, reason: str) -> None:
    if not cond:
        raise ConfigError(reason, key)


# ----------------------------------------------------------------------------- type checking
@functools.lru_cache(maxsize=None)
def field_types(cls) -> Dict[str, Any]:
    """Evaluated annotations of a section class."""
    return typing.get_type_hints(cls)


def is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return "null or " + type_name(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list of {len(args)} {type_name(args[0])}"
    if is_section(tp):
        return tp.__name__
    return {bool: "bool", int: "int", float: "float", str: "string"}[tp]


def coerce(value, tp, key: str):
    """Checks ``value`` against annotation ``tp``; returns it normalised (lists -> tuples,
    int -> float for float fields). Raises ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        try:
            return None if value is None else coerce(value, inner, key)
        except ConfigError as e:
            if e.key != key:  # an element of a list: keep the inner message
                raise
            raise ConfigError(f"expected {type_name(tp)}, got {type(value).__name__} "
                              f"{brief(value)}", key) from None
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            types = [args[0]] * len(value)
        elif len(value) == len(args):
            types = list(args)
        else:
            raise ConfigError(f"expected {type_name(tp)}, got {len(value)} items", key)
        return tuple(coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, types)))
    ok = False
    if origin is Literal:
        ok = any(type(value) is type(a) and value == a for a in args)
    elif is_section(tp):
        ok = isinstance(value, tp)
    elif tp is float and type(value) in (int, float):
        ok, value = math.isfinite(value), float(value)
    elif tp in (bool, int, str):
        ok = type(value) is tp
        if tp is int and ok and abs(value) > INT64_MAX:
            raise ConfigError(f"expected an int in int64 (at most {INT64_MAX} in size), "
                              f"got {brief(value)}", key)
    if not ok:
        kind = "a finite float" if tp is float and type(value) is float else type_name(tp)
        raise ConfigError(f"expected {kind}, got {type(value).__name__} {brief(value)}", key)
    return value


class Section:
    """Base of every config dataclass: type-checks and normalises the fields after __init__
    (also for configs built in Python), applies each field's rules, then the section's
    ``validate`` (unless ``validated_by_parent``: then the parent calls ``validate_section``)."""

    validated_by_parent = False  # class attribute, not a field

    def __post_init__(self):
        fields = dataclasses.fields(self)
        for f in fields:
            value = getattr(self, f.name)
            from_bool = f.metadata.get("from_bool")
            if from_bool and type(value) is bool:
                value = from_bool[value]
            value = coerce(value, field_types(type(self))[f.name], f.name)
            object.__setattr__(self, f.name, value)  # frozen: normalise in place
        for f in fields:
            value = getattr(self, f.name)
            for rule in f.metadata.get("rules", ()) if value is not None else ():
                reason = rule(value)
                if reason:
                    raise ConfigError(reason, f.name)
        if not self.validated_by_parent:
            self.validate()

    def validate_section(self, name: str) -> None:
        """Runs the cross-field rules of the sub-section ``name``; errors keyed ``name.key``."""
        try:
            getattr(self, name).validate()
        except ConfigError as e:
            raise ConfigError(e.reason, f"{name}.{e.key}" if e.key else name) from None

    def validate(self) -> None:
        """Cross-field checks; raise ConfigError with the field name (relative to this
        section)."""
