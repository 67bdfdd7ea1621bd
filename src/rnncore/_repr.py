"""One `repr` for every configurable object: its constructor call, with the required
arguments by position and the others by name only where they differ from the defaults,
so that the text can be pasted back to build the same configuration."""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def _is_default(name: str, value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if name == "dtype":
        # the config spells a dtype by name ('float32'), the signature by type (np.float32)
        return bool(np.dtype(value) == np.dtype(default))
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, (tuple, list)) and isinstance(default, (tuple, list)):
        return tuple(value) == tuple(default)
    if isinstance(value, numbers.Real) and isinstance(default, numbers.Real):
        return value == default
    return type(value) is type(default) and value == default


def indent(text: str, prefix: str = "  ") -> str:
    """`text` with every line after the first indented: a nested multi-line repr."""
    return text.replace("\n", "\n" + prefix)


def call_repr(obj: Any, config: Mapping[str, Any], leading: Iterable[str] = ()) -> str:
    """`Name(required..., name=value...)` from `config` (constructor arguments by name),
    in the order of the constructor's signature; `leading` are ready-made texts for the
    first positional arguments (an optimizer's modules), which `config` does not hold."""
    parameters = inspect.signature(type(obj).__init__).parameters
    parts = list(leading)
    for name, parameter in parameters.items():
        if name not in config:
            continue
        value = config[name]
        if parameter.default is inspect.Parameter.empty:
            parts.append(indent(repr(value)))
        elif not _is_default(name, value, parameter.default):
            parts.append(f"{name}={indent(repr(value))}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class ConfigRepr:
    """`repr` from `get_config()` and the constructor's signature."""

    def __repr__(self) -> str:
        return call_repr(self, self.get_config())  # type: ignore[attr-defined]
