"""The one exception tree of the provider.

``CutoutError`` is the root. Every class says through ``retryable`` whether trying the same call
again can help; operators use it to decide between failing for good and letting Airflow retry.
No exception ever holds the API key: messages are built from the response, never from headers.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "CatalogStateError",
    "ClaimedElsewhereError",
    "CutoutAPIError",
    "CutoutConnectionError",
    "CutoutError",
    "CutoutTimeoutError",
    "FailedEditError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "MissingConnectionError",
    "RateLimitError",
    "ResultDownloadError",
    "ReviewRejectedError",
    "ServerError",
    "StoppedError",
    "fail_or_retry",
]


class CutoutError(Exception):
    """Root of every error raised by the provider.

    :param message: what went wrong, with the value and the fix where there is one.
    :param retryable: overrides the class's ``retryable`` for this instance.
    :param attempts: how many attempts were made.
    :param maybe_charged: an edit may have been charged although no result came back.
    """

    retryable: bool = False
    #: ``True`` when an edit may have been carried out and charged although no result came back.
    maybe_charged: bool = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, attempts: int = 1, maybe_charged: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts
        self.maybe_charged = maybe_charged
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.message} (after {self.attempts} attempts)"
        return self.message


class InvalidInputError(CutoutError, ValueError):
    """The request was rejected before any HTTP call: nothing was sent, nothing was charged."""


class MissingConnectionError(InvalidInputError):
    """The ``cutout`` connection is not defined, or is of another type; nothing was sent."""


class CatalogStateError(CutoutError):
    """The output folder's claims or manifest cannot be trusted: a store without exclusive create, a
    heartbeat that cannot be written. Nothing more is sent; fix the storage and run again."""


class ClaimedElsewhereError(CutoutError):
    """Another live run holds some items and did not store them in time; a retry waits again."""

    retryable = True


class StoppedError(CutoutError):
    """The task was told to stop (``on_kill``: SIGTERM, ``execution_timeout``, marked failed) while a call
    waited to be retried: nothing more was sent. ``maybe_charged`` when an earlier attempt may have been."""


class ReviewRejectedError(CutoutError):
    """A reviewer answered a review gate with "Reject run": nothing is published, and the run shows it (failed)."""


class ResultDownloadError(CutoutError):
    """The edited image could not be fetched or stored (expired URL, not an image, too large). ``gone``: the
    result URL answered that the result is no longer there (403, 404 or 410), the one answer after which a
    lost result is edited again."""

    def __init__(self, message: str, *, gone: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.gone = gone


class CutoutConnectionError(CutoutError):
    """No usable answer came back: the connection failed or was dropped.

    ``request_sent`` tells whether the server may have received (and charged for) the request.
    """

    retryable = True

    def __init__(self, message: str, *, request_sent: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.request_sent = request_sent


class CutoutTimeoutError(CutoutConnectionError):
    """The connection or the answer took longer than the configured timeout."""


class CutoutAPIError(CutoutError):
    """The API answered with an error envelope or an error status.

    :param code: the envelope's ``code``; :param http_status: the HTTP status;
    :param request_id: the API's ``requestId``; :param server_message: the envelope's ``msg``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        server_message: str | None = None,
        **kwargs: object,
    ) -> None:
        details = ", ".join(
            f"{name}={value}"
            for name, value in (("code", code), ("http_status", http_status), ("request_id", request_id))
            if value is not None
        )
        super().__init__(f"{message} [{details}]" if details else message, **kwargs)  # type: ignore[arg-type]
        self.server_message = message if server_message is None else server_message
        self.code = code
        self.http_status = http_status
        self.request_id = request_id


class BadRequestError(CutoutAPIError):
    """The API rejected the request as invalid; fix the input, retrying cannot help."""


class AuthenticationError(CutoutAPIError):
    """The API key is missing, wrong or not allowed (HTTP 401/403): fix the connection's API Key."""


class InsufficientCreditsError(CutoutAPIError):
    """Code 1001: the account has too few credits; top up before running again."""


class FailedEditError(CutoutAPIError):
    """The API accepted the call but the edit failed (``data.status == 0``)."""

    def __init__(self, message: str, *, fail_reason: str | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.fail_reason = fail_reason


class RateLimitError(CutoutAPIError):
    """HTTP 429: too many requests; waiting helps."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(CutoutAPIError):
    """HTTP 5xx or a body that is not the API's JSON envelope; usually transient."""

    retryable = True


def fail_or_retry(err: CutoutError, log: logging.Logger | logging.LoggerAdapter[Any] | Any) -> NoReturn:
    """Apply the failure policy: transient errors re-raise so the task's own ``retries`` apply;
    errors that a retry cannot fix fail the task at once, since each retry could cost credits."""
    try:  # Airflow is imported here only: the tree itself stays free of it
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # Airflow < 3.2
        from airflow.exceptions import AirflowFailException  # type: ignore[no-redef,attr-defined]

    if err.retryable:
        log.warning("Transient Cutout error (%s): raising so the task's own retries apply: %s",
                    type(err).__name__, err)
        raise err
    log.error("Cutout error that a retry cannot fix (%s): failing without Airflow retries: %s",
              type(err).__name__, err)
    raise AirflowFailException(f"{type(err).__name__}: {err}") from err
