"""The HTTP transport: one pooled ``requests.Session``, timeouts on every call, and the one retry policy;
and ``SourcePool``, the keep-alive connections (stdlib ``http.client``) of the many small reads of source checks.

tenacity runs the loop; ``retry_here`` decides which failed attempts the client retries itself, and
``Transport.error_of`` says what a request that got no usable answer means. A POST that may already
have reached the server is never sent again unless the connection explicitly asks for it, because the
API has no idempotency key and every accepted POST may be charged.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from airflow_provider_cutout import __version__
from airflow_provider_cutout.api.envelope import Answer, parse, refused
from airflow_provider_cutout.api.governor import Governor
from airflow_provider_cutout.api.settings import ClientSettings
from airflow_provider_cutout.exceptions import (
    CutoutAPIError,
    CutoutConnectionError,
    CutoutError,
    CutoutTimeoutError,
    RateLimitError,
    ResultDownloadError,
    ServerError,
    StoppedError,
)

#: Answers the client retries itself: for a GET, which charges nothing; for a POST, only those that say the
#: request was not processed (``envelope.refused``: an edit may have been charged behind a 500, 502, 504, 52x
#: or a proxy's bare 503 page, so those are never resent).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
POST_RETRY_STATUSES = frozenset({429, 503})
CHUNK_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 8 * 1024 * 1024
T = TypeVar("T")
#: A URL whose characters may all go on a request line as they are (RFC 3986: unreserved, reserved, and
#: percent-encodings); any other (a space, non-ASCII, ``|{}"<>``, a stray ``%``) is sent through the session,
#: which percent-encodes it as a server expects.
_SENDABLE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")


class HideQueries(logging.Filter):
    """Hides the query of every URL in urllib3's debug lines (``"GET /photo.jpg?X-Amz-Signature=..."``): a
    signed source URL is a credential, and those lines are the only place a request's URL is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(path_of(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def hide_queries_in_urllib3_logs() -> None:
    """Install ``HideQueries`` on urllib3's connection pool logger, once."""
    pool_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, HideQueries) for f in pool_log.filters):
        pool_log.addFilter(HideQueries())


def retry_here(err: BaseException) -> bool:
    """The client retries what failed before an answer, and the statuses of ``RETRY_STATUSES`` (errors built
    for a POST that may have been processed are not retryable); other retryable errors (a 500 to a GET) are
    left to the task's own retries."""
    status = getattr(err, "http_status", None)
    return isinstance(err, CutoutError) and err.retryable and (status is None or status in RETRY_STATUSES)


@dataclass(frozen=True)
class SourceAnswer:
    """A source server's answer: its status, headers and the first bytes of its body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class SourcePool:
    """Keep-alive connections to source servers, one idle list per origin, shared by the threads that check
    sources. The standard library's ``http.client`` directly: a 304 costs about 0.1 ms of client CPU here,
    urllib3's pool 0.2 to 0.3 (it counts when a re-run asks 100,000 sources whether they changed). No redirect
    is followed. Nothing is retried but a request on a kept connection that the server had closed, answered 408
    (its keep-alive timeout) or answered with bytes that are not this request's answer, once on a new
    connection. A connection goes back to the pool only when its answer was final and read to its end, and is
    taken again only when nothing is waiting on it.

    :param user_agent: sent with every request.
    :param cas: the CA bundle (a file, or a directory of hashed certificates) that HTTPS sources are checked
        against.
    :param per_origin: the most connections kept idle for one origin (the connection's ``pool_size``).
    :param origins: the most origins with idle connections; those of the origin used least recently are closed
        first (a catalog of photos on many hosts does not hold a socket open to each).
    """

    def __init__(self, user_agent: str, cas: str, per_origin: int, origins: int = 16) -> None:
        self._headers, self._per_origin, self._origins = {"User-Agent": user_agent}, per_origin, origins
        self._tls = (ssl.create_default_context(capath=cas) if os.path.isdir(cas) else
                     ssl.create_default_context(cafile=cas))
        self._idle: dict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def read(self, parts: SplitResult, headers: Mapping[str, str], timeout: tuple[float, float], method: str,
             limit: int) -> SourceAnswer:
        """One request to the URL ``parts`` (``urlsplit``'s) and at most ``limit`` bytes of its answer's body.

        :raises OSError: (timeouts included) or ``http.client.HTTPException`` when no answer came.
        :raises http.client.InvalidURL: for a URL ``http.client`` cannot send as it is: ``Transport.read_source``
            sends those through the session.
        """
        origin = (parts.scheme, parts.hostname or "", parts.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for kept in (True, False):
            connection = self._take(origin, timeout) if kept else self._connect(origin, timeout)
            if connection is None:
                continue
            try:
                connection.request(method, target, headers={**self._headers, **headers})
                response = connection.getresponse()
            except BaseException as err:
                connection.close()
                if kept and isinstance(err, (ConnectionError, http.client.HTTPException)):
                    continue  # closed while idle, or bytes that are no answer: once more, on a new connection
                raise
            if kept and (response.status == 408 or not _for(headers, response)):
                connection.close()  # the server timed the idle connection out, or this answer was another's
                continue
            return self._answer(origin, connection, response, limit)
        raise AssertionError("a new connection either answers or raises")  # never reached

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connection in (kept for connections in idle.values() for kept in connections):
            connection.close()

    def _answer(self, origin: tuple[str, str, int | None], connection: http.client.HTTPConnection,
                response: http.client.HTTPResponse, limit: int) -> SourceAnswer:
        """The answer; its connection kept for the next source when the body was read to its end (a 304 or a
        HEAD has none), else closed."""
        if response.status < 200 or (response.status in (204, 304) and response.chunked):
            connection.close()  # a 1xx: its final answer is still to come; a bodiless answer "chunked": no end
            return SourceAnswer(response.status, response.headers, b"")  # type: ignore[arg-type] # an email Message
        try:
            body = response.read(limit)
            if response.length and len(body) < limit:  # http.client does not raise when the body ends short
                raise http.client.IncompleteRead(body, response.length)
        except BaseException:
            connection.close()
            raise
        if response.isclosed() and not response.will_close:
            self._keep(origin, connection)
        else:
            connection.close()
        return SourceAnswer(response.status, response.headers, body)  # type: ignore[arg-type] # an email Message

    def _keep(self, origin: tuple[str, str, int | None], connection: http.client.HTTPConnection) -> None:
        closing = []
        with self._lock:
            idle = self._idle.pop(origin, [])
            self._idle[origin] = idle  # the most recently used origin last
            if len(idle) < self._per_origin:
                idle.append(connection)
            else:
                closing.append(connection)
            while len(self._idle) > self._origins:
                closing.extend(self._idle.pop(next(iter(self._idle))))
        for spare in closing:
            spare.close()

    def _take(self, origin: tuple[str, str, int | None], timeout: tuple[float, float]
              ) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(origin)
            connection = idle.pop() if idle else None
        if connection is None:
            return None
        # Closed by the server, or bytes nobody asked for (a 408 when its keep-alive timeout passed, a second
        # answer to the last request)? Then it is not for this request.
        if connection.sock is None or _readable(connection.sock):
            connection.close()
            return None
        if connection.sock.gettimeout() != timeout[1]:
            connection.sock.settimeout(timeout[1])
        return connection

    def _connect(self, origin: tuple[str, str, int | None], timeout: tuple[float, float]
                 ) -> http.client.HTTPConnection:
        scheme, host, port = origin
        port = port or (443 if scheme == "https" else 80)  # http.client would take "::1" as host ":" and port 1
        connection = (http.client.HTTPSConnection(host, port, timeout=timeout[0], context=self._tls)
                      if scheme == "https" else http.client.HTTPConnection(host, port, timeout=timeout[0]))
        try:
            connection.connect()
        except BaseException:
            connection.close()  # a TLS handshake that failed leaves its socket open
            raise
        connection.sock.settimeout(timeout[1])
        return connection


def _for(headers: Mapping[str, str], response: http.client.HTTPResponse) -> bool:
    """Whether a 304 can be the answer to this request: its ETag, when it gives one, is one the request asked
    about. (A 304 for another source, left on a kept connection by a server that answered twice, would mark
    this source unchanged.)"""
    asked = headers.get("If-None-Match")
    return response.status != 304 or not asked or etag_matches(response.headers.get("ETag"), asked)


def etag_matches(etag: str | None, asked: str) -> bool:
    """Whether a 304's ``etag`` is one of those ``If-None-Match`` asked about (weak comparison); a 304 without
    an ETag, or an ``*``, matches."""
    if not etag or asked.strip() == "*":
        return True
    return etag.strip().removeprefix("W/") in {tag.strip().removeprefix("W/") for tag in asked.split(",")}


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: its end (the server closed it) or an answer nobody
    asked for. Either way it is not for the next request."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Transport:
    """The session, the retry loop and the mapping of transport failures to the exception tree.

    :param api_key: sent in the ``APIKEY`` header of API calls only (never to result or source URLs).
    :param settings: timeouts, retries and pool size.
    :param logger: where retries are reported.
    :param sleep: the function that waits between attempts (tests count the waits through it); ``None``: a wait
        that ``stop`` ends at once.
    :param on_retry: called with the error's class name before each retry.
    """

    def __init__(self, api_key: str, settings: ClientSettings, logger: logging.Logger | logging.LoggerAdapter[Any],
                 sleep: Callable[[float], None] | None, on_retry: Callable[[str], None] | None) -> None:
        self._api_key, self.settings, self.log = api_key, settings, logger
        self.stopped = threading.Event()  # set by stop(): no edit is sent after it, and every wait ends at once
        self.edits_stopped = threading.Event()  # set by stop() and by a batch's stop_with: no edit, reads go on
        self.governor = Governor(self.edits_stopped, retry_after_max=settings.retry_after_max,  # every edit passes it
                                 patience=settings.rate_limit_patience)
        self._sleep = sleep or self._pause
        self.on_retry = on_retry
        hide_queries_in_urllib3_logs()
        self.session = requests.Session()
        # Read proxy and CA settings from the environment once per host, not on every call (requests
        # would scan the whole environment and ~/.netrc per request; the API key is our only auth).
        self.session.trust_env = False
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        self.session.max_redirects = 5
        self.session.headers["User-Agent"] = f"airflow-provider-cutout/{__version__}"
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=settings.pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        cas = self.session.verify if isinstance(self.session.verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
        self._sources = SourcePool(str(self.session.headers["User-Agent"]), cas, settings.pool_size)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()
        self._sources.close()

    def read_source(self, url: str, headers: Mapping[str, str], timeout: tuple[float, float], *, method: str = "GET",
                    limit: int = 0) -> SourceAnswer | None:
        """A GET (or HEAD) of a source image and at most ``limit`` bytes of its body, through the lean pool
        (``SourcePool``). No redirect is followed; nothing is retried but a kept connection the server closed.
        ``None`` for a URL the session reads
        instead (``request``): one behind a proxy, one with credentials in it, one ``http.client`` cannot send
        as it is (a character that must be percent-encoded, which the session encodes).

        :raises OSError: (timeouts included) or ``http.client.HTTPException`` when no answer came.
        """
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 # a port that is not a number raises
        except ValueError:
            return None
        if parts.username is not None or not _SENDABLE.fullmatch(url):
            return None
        proxies = self.proxies_for(url, parts)  # {"no": ...} alone when only NO_PROXY is set: no proxy for it
        if proxies and requests.utils.select_proxy(url, proxies):
            return None
        try:
            return self._sources.read(parts, headers, timeout, method, limit)
        except http.client.InvalidURL:  # its text holds the URL; source_error drops the session's
            return None

    def with_retries(self, method: str, path_or_url: str, attempt: Callable[..., T], **kwargs: Any) -> T:
        """Run ``attempt`` until it succeeds or fails for good: bounded retries with backoff and jitter,
        ``Retry-After`` honoured up to its cap, a log line before each wait. An edit (any method but GET) passes
        the governor before each attempt: a 429 pauses every thread of the task and is retried, without counting
        against ``max_retries``, for as long as the account accepts edits at all (``Governor``)."""
        url = path_or_url if "://" in path_or_url else self.settings.base_url + path_or_url
        failed: list[BaseException] = []  # the attempts' errors (tenacity forgets one when the next starts)
        governed = method != "GET"

        def before_sleep(state: tenacity.RetryCallState) -> None:
            failed.append(state.outcome.exception() if state.outcome else None)  # type: ignore[arg-type]
            self._log_retry(method, path_of(url), state)

        def stop(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            if governed and isinstance(error, RateLimitError):
                return self.governor.stalled()  # 429s cost nothing: retried while the account accepts any edit
            others = sum(not isinstance(err, RateLimitError) for err in [*failed, error]) if governed else (
                state.attempt_number)
            return others > self.settings.max_retries

        def wait(state: tenacity.RetryCallState) -> float:  # an edit's 429: the governor pauses every thread
            throttled = governed and state.outcome is not None and isinstance(state.outcome.exception(),
                                                                               RateLimitError)
            return 0.0 if throttled else self._wait(state)

        sleep = self._sleep if self._sleep != self._pause or not governed else self._edits_pause
        retrying = tenacity.Retrying(stop=stop, wait=wait, retry=tenacity.retry_if_exception(retry_here),
                                     reraise=True, sleep=sleep, before_sleep=before_sleep)
        try:
            for round_ in retrying:
                with round_:
                    if not governed:  # a read costs nothing: a result in flight is still fetched after a stop
                        return attempt(method, url, attempts=round_.retry_state.attempt_number, **kwargs)
                    return self._governed(method, url, failed, attempt, round_.retry_state.attempt_number, **kwargs)
        except RateLimitError as err:
            if governed and self.governor.stalled():
                raise RateLimitError(
                    f"the account answered 429 to every edit for {self.governor.patience:.0f} s (the account is "
                    f"blocked, or other clients take all of its rate); the rate reached before: "
                    f"{self.governor.describe()}", http_status=429, retryable=False, attempts=err.attempts,
                    maybe_charged=any(getattr(e, "maybe_charged", False) for e in failed)) from None
            raise
        raise AssertionError("tenacity ended without an outcome")  # reraise=True: never reached

    def _governed(self, method: str, url: str, failed: list[BaseException], attempt: Callable[..., T],
                  attempts: int, **kwargs: Any) -> T:
        """One attempt to send an edit: let through by the governor, never once the task was told to stop; its
        answer (a 429 or any other) told to the governor."""
        self._check_stopped(method, url, failed)
        sent_at = self.governor.admit()
        self._check_stopped(method, url, failed)  # a stop that came while it waited: nothing is sent
        try:
            answer = attempt(method, url, attempts=attempts, **kwargs)
        except RateLimitError as err:
            if self.governor.answered(sent_at, throttled=True, retry_after=err.retry_after):
                self.log.warning("Cutout %s %s: %s; every edit of this task waits %.1f s, then goes at %.1f edits/s "
                                 "(it slows down on each 429 and speeds up again while none comes)", method,
                                 path_of(url), err, self.governor.paused_for(), self.governor.rate)
            raise
        except CutoutAPIError:
            self.governor.answered(sent_at, throttled=False)
            raise
        self.governor.answered(sent_at, throttled=False)
        return answer

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts, or until ``stop``."""
        self.stopped.wait(seconds)

    def _edits_pause(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts to send an edit, or until no more edits are to be sent."""
        self.edits_stopped.wait(seconds)

    def stop(self) -> None:
        """Send nothing more, the task was told to stop: an edit waiting (in the governor or to be retried) wakes and
        raises ``StoppedError``, no edit's attempt starts after this, and every wait ends. An attempt in flight
        finishes; reads (a result's download, the balance) go on, since they cost nothing."""
        self.edits_stopped.set()
        self.stopped.set()

    def resume(self) -> None:
        """A new run on this transport: edits may be sent again."""
        self.stopped.clear()
        self.edits_stopped.clear()

    def _check_stopped(self, method: str, url: str, failed: list[BaseException]) -> None:
        """Before an attempt: ``StoppedError`` once stopped, maybe charged when an earlier attempt may have been."""
        if not self.edits_stopped.is_set():
            return
        earlier = failed[-1] if failed else None
        raise StoppedError(f"{method} {path_of(url)} was not sent{' again' if earlier else ''}: the task was told to "
                           f"stop{f' while it waited to retry ({earlier})' if earlier else ''}",
                           retryable=False, attempts=max(1, len(failed)),
                           maybe_charged=any(getattr(err, "maybe_charged", False) for err in failed))

    def call_api(self, method: str, url: str, *, attempts: int, json: Any = None) -> Answer:
        """One API request with the key, read whole; a retryable status is raised as its error."""
        response = self.request(method, url, attempts, headers={"APIKEY": self._api_key}, json=json)
        with response:
            answer = Answer(response.status_code, response.headers, self._read_capped(response, method, attempts),
                            attempts)
        if answer.status_code in RETRY_STATUSES if method == "GET" else (
                answer.status_code in POST_RETRY_STATUSES and refused(answer)):
            parse(answer, attempts=attempts)  # always raises for these statuses
        return answer

    def open_stream(self, method: str, url: str, *, attempts: int) -> requests.Response:
        """One request without the key, left streaming, redirects followed; a retryable status raised."""
        response = self.request(method, url, attempts, allow_redirects=True)
        if response.status_code in RETRY_STATUSES:
            response.close()
            raise ServerError(f"HTTP {response.status_code}", http_status=response.status_code, attempts=attempts)
        return response

    def request(self, method: str, url: str, attempts: int, **kwargs: Any) -> requests.Response:
        """One request with the connection's timeouts; a failure raised as what it means."""
        kwargs.setdefault("allow_redirects", False)
        try:
            return self.session.request(
                method, url, timeout=(self.settings.connect_timeout, self.settings.read_timeout), stream=True,
                proxies=self.proxies_for(url), **kwargs,
            )
        except requests.RequestException as err:
            raise self.error_of(method, url, err, attempts) from None

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
            raise self.error_of(method, response.url, err, attempts) from None
        return b"".join(chunks)

    def error_of(self, method: str, url: str, err: requests.RequestException, attempts: int) -> CutoutError:
        """What a request that got no usable answer means: whether it may have been charged, and whether
        sending it again is safe (a GET always; a POST only before it left, or when the connection asks)."""
        post, resend_ok = method != "GET", method == "GET" or self.settings.retry_on_read_timeout
        then = "and retry_on_read_timeout allows sending it again" if resend_ok else "so it is not sent again"
        note = f"; the edit may have been charged, {then}" if post else ""
        where, base = f"{method} {path_of(url)}", self.settings.base_url
        if isinstance(err, requests.exceptions.ConnectTimeout):
            return CutoutTimeoutError(f"could not connect to {base} within {self.settings.connect_timeout}s",
                                      attempts=attempts)
        if isinstance(err, requests.exceptions.ReadTimeout):
            return CutoutTimeoutError(f"{where} was sent but no answer came within {self.settings.read_timeout}s"
                                      + note, request_sent=True, retryable=resend_ok, maybe_charged=post,
                                      attempts=attempts)
        if isinstance(err, requests.exceptions.TooManyRedirects):
            return ResultDownloadError(f"{path_of(url)} redirected too many times", attempts=attempts)
        if isinstance(err, requests.exceptions.ConnectionError) and not _request_was_sent(err):
            return CutoutConnectionError(f"{where}: could not connect to {base}", attempts=attempts)
        dropped = isinstance(err, requests.exceptions.ConnectionError)
        return CutoutConnectionError(
            f"{where}: the connection was dropped before the answer came" + note if dropped else
            f"{where}: the answer broke off ({type(err).__name__})" + note,
            request_sent=True, retryable=resend_ok, maybe_charged=post, attempts=attempts,
        )

    def proxies_for(self, url: str, parts: SplitResult | None = None) -> dict[str, str]:
        """The environment's proxies for this URL's host (``HTTPS_PROXY``, ``NO_PROXY``...), cached.

        :param parts: ``urlsplit(url)``, when the caller has it.
        """
        parts = parts or urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            self._proxies[key] = requests.utils.get_environ_proxies(url)
        return self._proxies[key]

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
        if method != "GET" and isinstance(error, RateLimitError):  # the governor's pause: one line per change
            self.log.debug("Cutout %s %s answered 429; sent again when the governor lets it (%s)", method, path,
                           self.governor.describe())
            if self.on_retry is not None:
                self.on_retry(type(error).__name__)
            return
        self.log.warning("Cutout %s %s failed (%s); retry %d of %d in %.1fs",
                         method, path, error, state.attempt_number, self.settings.max_retries, delay)
        if self.on_retry is not None:
            self.on_retry(type(error).__name__)


def path_of(url: str) -> str:
    """A URL without its query (where signatures live)."""
    return url.split("?", 1)[0]


def _request_was_sent(err: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened after the request left (so it may have been processed)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))
