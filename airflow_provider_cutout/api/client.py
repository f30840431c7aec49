"""``CutoutClient``: the API's calls (edit, balance), result downloads and source inspection, over one
``Transport`` (the only place where the provider speaks HTTP)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import IO, Any

from airflow_provider_cutout.api import downloads, inspection
from airflow_provider_cutout.api.envelope import CHARGED_NOTE, parse, parse_envelope
from airflow_provider_cutout.api.governor import Governor
from airflow_provider_cutout.api.models import CreditBalance, ImageEditRequest, ImageEditResult
from airflow_provider_cutout.api.settings import ClientSettings
from airflow_provider_cutout.api.sources import Recorded, SourceInfo
from airflow_provider_cutout.api.transport import Transport
from airflow_provider_cutout.exceptions import FailedEditError, InvalidInputError, ServerError

__all__ = ["ClientSettings", "CutoutClient", "parse_envelope"]

EDIT_PATH = "/api/v1/image/edit"
BALANCE_PATH = "/api/v1/mySubscription"


class CutoutClient:
    """A pooled HTTP client for the Cutout.Pro API; build one per hook and close it when done.

    :param api_key: the key sent in the ``APIKEY`` header (never logged or put in errors).
    :param settings: timeouts, retries and pool size.
    :param logger: where retries are reported; the module logger by default.
    :param sleep: the function that waits between attempts (tests count the waits through it); by default a wait
        that ``stop`` ends.
    :param on_retry: called with the error's class name before each retry (the operators count retries).
    """

    def __init__(
        self,
        api_key: str,
        settings: ClientSettings | None = None,
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        sleep: Callable[[float], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise InvalidInputError(
                "the cutout connection has no API key: put the key in the connection's password "
                "(shown as 'API Key' in the connection form)"
            )
        self.settings = settings or ClientSettings()
        self.transport = Transport(api_key.strip(), self.settings, logger or logging.getLogger(__name__), sleep,
                                   on_retry)

    def __repr__(self) -> str:
        return f"CutoutClient(base_url={self.settings.base_url!r})"

    def __enter__(self) -> CutoutClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def on_retry(self) -> Callable[[str], None] | None:
        """Called with the error's class name before each retry."""
        return self.transport.on_retry

    @on_retry.setter
    def on_retry(self, callback: Callable[[str], None] | None) -> None:
        self.transport.on_retry = callback

    @property
    def governor(self) -> Governor:
        """How fast this client's edits are sent (one per task: its threads share it)."""
        return self.transport.governor

    @property
    def edits_stopped(self) -> threading.Event:
        """Set by ``stop`` (and by a batch that met an error every further edit would meet): no edit is sent after
        it, and every wait to send one ends; reads go on."""
        return self.transport.edits_stopped

    def close(self) -> None:
        """Close the pooled connections."""
        self.transport.close()

    def stop(self) -> None:
        """Send nothing more (the task was told to stop): an edit waiting to be retried raises ``StoppedError`` at
        once, and no edit starts after this; one in flight finishes, and reads go on. Safe from any thread."""
        self.transport.stop()

    def edit_image(self, request: ImageEditRequest, *, source_urls: list[str] | None = None) -> ImageEditResult:
        """Send one edit and return its result; raises ``FailedEditError`` when ``status`` is 0.

        :param request: a validated request (see ``ImageEditRequest.build``).
        :param source_urls: the URLs the API fetches instead of ``request.image_urls`` (signed object URLs).
        """
        payload = request.payload() if source_urls is None else {**request.payload(), "imageUrl": list(source_urls)}
        answer = self.transport.with_retries("POST", EDIT_PATH, self.transport.call_api, json=payload)
        data, request_id = parse(answer, edit=True, attempts=answer.attempts)
        where: dict[str, Any] = {"http_status": answer.status_code, "request_id": request_id,
                                 "attempts": answer.attempts}
        charged = {**where, "retryable": False, "maybe_charged": True}
        if not isinstance(data, dict):
            raise ServerError("Cutout answered success without a result object" + CHARGED_NOTE, **charged)
        try:
            result = ImageEditResult.model_validate({**data, "requestId": request_id})
        except ValueError as err:
            raise ServerError(f"Cutout answered success with a malformed result ({_first_line(err)})" + CHARGED_NOTE,
                              **charged) from None
        if result.status == 0:
            raise FailedEditError(f"Cutout could not perform the edit: {result.fail_reason or 'no reason given'}",
                                  fail_reason=result.fail_reason, code=0, **where)
        if not result.image_url:
            raise ServerError("Cutout answered a successful edit without an image URL" + CHARGED_NOTE, **charged)
        return result

    def get_credit_balance(self) -> CreditBalance:
        """Return the account's credit balance; costs no credits."""
        answer = self.transport.with_retries("GET", BALANCE_PATH, self.transport.call_api)
        data, _ = parse(answer, attempts=answer.attempts)
        try:
            return CreditBalance.model_validate(data if isinstance(data, dict) else {})
        except ValueError as err:
            raise ServerError(f"Cutout answered a malformed balance ({_first_line(err)})") from None

    def download(self, url: str, sink: IO[bytes], *, max_bytes: int | None = None) -> tuple[int, str]:
        """Stream the image at ``url`` into ``sink`` with bounded memory.

        Returns the byte count and the file extension matching the image's type (``.png``...).
        Checks that the body starts like an image (PNG, JPEG, GIF or WebP) and stays within
        ``max_bytes`` (the connection's ``max_download_bytes`` by default). The API key is not sent.

        :param url: the result URL returned by the API.
        :param sink: a binary file object opened for writing.
        :param max_bytes: the size cap in bytes.
        """
        return downloads.download(self.transport, url, sink, max_bytes or self.settings.max_download_bytes)

    def inspect_source(self, url: str, known: Recorded | None = None) -> SourceInfo:
        """Read and hash a source image, without the API key and without spending anything.

        :param url: the source image's URL, as the API will fetch it.
        :param known: what was recorded when it was read before: an unchanged source then answers 304, without
            its bytes (``SourceInfo.unchanged``).
        """
        return inspection.inspect(self.transport, url, known)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:200]
