"""How values and lists of problems appear in the provider's messages, and how a damaged field of a record
reads: one way, everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


def number(value: Any) -> float:
    """A field of a manifest entry or a decision read as a number: a damaged one (a string, nothing, an
    infinity) counts 0, it does not fail a reader or a page."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    try:
        found = float(value)
    except OverflowError:
        return 0.0
    return found if math.isfinite(found) else 0.0


def plural(count: int, one: str, many: str | None = None, *, grouped: bool = False) -> str:
    """``count`` and the word (or words) that agree with it: ``plural(1, "item")`` is ``"1 item"``,
    ``plural(2, "item")`` ``"2 items"``, ``plural(1, "item was", "items were")`` ``"1 item was"``.

    :param many: the form for any count but 1 (``one`` and an ``s`` unless given).
    :param grouped: write the count with thousands separators (``10,000 items``).
    """
    shown = f"{count:,}" if grouped else str(count)
    return f"{shown} {one if count == 1 else (many if many is not None else one + 's')}"


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_of(lines: Sequence[str], limit: int = 50, sep: str = "\n  ") -> str:
    """The first ``limit`` of ``lines`` joined by ``sep``, then how many more there are."""
    shown = sep.join(lines[:limit])
    return shown + (f"{sep}... and {len(lines) - limit} more" if len(lines) > limit else "")


def format_validation_error(err: ValidationError, *, unknown: str = "is not a known field",
                            name_all: bool = False) -> str:
    """One readable line per problem: our validators already name the field and the fix; pydantic's
    own checks (types, bounds) get the field and the value in front.

    :param unknown: what to say of a field that does not exist.
    :param name_all: put the field and the value in front of every problem (validators that do not name them).
    """
    lines = []
    for item in err.errors(include_url=False):
        msg = str(item.get("msg", "")).removeprefix("Value error, ")
        loc = ".".join(str(part) for part in item.get("loc", ()))
        kind = item.get("type")
        if kind == "missing":
            msg = f"{loc} is required"
        elif kind == "extra_forbidden":
            msg = f"{loc} {unknown}"
        elif kind != "value_error" or name_all:
            msg = f"{loc}={item.get('input')!r}: {msg[:1].lower()}{msg[1:]}"
        lines.append(msg)
    return "; ".join(lines)
