"""Helpers both operators share: what is known at parse time, and rendered lists."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from typing import Any

from airflow_provider_cutout.api.models import ImageEditRequest
from airflow_provider_cutout.exceptions import InvalidInputError

_PLACEHOLDERS = {
    "prompt": "placeholder prompt",
    "image_urls": ["https://placeholder.invalid/image.png"],
    "model": "gpt-image-1",
    "aspect_ratio": "original",
}


def is_dynamic(value: Any) -> bool:
    """Whether a value is only known at run time: an XComArg, or a string with Jinja in it."""
    if hasattr(value, "resolve"):  # XComArg, MappedArgument
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(is_dynamic(item) for item in value)
    if isinstance(value, dict):
        return any(is_dynamic(item) for item in value.values())
    return False


def check_static(owner: str, **values: Any) -> None:
    """Validate at DAG parse time what is already known, without any network call.

    Values known only at run time are replaced by valid placeholders; plain-http loopback URLs are
    let through here and checked against the connection's base URL at run time.

    :raises InvalidInputError: naming the task, the field, the value and the fix.
    """
    if all(is_dynamic(v) for v in values.values()):
        return
    args = {name: _PLACEHOLDERS[name] if is_dynamic(v) else v for name, v in values.items()}
    try:
        ImageEditRequest.build(**args, base_url="http://127.0.0.1")
    except ValueError as err:
        raise InvalidInputError(f"{owner}: {err}") from None


def as_list(value: Any) -> Any:
    """Normalise a rendered list (``image_urls``, batch ``items``): a list rendered to text by Jinja
    becomes a list again, and a lazy XCom sequence from mapped upstream tasks a plain list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            for parse in (json.loads, ast.literal_eval):
                try:
                    return list(parse(text))
                except (ValueError, SyntaxError, TypeError):
                    continue
        return value
    if isinstance(value, Sequence) and not isinstance(value, (list, tuple)):
        return list(value)
    return value
