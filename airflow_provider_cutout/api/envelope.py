"""The API's answer envelope: ``{"code", "data", "msg", "requestId"}`` read into data or into the
exception it means. The envelope decides, not the HTTP status: HTTP 200 with a non-zero ``code`` is an
error, and an HTTP error status is an error whatever the body says."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from airflow_provider_cutout.exceptions import (
    AuthenticationError,
    BadRequestError,
    CutoutAPIError,
    InsufficientCreditsError,
    RateLimitError,
    ServerError,
)

INSUFFICIENT_CREDITS_CODE = 1001
CHARGED_NOTE = "; the edit may have been charged, check the account before re-running"
#: 5xx answers that say the request was not processed, when they come from the API itself (its JSON envelope)
#: or ask to come back later (``Retry-After``). Any other 5xx (500, a gateway's 502 or 504, a CDN's 52x, a
#: proxy's bare 503 page) may come after the API did the edit and charged it (docs/errors.md).
REFUSED_5XX = frozenset({501, 503, 505})


def refused(answer: AnswerLike) -> bool:
    """Whether an error answer says the request was not processed, so that sending it again is safe."""
    status = answer.status_code
    if 400 <= status < 500:
        return True
    return status in REFUSED_5XX and (bool(_envelope(answer)) or "Retry-After" in answer.headers)


def maybe_processed(answer: AnswerLike) -> bool:
    """Whether an HTTP error answer may have come after the request was processed (and an edit charged)."""
    return answer.status_code >= 500 and not refused(answer)


class AnswerLike(Protocol):
    """What the envelope parser reads: an ``Answer`` or a ``requests.Response``."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


@dataclass(frozen=True)
class Answer:
    """An API answer read whole, and the attempt that got it."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    attempts: int = 1


def parse_envelope(response: AnswerLike) -> Any:
    """Return the ``data`` of a successful envelope, or raise the matching ``CutoutError``.

    The envelope decides, not the HTTP status: HTTP 200 with a non-zero ``code`` is an error.
    """
    return parse(response)[0]


def parse(answer: AnswerLike, *, edit: bool = False, attempts: int = 1) -> tuple[Any, str | None]:
    """``parse_envelope``, also returning the envelope's ``requestId``. With ``edit``, a 2xx answer that
    is not a usable envelope means the edit may have been charged: not retryable, ``maybe_charged``."""
    status, body = answer.status_code, _envelope(answer)
    code, message = body.get("code"), str(body.get("msg") or "").strip()
    request_id = body.get("requestId") or answer.headers.get("X-Request-Id")
    info: dict[str, Any] = {"code": code, "http_status": status, "request_id": request_id,
                            "server_message": message, "attempts": attempts}
    if status in (401, 403):
        raise AuthenticationError(f"Cutout rejected the API key: {message or 'unauthorized'}; check the API Key "
                                  "(password) of the cutout connection", **info)
    if status == 429:
        raise RateLimitError(f"Cutout rate limit reached: {message or 'too many requests'}",
                             retry_after=retry_after(answer.headers), **info)
    if status >= 500 and edit and maybe_processed(answer):  # never resent by the provider itself
        raise ServerError(f"Cutout answered HTTP {status} ({message or _snippet(answer)}): a server or gateway "
                          "error that may come after the edit was done, so it is not sent again"
                          + CHARGED_NOTE, retryable=False, maybe_charged=True, **info)
    if status >= 500:
        raise ServerError(f"Cutout server error: {message or _snippet(answer)}", **info)
    if not body:
        if edit and 200 <= status < 300:  # the edit may have been done: never resent
            info.update(retryable=False, maybe_charged=True)
        raise ServerError(f"Cutout answered HTTP {status} with a body that is not the API's JSON envelope: "
                          f"{_snippet(answer)!r}" + (CHARGED_NOTE if info.get("maybe_charged") else ""), **info)
    if code == 0 and 200 <= status < 300:
        return body.get("data"), request_id
    if code == INSUFFICIENT_CREDITS_CODE:
        raise InsufficientCreditsError(f"Cutout: {message or 'insufficient balance'}; top up the account's credits",
                                       **info)
    if status in (400, 422):
        raise BadRequestError(f"Cutout rejected the request: {message or 'bad request'}", **info)
    raise CutoutAPIError(f"Cutout API error: {message or 'no message'}", **info)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date), or ``None``."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, moment.timestamp() - time.time())


def _envelope(answer: AnswerLike) -> dict[str, Any]:
    try:
        body = json.loads(answer.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) and "code" in body else {}


def _snippet(answer: AnswerLike) -> str:
    text = answer.content[:160].decode("utf-8", errors="replace").replace("\n", " ").strip()
    return text or "<empty body>"
