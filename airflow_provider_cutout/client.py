"""The only place where the provider speaks HTTP.

One ``requests.Session`` with a pooled adapter per client, timeouts on every call, one retry policy
(``CutoutClient._send``) and one envelope parser (``parse_envelope``). A POST that may already have
reached the server is never sent again unless the connection explicitly asks for it, because the
API has no idempotency key and every accepted POST may be charged.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import IO, Any
from urllib.parse import urlsplit

import requests
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
    DEFAULT_BASE_URL,
    CreditBalance,
    ImageEditRequest,
    ImageEditResult,
    is_loopback_url,
)

__all__ = ["ClientSettings", "CutoutClient", "parse_envelope"]

EDIT_PATH = "/api/v1/image/edit"
BALANCE_PATH = "/api/v1/mySubscription"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
INSUFFICIENT_CREDITS_CODE = 1001
CHUNK_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"GIF87a": ".gif", b"GIF89a": ".gif"}


@dataclass(frozen=True)
class ClientSettings:
    """Timeouts and retry settings; every field can be set in the connection's extras.

    :param base_url: scheme, host and optional port of the API (the connection's host).
    :param connect_timeout: seconds to wait for a TCP connection.
    :param read_timeout: seconds to wait for an answer; edits can take minutes.
    :param max_retries: retries after the first attempt for retryable failures.
    :param backoff_base: first backoff in seconds, doubled on each retry (with jitter).
    :param backoff_max: cap of one backoff, in seconds.
    :param retry_after_max: cap on how long a ``Retry-After`` header may make us wait.
    :param retry_on_read_timeout: also resend a POST after a read timeout or a dropped connection;
        the edit may then be charged twice.
    :param pool_size: connections kept alive in the pool (raise it for concurrent batches).
    :param max_download_bytes: largest result image the provider will download.
    """

    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    retry_on_read_timeout: bool = False
    pool_size: int = 16
    max_download_bytes: int = 100 * 1024 * 1024

    def __post_init__(self) -> None:
        base = (self.base_url or DEFAULT_BASE_URL).strip().rstrip("/")
        if "://" not in base:
            base = f"https://{base}"
        object.__setattr__(self, "base_url", base)
        for name in ("connect_timeout", "read_timeout", "backoff_max", "retry_after_max"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name}={getattr(self, name)!r} must be greater than 0")
        for name in ("max_retries", "backoff_base"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name}={getattr(self, name)!r} must be 0 or more")
        if self.pool_size < 1 or self.max_download_bytes < 1:
            raise InvalidInputError("pool_size and max_download_bytes must be at least 1")

    @classmethod
    def from_extras(cls, base_url: str | None, extras: Mapping[str, Any]) -> ClientSettings:
        """Build settings from a connection's extras, naming any unknown or mistyped key.

        :param base_url: the connection's host, or ``None`` for the public API.
        :param extras: the connection's extra JSON as a dict.
        """
        known = {f.name: f.type for f in fields(cls) if f.name != "base_url"}
        values: dict[str, Any] = {}
        for key, raw in extras.items():
            if key not in known:
                raise InvalidInputError(
                    f"connection extra {key!r} is not a setting of the cutout connection; "
                    f"known extras: {', '.join(sorted(known))}"
                )
            values[key] = _coerce(key, raw, known[key])
        return cls(base_url=base_url or DEFAULT_BASE_URL, **values)


def _coerce(key: str, raw: Any, annotation: Any) -> Any:
    kind = {"float": float, "int": int, "bool": bool}[str(annotation)]
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() in ("true", "1", "yes", "false", "0", "no"):
                return str(raw).strip().lower() in ("true", "1", "yes")
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"connection extra {key}={raw!r} must be a {kind.__name__}"
        ) from None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
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


def _snippet(response: requests.Response) -> str:
    text = response.text[:160].replace("\n", " ").strip()
    return text or "<empty body>"


def parse_envelope(response: requests.Response) -> Any:
    """Return the ``data`` of a successful envelope, or raise the matching ``CutoutError``.

    The envelope decides, not the HTTP status: HTTP 200 with a non-zero ``code`` is an error.
    """
    return _parse(response)[0]


def _parse(response: requests.Response) -> tuple[Any, str | None]:
    """``parse_envelope``, also returning the envelope's ``requestId`` (one JSON parse)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        body = {}
    code = body.get("code")
    message = str(body.get("msg") or "").strip()
    request_id = body.get("requestId") or response.headers.get("X-Request-Id")
    info: dict[str, Any] = {
        "code": code, "http_status": status, "request_id": request_id, "server_message": message,
    }

    if status in (401, 403):
        raise AuthenticationError(
            f"Cutout rejected the API key: {message or 'unauthorized'}; "
            "check the API Key (password) of the cutout connection",
            **info,
        )
    if status == 429:
        raise RateLimitError(
            f"Cutout rate limit reached: {message or 'too many requests'}",
            retry_after=_retry_after(response),
            **info,
        )
    if status >= 500:
        raise ServerError(f"Cutout server error: {message or _snippet(response)}", **info)
    if not body:
        raise ServerError(
            f"Cutout answered HTTP {status} with a body that is not the API's JSON envelope: "
            f"{_snippet(response)!r}",
            **info,
        )
    if code == 0 and 200 <= status < 300:
        return body.get("data"), request_id
    if code == INSUFFICIENT_CREDITS_CODE:
        raise InsufficientCreditsError(
            f"Cutout: {message or 'insufficient balance'}; top up the account's credits", **info
        )
    if status in (400, 422):
        raise BadRequestError(f"Cutout rejected the request: {message or 'bad request'}", **info)
    raise CutoutAPIError(f"Cutout API error: {message or 'no message'}", **info)


class CutoutClient:
    """A pooled HTTP client for the Cutout.Pro API; build one per hook and close it when done.

    :param api_key: the key sent in the ``APIKEY`` header (never logged or put in errors).
    :param settings: timeouts, retries and pool size.
    :param logger: where retries are reported; the module logger by default.
    :param sleep: the function that waits between attempts (tests may count the waits).
    """

    def __init__(
        self,
        api_key: str,
        settings: ClientSettings | None = None,
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
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

    def edit_image(self, request: ImageEditRequest) -> ImageEditResult:
        """Send one edit and return its result; raises ``FailedEditError`` when ``status`` is 0.

        :param request: a validated request (see ``ImageEditRequest.build``).
        """
        response = self._send("POST", EDIT_PATH, json=request.payload())
        try:
            data, request_id = _parse(response)
            if not isinstance(data, dict):
                raise ServerError("Cutout answered success without a result object", http_status=response.status_code)
            result = ImageEditResult.model_validate({**data, "requestId": request_id})
        except CutoutError as err:
            # The POST reached the server: a resend could charge twice, so Airflow must not retry it.
            if isinstance(err, ServerError) and 200 <= response.status_code < 300:
                err.retryable, err.maybe_charged = False, True
                err.message += "; the edit may have been charged, check the account before re-running"
            raise
        except ValueError as err:
            raise ServerError(
                f"Cutout answered success with a malformed result ({_first_line(err)}); the edit may "
                "have been charged, check the account before re-running",
                http_status=response.status_code,
                retryable=False,
                maybe_charged=True,
            ) from None
        if result.status == 0:
            raise FailedEditError(
                f"Cutout could not perform the edit: {result.fail_reason or 'no reason given'}",
                fail_reason=result.fail_reason,
                code=0,
                http_status=response.status_code,
                request_id=result.request_id,
            )
        if not result.image_url:
            raise ServerError(
                "Cutout answered a successful edit without an image URL; the edit may have been charged, "
                "check the account before re-running",
                http_status=response.status_code, request_id=result.request_id, retryable=False, maybe_charged=True,
            )
        return result

    def get_credit_balance(self) -> CreditBalance:
        """Return the account's credit balance; costs no credits."""
        response = self._send("GET", BALANCE_PATH)
        data = parse_envelope(response)
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
        response = self._send("GET", url, download=True)
        with response:
            if response.status_code in (404, 410):
                raise ResultDownloadError(
                    f"result URL {url[:200]!r} answered HTTP {response.status_code}: it has expired or "
                    "never existed; result URLs are temporary, store results with output_path"
                )
            if response.status_code != 200:
                raise ResultDownloadError(
                    f"result URL {url[:200]!r} answered HTTP {response.status_code}",
                    retryable=response.status_code >= 500,
                )
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ResultDownloadError(f"result image is {int(declared)} bytes, over the {limit}-byte cap")
            total = 0
            head = b""
            try:
                for chunk in response.iter_content(CHUNK_BYTES):
                    if len(head) < 16:
                        head += chunk[:16]
                        if len(head) >= 12 and not image_extension(head):
                            raise ResultDownloadError(
                                f"result URL {url[:200]!r} did not return an image "
                                f"(content-type {response.headers.get('Content-Type')!r})"
                            )
                    total += len(chunk)
                    if total > limit:
                        raise ResultDownloadError(f"result image exceeds the {limit}-byte cap; download stopped")
                    sink.write(chunk)
            except requests.RequestException as err:
                raise CutoutConnectionError(
                    f"download of the result image broke off after {total} bytes ({type(err).__name__})"
                ) from None
            extension = image_extension(head)
            if not extension:
                raise ResultDownloadError(f"result URL {url[:200]!r} did not return an image")
            return total, extension

    # -- the one retry policy --------------------------------------------------------------------

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxies for this URL's host (``HTTPS_PROXY``, ``NO_PROXY``...), cached."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            self._proxies[key] = requests.utils.get_environ_proxies(url)
        return self._proxies[key]

    def _backoff(self, attempt: int, error: CutoutError) -> float:
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.settings.retry_after_max)
        cap = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        json: Any = None,
        download: bool = False,
    ) -> requests.Response:
        """Send with bounded, logged retries; return the first response that is not retried.

        Retried: connection failures before the request was sent, HTTP 429/502/503/504, and, for
        GET (or POST when ``retry_on_read_timeout`` is set), read timeouts and broken answers.
        API answers are read here, up to ``MAX_ANSWER_BYTES``; a ``download`` is left streaming,
        follows redirects and carries no API key.
        """
        url = path_or_url if "://" in path_or_url else self.settings.base_url + path_or_url
        headers = {} if download else {"APIKEY": self._api_key}
        resend_ok = method == "GET" or self.settings.retry_on_read_timeout
        charge_note = "" if method == "GET" else "; the edit may have been charged, so it is not sent again"
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        attempt = 0
        while True:
            attempt += 1
            error: CutoutError
            try:
                response = self._session.request(
                    method, url, json=json, headers=headers, timeout=timeout, stream=True,
                    allow_redirects=download, proxies=self._proxies_for(url),
                )
                if not download:
                    _read_capped(response, MAX_ANSWER_BYTES)
            except requests.exceptions.ConnectTimeout:
                error = CutoutTimeoutError(
                    f"could not connect to {self.settings.base_url} within {self.settings.connect_timeout}s"
                )
            except requests.exceptions.ReadTimeout:
                error = CutoutTimeoutError(
                    f"{method} {_path(url)} was sent but no answer came within {self.settings.read_timeout}s"
                    + charge_note,
                    request_sent=True, retryable=resend_ok, maybe_charged=method != "GET",
                )
            except requests.exceptions.TooManyRedirects:
                raise ResultDownloadError(f"{_path(url)} redirected too many times") from None
            except requests.exceptions.ConnectionError as err:
                sent = _request_was_sent(err)
                error = CutoutConnectionError(
                    f"{method} {_path(url)}: the connection was dropped before the answer came" + charge_note
                    if sent else f"{method} {_path(url)}: could not connect to {self.settings.base_url}",
                    request_sent=sent, retryable=resend_ok or not sent, maybe_charged=sent and method != "GET",
                )
            except requests.exceptions.RequestException as err:  # a body cut short or undecodable
                error = CutoutConnectionError(
                    f"{method} {_path(url)}: the answer broke off ({type(err).__name__})" + charge_note,
                    request_sent=True, retryable=resend_ok, maybe_charged=method != "GET",
                )
            except CutoutError as err:  # an answer over the size cap
                error = err
                error.retryable, error.maybe_charged = resend_ok, method != "GET"
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                if download:
                    response.close()
                    error = ServerError(f"HTTP {response.status_code}", http_status=response.status_code)
                else:
                    try:
                        parse_envelope(response)
                        error = ServerError(f"HTTP {response.status_code}", http_status=response.status_code)
                    except CutoutError as status_error:
                        error = status_error
            if not error.retryable or attempt > self.settings.max_retries:
                error.attempts = attempt
                raise error
            delay = self._backoff(attempt, error)
            self.log.warning(
                "Cutout %s %s failed (%s); retry %d of %d in %.1fs",
                method, _path(url), error, attempt, self.settings.max_retries, delay,
            )
            self._sleep(delay)


def _read_capped(response: requests.Response, limit: int) -> None:
    """Read an API answer into memory, refusing one larger than ``limit`` bytes."""
    chunks, size = [], 0
    with response:
        for chunk in response.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise ServerError(
                    f"Cutout's answer exceeds {limit} bytes; refusing to read it", http_status=response.status_code
                )
            chunks.append(chunk)
    response._content = b"".join(chunks)


def _path(url: str) -> str:
    return url.split("?", 1)[0]


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:200]


def image_extension(head: bytes) -> str | None:
    """The file extension of an image from its first 12 bytes, or ``None`` if it is no image."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _IMAGE_SIGNATURES.items() if head.startswith(magic)), None)


def _request_was_sent(err: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened after the request left (so it may have been processed)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))
