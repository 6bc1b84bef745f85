"""Typed validation from type hints: one sentence per wrong value, the same rules for config files, ``--set``
overrides and registry keyword arguments.

Rules (stricter than Python, which lets ``True`` pass as ``1``): a boolean is never a number; an ``int`` field
takes integers, and floats only when they are whole (``1e5`` from a command line); a ``float`` field takes
integers and floats (not NaN unless allowed by the caller's own range checks); a ``str`` field takes strings only;
``tuple[float, float]`` takes a sequence of exactly two; ``Literal`` values are compared exactly; ``X | None``
takes None. ``Any`` and unannotated values are not checked. Converted values are returned (list → tuple, whole
float → int, int → float), so a checked config holds the types its annotations promise.

We use a small validator of our own rather than pydantic because the same checks must also run over the
keyword arguments of registry builders (their signatures' hints), the messages must name the dotted config key
in one sentence, and whole floats must count as integers (``--set max_steps=1e5``); pydantic's strict mode
rejects those and its lax mode turns ``"no"`` into ``False``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

__all__ = ["TypeCheckError", "check_type", "check_dataclass", "check_call_arguments", "describe_type"]


class TypeCheckError(TypeError, ValueError):
    """A value does not have the annotated type (a ``TypeError`` and a ``ValueError``, so either handler sees it)."""


_NONE = type(None)


def describe_type(tp: Any) -> str:
    """Words for a type: ``int`` → 'an integer', ``tuple[float, float]`` → 'a list of 2 numbers' ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "a boolean (true or false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is _NONE or tp is None:
        return "null"
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not _NONE]
        text = " or ".join(parts)
        return text + " or null" if _NONE in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if args and len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values"
    if origin in (list, Sequence) or tp is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    if isinstance(tp, type):
        return f"a {tp.__name__}"
    return str(tp)


def _plural(tp: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(tp, describe_type(tp))


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return f"{list(value)!r} ({len(value)} item{'s' if len(value) != 1 else ''})"
    return repr(value)


def check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to ``tp`` by the rules above, or :class:`TypeCheckError` naming ``where``."""
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        for option in args:
            if option is _NONE:
                continue
            try:
                return check_type(value, option, where)
            except TypeCheckError:
                continue
        raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
    if origin is Literal:
        for option in args:
            if value == option and type(value) is type(option):
                return value
        raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise TypeCheckError(f"{where} must be an integer, got {_shown(value)}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeCheckError(f"{where} must be a number, got {_shown(value)}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeCheckError(f"{where} must be a string, got {_shown(value)}.")
    if tp is _NONE or tp is None:
        if value is None:
            return None
        raise TypeCheckError(f"{where} must be null, got {_shown(value)}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
        return tuple(check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
        item = args[0] if args else Any
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeCheckError(f"{where} must be a mapping, got {_shown(value)}.")
        key_t, val_t = args if len(args) == 2 else (Any, Any)
        return {check_type(k, key_t, f"{where} key"): check_type(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return check_dataclass(value, where)
        raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
    if tp is os.PathLike or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, (str, os.PathLike)):
            return value
        raise TypeCheckError(f"{where} must be a path, got {_shown(value)}.")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise TypeCheckError(f"{where} must be {describe_type(tp)}, got {_shown(value)}.")
    return value  # a typing construct we do not check (Callable, TypeVar ...)


def check_dataclass(obj: Any, where: str = "") -> Any:
    """Check (and convert in place) every field of a dataclass instance against its type hints; returns ``obj``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        checked = check_type(value, hints.get(f.name, Any), name)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)
    return obj


def check_call_arguments(func: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Check keyword arguments against ``func``'s annotated parameters (others pass unchecked); returns them,
    converted. Unknown names are left to the caller (a ``**kwargs`` builder may forward them)."""
    try:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
    except (TypeError, ValueError, NameError):
        return dict(kwargs)
    out = dict(kwargs)
    for name, value in kwargs.items():
        param = signature.parameters.get(name)
        if param is None or name not in hints:
            continue
        checked = check_type(value, hints[name], f"{what}: {name}")
        if isinstance(checked, (int, float)) and not isinstance(checked, bool):
            out[name] = checked  # numbers take their declared type; containers are passed as given
    return out


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
