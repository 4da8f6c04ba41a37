"""Argument type checks at hvcore's public boundary, shared by every backend and the VMM layer.

Each public method of ``Hypervisor``, ``VM``, ``VCPU``, ``Machine`` and ``Bus`` checks its
arguments with one call at its start, so a str, None or float where an int goes (or the wrong
state class) raises :class:`hvcore.InvalidType` naming the argument, identically on every
backend, instead of a ``TypeError`` or ``AttributeError`` from deep inside. A bool is not an int
here (``create_vcpu(True)`` is a mistake, not vCPU 1). Ranges of scalar arguments (ids,
vectors, sizes) are checked with ``low`` / ``high``; the ranges of state-struct fields are the
setters' own checks.

State values (``Regs``, ``Sregs``, ...) are checked field by field against their annotations: an
int field takes an int, a ``tuple[int, int, int, int]`` exactly four ints, a nested dataclass
its own class. The sizes of bytes fields and of variable-length tuples are the range checks'
(:mod:`hvcore.state_checks`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from functools import cache
from typing import Any, TypeVar

from hvcore.errors import InvalidArgument, InvalidType

__all__ = [
    "check_bytes",
    "check_data",
    "check_enum",
    "check_flag",
    "check_implements",
    "check_instance",
    "check_int",
    "check_int_list",
    "check_int_mapping",
    "check_instances",
    "check_optional_int",
    "check_str",
    "check_timeout",
]

T = TypeVar("T")
E = TypeVar("E", bound=IntEnum)
_Checker = Callable[[str, object, str], None]
_BYTES_LIKE = (bytes, bytearray, memoryview)


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _is_int(value: object) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def check_int(name: str, value: object, operation: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (a bool or any other type: InvalidType); with ``low`` / ``high``, in ``[low, high)``."""
    if not _is_int(value):
        raise InvalidType(f"{name} must be an int, not {_describe(value)}", operation=operation)
    assert isinstance(value, int)
    if (low is not None and value < low) or (high is not None and value >= high):
        lowest = "" if low is None else f"{low:#x}"
        highest = "" if high is None else f"{high - 1:#x}"
        raise InvalidArgument(f"{name} {value:#x} is out of range {lowest}..{highest}", operation=operation)
    return value


def check_optional_int(name: str, value: object, operation: str) -> int | None:
    """None, or an int as :func:`check_int`."""
    return None if value is None else check_int(name, value, operation)


def check_flag(name: str, value: object, operation: str) -> bool:
    """A yes/no argument: a bool, or the ints 0 and 1 KVM's own fields take."""
    if isinstance(value, bool):
        return value
    if _is_int(value) and value in (0, 1):
        return bool(value)
    raise InvalidType(f"{name} must be a bool, not {_describe(value)}", operation=operation)


def check_enum(name: str, value: object, enum: type[E], operation: str) -> E:
    """A member of ``enum`` (or its int value): a wrong type is InvalidType, an unknown value InvalidArgument."""
    number = check_int(name, value, operation)
    try:
        return enum(number)
    except ValueError:
        choices = ", ".join(m.name for m in enum)
        raise InvalidArgument(
            f"{name} {value!r} is not a {enum.__name__}; use one of {choices}", operation=operation
        ) from None


def check_str(name: str, value: object, operation: str) -> str:
    """A str."""
    if not isinstance(value, str):
        raise InvalidType(f"{name} must be a str, not {_describe(value)}", operation=operation)
    return value


def check_bytes(name: str, value: object, operation: str) -> None:
    """Bytes, a bytearray or a memoryview."""
    if not isinstance(value, _BYTES_LIKE):
        raise InvalidType(f"{name} must be bytes, not {_describe(value)}", operation=operation)


def check_data(name: str, value: object, operation: str) -> None:
    """Bytes-like or an int (``VCPU.complete``'s answer)."""
    if not isinstance(value, _BYTES_LIKE) and not _is_int(value):
        raise InvalidType(f"{name} must be bytes or an int, not {_describe(value)}", operation=operation)


def check_timeout(name: str, value: object, operation: str) -> float | None:
    """None (no limit) or a finite number of seconds, at least 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidType(f"{name} must be a number of seconds or None, not {_describe(value)}", operation=operation)
    if not 0 <= value < 1e9 or math.isnan(value):
        raise InvalidArgument(f"{name} {value!r} must be a finite number of seconds, at least 0", operation=operation)
    return float(value)


def check_int_list(name: str, value: object, operation: str) -> list[int]:
    """An iterable of ints (not a str or bytes), as a list."""
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidType(f"{name} must be an iterable of ints, not {_describe(value)}", operation=operation)
    items = list(value)
    for item in items:
        check_int(f"{name} item", item, operation)
    return items


def check_int_mapping(name: str, value: object, operation: str) -> list[tuple[int, int]]:
    """A mapping of ints to ints, as a list of pairs."""
    if not isinstance(value, Mapping):
        raise InvalidType(f"{name} must be a mapping of ints to ints, not {_describe(value)}", operation=operation)
    items = list(value.items())
    for key, item in items:
        check_int(f"{name} key", key, operation)
        check_int(f"{name}[{key:#x}]", item, operation)
    return items


def check_instance(name: str, value: object, cls: type[T], operation: str) -> T:
    """An instance of ``cls``; a dataclass's fields are checked against their annotations, recursively."""
    if not isinstance(value, cls):
        raise InvalidType(f"{name} must be a {cls.__name__}, not {_describe(value)}", operation=operation)
    if dataclasses.is_dataclass(cls) and not _plainly_valid(cls)(value):  # the fast test failed: say why
        for field_name, checker in _field_checkers(cls):
            checker(f"{cls.__name__}.{field_name}", getattr(value, field_name), operation)
    return value


def check_implements(name: str, value: object, protocol: type, operation: str) -> None:
    """An object with what ``protocol`` (a runtime-checkable ``Protocol``) asks for."""
    if not isinstance(value, protocol):
        raise InvalidType(f"{name} must be a {protocol.__name__}, not {_describe(value)}", operation=operation)


def check_instances(name: str, value: object, classes: tuple[type[Any], ...], operation: str) -> list[Any]:
    """An iterable (not a mapping or str) of instances of ``classes``, each checked as :func:`check_instance`."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        names = " or ".join(c.__name__ for c in classes)
        raise InvalidType(f"{name} must be an iterable of {names}, not {_describe(value)}", operation=operation)
    items = list(value)
    for i, item in enumerate(items):
        cls = next((c for c in classes if isinstance(item, c)), classes[0])
        check_instance(f"{name}[{i}]", item, cls, operation)
    return items


@cache
def _plainly_valid(cls: type[Any]) -> Callable[[Any], bool]:
    """A fast test that accepts the usual valid ``cls`` (plain ints, bytes, tuples of the right length).

    Anything it refuses (also a valid int subclass, such as an IntFlag) goes through the field
    checkers, which accept it or raise the error naming the field.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    tests = [_plain_test(hints[n]) for n in names]
    ints = [n for n, t in zip(names, tests, strict=True) if t is _plain_int]
    others = [(n, t) for n, t in zip(names, tests, strict=True) if t is not _plain_int]

    def valid(value: Any) -> bool:
        return all(type(getattr(value, n)) is int for n in ints) and all(t(getattr(value, n)) for n, t in others)

    return valid


def _plain_int(value: object) -> bool:
    return type(value) is int


def _plain_test(hint: Any) -> Callable[[object], bool]:
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        item = _plain_test(args[0])
        length = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        return lambda v: type(v) is tuple and (length is None or len(v) == length) and all(item(x) for x in v)
    if hint is int:
        return _plain_int
    if hint is bytes:
        return lambda v: type(v) is bytes
    if isinstance(hint, type) and origin is None and dataclasses.is_dataclass(hint):
        inner = _plainly_valid(hint)
        return lambda v: type(v) is hint and inner(v)
    return lambda v: False  # anything else: the field checkers decide


@cache
def _field_checkers(cls: type[Any]) -> tuple[tuple[str, _Checker], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _checker_for(hints[f.name])) for f in dataclasses.fields(cls))


def _checker_for(hint: Any) -> _Checker:
    """What a field annotated ``hint`` must hold."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_checker(_checker_for(args[0]), None, _hint_name(args[0]))
        item_checkers = [_checker_for(a) for a in args]
        return _tuple_checker(item_checkers[0], len(args), _hint_name(args[0]))
    if origin in (typing.Union, types.UnionType):
        return _union_checker(typing.get_args(hint))
    if hint is bool:
        return _bool_field
    if isinstance(hint, type) and issubclass(hint, int):
        return _int_field
    if hint is bytes:
        return _bytes_field
    if hint is str:
        return check_str  # type: ignore[return-value]
    if isinstance(hint, type) and origin is None:
        return _instance_checker(hint)
    return _unchecked  # Literal, Mapping, Callable...: the class's own code takes care


def _unchecked(name: str, value: object, operation: str) -> None:
    """No check for an annotation this module does not interpret."""


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _int_field(name: str, value: object, operation: str) -> None:
    check_int(name, value, operation)


def _bool_field(name: str, value: object, operation: str) -> None:
    check_flag(name, value, operation)


def _bytes_field(name: str, value: object, operation: str) -> None:
    if not isinstance(value, _BYTES_LIKE):
        raise InvalidType(f"{name} must be bytes, not {_describe(value)}", operation=operation)


def _instance_checker(cls: type[Any]) -> _Checker:
    def check(name: str, value: object, operation: str) -> None:
        check_instance(name, value, cls, operation)

    return check


def _tuple_checker(item: _Checker, length: int | None, item_name: str) -> _Checker:
    def check(name: str, value: object, operation: str) -> None:
        if not isinstance(value, tuple | list) or (length is not None and len(value) != length):
            count = "" if length is None else f"{length} "
            raise InvalidType(
                f"{name} must be a tuple of {count}{item_name} values, not {_describe(value)}", operation=operation
            )
        for i, element in enumerate(value):
            item(f"{name}[{i}]", element, operation)

    return check


def _union_checker(options: tuple[Any, ...]) -> _Checker:
    classes = tuple(o for o in options if isinstance(o, type))
    checkers = tuple(_checker_for(c) for c in classes)

    def check(name: str, value: object, operation: str) -> None:
        for cls, checker in zip(classes, checkers, strict=True):
            if isinstance(value, cls):
                checker(name, value, operation)
                return
        names = " or ".join(c.__name__ for c in classes)
        raise InvalidType(f"{name} must be a {names}, not {_describe(value)}", operation=operation)

    return check
