"""The only place where the provider speaks HTTP.

One ``requests.Session`` with a pooled adapter per client, timeouts on every call, one retry policy
(tenacity runs the loop; ``_transport_error`` and ``_parse`` decide what each failed attempt is) and
one envelope parser. A POST that may already have reached the server is never sent again unless the
connection explicitly asks for it, because the API has no idempotency key and every accepted POST
may be charged.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import imagesize
import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from airflow_provider_cutout import __version__
from airflow_provider_cutout.exceptions import (
    AuthenticationError,
    BadRequestError,
    CutoutAPIError,
    CutoutConnectionError,
    CutoutError,
    CutoutTimeoutError,
    FailedEditError,
    InsufficientCreditsError,
    InvalidInputError,
    RateLimitError,
    ResultDownloadError,
    ServerError,
)
from airflow_provider_cutout.models import (
    CreditBalance,
    ImageEditRequest,
    ImageEditResult,
    SourceInfo,
    is_loopback_url,
)
from airflow_provider_cutout.settings import ClientSettings

__all__ = ["ClientSettings", "CutoutClient", "parse_envelope"]

EDIT_PATH = "/api/v1/image/edit"
BALANCE_PATH = "/api/v1/mySubscription"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
INSUFFICIENT_CREDITS_CODE = 1001
CHUNK_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 8 * 1024 * 1024
SOURCE_HEAD_BYTES = 128 * 1024  # enough for a JPEG's size behind its EXIF and ICC segments
CHARGED_NOTE = "; the edit may have been charged, check the account before re-running"
_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"GIF87a": ".gif", b"GIF89a": ".gif"}
T = TypeVar("T")


class _Answer(Protocol):
    """What the envelope parser reads: an ``Answer`` or a ``requests.Response``."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


@dataclass(frozen=True)
class Answer:
    """An API answer read whole (within ``MAX_ANSWER_BYTES``), and the attempt that got it."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    attempts: int = 1


def _retry_after(headers: Mapping[str, str]) -> float | None:
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


def _snippet(answer: _Answer) -> str:
    text = answer.content[:160].decode("utf-8", errors="replace").replace("\n", " ").strip()
    return text or "<empty body>"


def parse_envelope(response: _Answer) -> Any:
    """Return the ``data`` of a successful envelope, or raise the matching ``CutoutError``.

    The envelope decides, not the HTTP status: HTTP 200 with a non-zero ``code`` is an error.
    """
    return _parse(response)[0]


def _envelope(answer: _Answer) -> dict[str, Any]:
    try:
        body = json.loads(answer.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) and "code" in body else {}


def _parse(answer: _Answer, *, edit: bool = False, attempts: int = 1) -> tuple[Any, str | None]:
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
                             retry_after=_retry_after(answer.headers), **info)
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


def _retry_here(err: BaseException) -> bool:
    """The client retries what failed before an answer, and 429/502/503/504; other retryable errors
    (a 500, which may have been processed) are left to the task's own retries."""
    status = getattr(err, "http_status", None)
    return isinstance(err, CutoutError) and err.retryable and (status is None or status in RETRY_STATUSES)


class CutoutClient:
    """A pooled HTTP client for the Cutout.Pro API; build one per hook and close it when done.

    :param api_key: the key sent in the ``APIKEY`` header (never logged or put in errors).
    :param settings: timeouts, retries and pool size.
    :param logger: where retries are reported; the module logger by default.
    :param sleep: the function that waits between attempts (tests count the waits through it).
    :param on_retry: called with the error's class name before each retry (the operators count retries).
    """

    def __init__(
        self,
        api_key: str,
        settings: ClientSettings | None = None,
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise InvalidInputError(
                "the cutout connection has no API key: put the key in the connection's password "
                "(shown as 'API Key' in the connection form)"
            )
        self._api_key = api_key.strip()
        self.settings = settings or ClientSettings()
        self.log = logger or logging.getLogger(__name__)
        self._sleep = sleep
        self.on_retry = on_retry
        self._session = requests.Session()
        # Read proxy and CA settings from the environment once per host, not on every call (requests
        # would scan the whole environment and ~/.netrc per request; the API key is our only auth).
        self._session.trust_env = False
        self._session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        self._session.max_redirects = 5
        self._session.headers["User-Agent"] = f"airflow-provider-cutout/{__version__}"
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.settings.pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def __repr__(self) -> str:
        return f"CutoutClient(base_url={self.settings.base_url!r})"

    def __enter__(self) -> CutoutClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # -- API calls -------------------------------------------------------------------------------

    def edit_image(self, request: ImageEditRequest, *, source_urls: list[str] | None = None) -> ImageEditResult:
        """Send one edit and return its result; raises ``FailedEditError`` when ``status`` is 0.

        :param request: a validated request (see ``ImageEditRequest.build``).
        :param source_urls: the URLs the API fetches instead of ``request.image_urls`` (signed object URLs).
        """
        payload = request.payload() if source_urls is None else {**request.payload(), "imageUrl": list(source_urls)}
        answer = self._with_retries("POST", EDIT_PATH, self._call_api, json=payload)
        data, request_id = _parse(answer, edit=True, attempts=answer.attempts)
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

    def inspect_source(self, url: str) -> SourceInfo:
        """Read a source image's headers and first bytes (a ranged GET; a server that ignores ranges is read
        up to ``SOURCE_HEAD_BYTES`` only), without the API key and without spending anything.

        :param url: the source image's URL, as the API will fetch it.
        """
        timeout = (min(self.settings.connect_timeout, self.settings.source_timeout), self.settings.source_timeout)
        headers = {"Range": f"bytes=0-{SOURCE_HEAD_BYTES - 1}", "Accept": "image/jpeg, image/png"}
        try:
            with self._session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=True,
                                   proxies=self._proxies_for(url)) as response:
                if not 200 <= response.status_code < 300:
                    return SourceInfo(url, response.status_code)
                head = _read_head(response, SOURCE_HEAD_BYTES)
                return _source_info(url, response, head)
        except requests.RequestException as err:
            return SourceInfo(url, 0, error=_source_error(err, self.settings.source_timeout))

    def get_credit_balance(self) -> CreditBalance:
        """Return the account's credit balance; costs no credits."""
        answer = self._with_retries("GET", BALANCE_PATH, self._call_api)
        data, _ = _parse(answer, attempts=answer.attempts)
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
        limit = max_bytes or self.settings.max_download_bytes
        if not url.startswith("https://") and not (
            is_loopback_url(url) and is_loopback_url(self.settings.base_url) and url.startswith("http://")
        ):
            raise ResultDownloadError(f"result URL {url[:200]!r} is not an https:// URL; refusing to fetch it")
        with self._with_retries("GET", url, self._open_download) as response:
            _check_download(response, url, limit)
            return _stream(response, sink, url, limit)

    # -- one attempt, and the loop around it -------------------------------------------------------

    def _with_retries(self, method: str, path_or_url: str, attempt: Callable[..., T], **kwargs: Any) -> T:
        """Run ``attempt`` until it succeeds or fails for good: bounded retries with backoff and jitter,
        ``Retry-After`` honoured up to its cap, a log line before each wait."""
        url = path_or_url if "://" in path_or_url else self.settings.base_url + path_or_url
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.max_retries + 1),
            wait=self._wait, retry=tenacity.retry_if_exception(_retry_here), reraise=True, sleep=self._sleep,
            before_sleep=functools.partial(self._log_retry, method, _path(url)),
        )
        for round_ in retrying:
            with round_:
                return attempt(method, url, attempts=round_.retry_state.attempt_number, **kwargs)
        raise AssertionError("tenacity ended without an outcome")  # reraise=True: never reached

    def _call_api(self, method: str, url: str, *, attempts: int, json: Any = None) -> Answer:
        """One API request, read whole; a retryable status is raised as its error."""
        response = self._request(method, url, attempts, headers={"APIKEY": self._api_key}, json=json)
        with response:
            answer = Answer(response.status_code, response.headers, self._read_capped(response, method, attempts),
                            attempts)
        if answer.status_code in RETRY_STATUSES:
            _parse(answer, attempts=attempts)  # always raises for these statuses
        return answer

    def _open_download(self, method: str, url: str, *, attempts: int) -> requests.Response:
        """One download request, left streaming; follows redirects and carries no API key."""
        response = self._request(method, url, attempts, allow_redirects=True)
        if response.status_code in RETRY_STATUSES:
            response.close()
            raise ServerError(f"HTTP {response.status_code}", http_status=response.status_code, attempts=attempts)
        return response

    def _request(self, method: str, url: str, attempts: int, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        try:
            return self._session.request(
                method, url, timeout=(self.settings.connect_timeout, self.settings.read_timeout), stream=True,
                proxies=self._proxies_for(url), **kwargs,
            )
        except requests.RequestException as err:
            raise self._transport_error(method, url, err, attempts) from None

    def _read_capped(self, response: requests.Response, method: str, attempts: int) -> bytes:
        """The answer's body, refusing one larger than ``MAX_ANSWER_BYTES``."""
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise ServerError(f"Cutout's answer exceeds {MAX_ANSWER_BYTES} bytes; refusing to read it",
                                      retryable=method == "GET" or self.settings.retry_on_read_timeout,
                                      maybe_charged=method != "GET", attempts=attempts)
                chunks.append(chunk)
        except requests.RequestException as err:
            raise self._transport_error(method, response.url, err, attempts) from None
        return b"".join(chunks)

    def _transport_error(self, method: str, url: str, err: requests.RequestException, attempts: int) -> CutoutError:
        """What a request that got no usable answer means: whether it may have been charged, and whether
        sending it again is safe (a GET always; a POST only before it left, or when the connection asks)."""
        post, resend_ok = method != "GET", method == "GET" or self.settings.retry_on_read_timeout
        then = "and retry_on_read_timeout allows sending it again" if resend_ok else "so it is not sent again"
        note = f"; the edit may have been charged, {then}" if post else ""
        where, base = f"{method} {_path(url)}", self.settings.base_url
        if isinstance(err, requests.exceptions.ConnectTimeout):
            return CutoutTimeoutError(f"could not connect to {base} within {self.settings.connect_timeout}s",
                                      attempts=attempts)
        if isinstance(err, requests.exceptions.ReadTimeout):
            return CutoutTimeoutError(f"{where} was sent but no answer came within {self.settings.read_timeout}s"
                                      + note, request_sent=True, retryable=resend_ok, maybe_charged=post,
                                      attempts=attempts)
        if isinstance(err, requests.exceptions.TooManyRedirects):
            return ResultDownloadError(f"{_path(url)} redirected too many times", attempts=attempts)
        if isinstance(err, requests.exceptions.ConnectionError) and not _request_was_sent(err):
            return CutoutConnectionError(f"{where}: could not connect to {base}", attempts=attempts)
        dropped = isinstance(err, requests.exceptions.ConnectionError)
        return CutoutConnectionError(
            f"{where}: the connection was dropped before the answer came" + note if dropped else
            f"{where}: the answer broke off ({type(err).__name__})" + note,
            request_sent=True, retryable=resend_ok, maybe_charged=post, attempts=attempts,
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """``Retry-After`` up to its cap, else exponential backoff with jitter."""
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self.settings.retry_after_max))
        cap = min(self.settings.backoff_max, self.settings.backoff_base * 2.0 ** (state.attempt_number - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def _log_retry(self, method: str, path: str, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        self.log.warning("Cutout %s %s failed (%s); retry %d of %d in %.1fs",
                         method, path, error, state.attempt_number, self.settings.max_retries, delay)
        if self.on_retry is not None:
            self.on_retry(type(error).__name__)

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxies for this URL's host (``HTTPS_PROXY``, ``NO_PROXY``...), cached."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            self._proxies[key] = requests.utils.get_environ_proxies(url)
        return self._proxies[key]


def _check_download(response: requests.Response, url: str, limit: int) -> None:
    """Refuse a result answer that is no image to store: expired, an error, or over the size cap."""
    shown = url[:200]
    if response.status_code in (404, 410):
        raise ResultDownloadError(f"result URL {shown!r} answered HTTP {response.status_code}: it has expired or "
                                  "never existed; result URLs are temporary, store results with output_path")
    if response.status_code != 200:
        raise ResultDownloadError(f"result URL {shown!r} answered HTTP {response.status_code}",
                                  retryable=response.status_code >= 500)
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ResultDownloadError(f"result image is {int(declared)} bytes, over the {limit}-byte cap")


def _stream(response: requests.Response, sink: IO[bytes], url: str, limit: int) -> tuple[int, str]:
    """Copy a result image into ``sink`` chunk by chunk; stop at once on a body that is no image."""
    total, head = 0, b""
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            if len(head) < 16:
                head += chunk[:16]
                if len(head) >= 12 and not image_extension(head):
                    raise ResultDownloadError(f"result URL {url[:200]!r} did not return an image "
                                              f"(content-type {response.headers.get('Content-Type')!r})")
            total += len(chunk)
            if total > limit:
                raise ResultDownloadError(f"result image exceeds the {limit}-byte cap; download stopped")
            sink.write(chunk)
    except requests.RequestException as err:
        raise CutoutConnectionError(
            f"download of the result image broke off after {total} bytes ({type(err).__name__})") from None
    extension = image_extension(head)
    if not extension:
        raise ResultDownloadError(f"result URL {url[:200]!r} did not return an image")
    return total, extension


def _path(url: str) -> str:
    return url.split("?", 1)[0]


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:200]


def image_extension(head: bytes) -> str | None:
    """The file extension of an image from its first 12 bytes, or ``None`` if it is no image."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _IMAGE_SIGNATURES.items() if head.startswith(magic)), None)


def _source_error(err: requests.RequestException, timeout: float) -> str:
    """Why a source gave no answer, without its URL (a signed URL is a credential; requests puts it in texts)."""
    if isinstance(err, requests.Timeout):
        return f"no answer within source_timeout={timeout:g}s"
    if isinstance(err, requests.ConnectionError):
        return "the connection failed"
    return type(err).__name__


def _read_head(response: requests.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body."""
    chunks, size = [], 0
    for chunk in response.iter_content(CHUNK_BYTES):
        chunks.append(chunk[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


def _source_info(url: str, response: requests.Response, head: bytes) -> SourceInfo:
    """Format, byte size, pixel size and content version from a source's answer and first bytes."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    length = response.headers.get("Content-Length") if response.status_code == 200 else None
    size = int(total) if total.isdigit() else int(length) if length and length.isdigit() else None
    extension = image_extension(head)
    if extension:
        kind = "jpeg" if extension == ".jpg" else extension[1:]
    else:
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        kind = "html" if b"<html" in head[:1024].lower() or "html" in content_type else content_type or "unknown"
    width = height = None
    if kind in ("jpeg", "png"):
        try:
            width, height = imagesize.get(io.BytesIO(head))
        except (ValueError, OSError, IndexError):  # a header beyond the bytes read
            pass
        width, height = (width, height) if width and height and width > 0 and height > 0 else (None, None)
    etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    version = etag or (f"{modified}|{size}" if modified else "sha256:" + hashlib.sha256(head).hexdigest()[:32])
    return SourceInfo(url, response.status_code, kind, size, width, height, version)


def _request_was_sent(err: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened after the request left (so it may have been processed)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))
