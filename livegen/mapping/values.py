"""Values in mapping rules: literals and ``{placeholder}`` templates, coerced to a parameter's kind."""

from __future__ import annotations

import math
import string
from typing import Any

from livegen.request import LAUNCHES


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _placeholders(template: str) -> list[str] | None:
    """Field names used by a template, or None if it is malformed."""
    try:
        names = []
        for _lit, fname, _spec, _conv in string.Formatter().parse(template):
            if fname is not None:
                names.append(fname)
        return names
    except ValueError:
        return None


class _SafeFormat(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def _whole(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v


def _coerce(v: Any, kind: str) -> Any:
    if v is None:
        return None
    if kind == "str":
        return str(v)
    if kind == "launch":
        if v not in LAUNCHES:
            raise ValueError(f"launch must be one of {', '.join(LAUNCHES)}, not {v!r}")
        return v
    if kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            return v != 0
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return v.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"expected true or false, got {v!r}")
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {v!r}")
    if kind == "int":
        if f != int(f):
            raise ValueError(f"expected a whole number, got {v!r}")
        return int(f)
    return f


def _render_value(spec: Any, ctx: dict[str, Any], kind: str) -> Any:
    """A literal, or a template string whose placeholders come from ``ctx``."""
    if isinstance(spec, str) and "{" in spec:
        names = _placeholders(spec) or []
        if len(names) == 1 and spec.strip() == "{" + names[0] + "}" and kind != "str":
            return _coerce(ctx[names[0]], kind)
        values = _SafeFormat({k: ("" if v is None else _whole(v)) for k, v in ctx.items()})
        return _coerce(spec.format_map(values), kind)
    return _coerce(spec, kind)
