"""The sandbox's HTTP server: the Cutout.Pro contract on loopback, with real edits and a ledger.

Shares only the model registry with the provider; everything else (envelopes, checks, fetching)
is written here again on purpose, so the provider's tests talk to an independent implementation.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import ipaddress
import json
import math
import mimetypes
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import ProxyHandler, build_opener

from PIL import Image, UnidentifiedImageError

from airflow_provider_cutout.api.models import ASPECT_RATIOS, MODELS
from airflow_provider_cutout.sandbox import edits
from airflow_provider_cutout.sandbox.state import Fault, SandboxConfig, SandboxState, fingerprint

#: When the samples were last modified (2026-01-01), plus a day per version of a replaced photo.
PHOTOS_MODIFIED = 1_767_225_600

MAX_BODY_BYTES = 1024 * 1024
MAX_SOURCE_BYTES = 32 * 1024 * 1024
_opener = build_opener(ProxyHandler({}))  # never a proxy: sources come from loopback only


class EnvelopeError(Exception):
    """An error answer: HTTP status, API code and message."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_source(url: str, index: int) -> bytes:
    """Download one source image; only loopback hosts are reachable from the sandbox."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnvelopeError(400, 400, f"imageUrl[{index}] is not a valid URL")
    if not _is_loopback_host(parts.hostname):
        raise EnvelopeError(400, 2001, f"Failed to download imageUrl[{index}]: host {parts.hostname} is unreachable")
    try:
        with _opener.open(url, timeout=15) as response:
            data: bytes = response.read(MAX_SOURCE_BYTES + 1)
    except OSError as err:
        raise EnvelopeError(400, 2001, f"Failed to download imageUrl[{index}]: {err}") from None
    return data


@functools.cache
def _tiny_png() -> bytes:
    """The answer of every edit in ``latency_only`` mode."""
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 200, 200)).save(out, "PNG")
    return out.getvalue()


def check_source(data: bytes, index: int, model: str) -> Image.Image:
    """Open a source and apply the format and per-model limits the real service applies."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError):
        raise EnvelopeError(400, 2002, f"imageUrl[{index}] is not a JPEG or PNG image") from None
    if img.format not in ("JPEG", "PNG"):
        raise EnvelopeError(400, 2002, f"imageUrl[{index}] is {img.format}; only JPEG and PNG are supported")
    limits = MODELS[model].source_limits
    if limits:
        w, h = img.size
        problems = []
        if len(data) > limits.max_bytes:
            problems.append(f"size {len(data)} bytes > {limits.max_bytes}")
        if w * h < limits.min_pixels:
            problems.append(f"{w}x{h} has fewer than {limits.min_pixels} pixels")
        if max(w, h) > limits.max_side:
            problems.append(f"{w}x{h} exceeds {limits.max_side}x{limits.max_side}")
        if min(w, h) <= limits.min_side_exclusive:
            problems.append(f"width and height must be > {limits.min_side_exclusive}")
        if not limits.min_aspect <= w / h <= limits.max_aspect:
            problems.append(f"aspect ratio {w / h:.3f} outside [1/3, 3]")
        if problems:
            raise EnvelopeError(400, 2003, f"imageUrl[{index}] does not meet {model} limits: {'; '.join(problems)}")
    return img


def check_payload(payload: Any) -> tuple[str, str, str, list[str]]:
    """The service's own checks of the JSON body."""
    if not isinstance(payload, dict):
        raise EnvelopeError(400, 400, "Request body must be a JSON object")
    prompt, model, ratio, urls = (payload.get(k) for k in ("prompt", "model", "aspectRatios", "imageUrl"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise EnvelopeError(400, 400, "prompt is required")
    if model not in MODELS:
        raise EnvelopeError(400, 400, f"Unsupported model: {model}")
    if ratio not in ASPECT_RATIOS or ratio not in MODELS[model].aspect_ratios:
        raise EnvelopeError(400, 400, f"Unsupported aspectRatios: {ratio}")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise EnvelopeError(400, 400, "imageUrl must be a non-empty array of URLs")
    if len(urls) > MODELS[model].max_images:
        raise EnvelopeError(400, 400, f"{model} accepts at most {MODELS[model].max_images} images")
    for i, url in enumerate(urls):
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback_host(parts.hostname or "")):
            raise EnvelopeError(400, 400, f"imageUrl[{i}] must be an https URL")
    return prompt, model, ratio, urls


class SandboxHandler(BaseHTTPRequestHandler):
    """One request of the sandbox; ``server.state`` holds everything shared."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: SandboxServer
    call: dict[str, Any] | None = None  # the API call this request is, in the ledger since it arrived

    def log_message(self, format: str, *args: Any) -> None:
        """Log requests only with ``--verbose``."""
        if self.server.verbose:
            super().log_message(format, *args)

    @property
    def state(self) -> SandboxState:
        """The sandbox's shared state."""
        return self.server.state

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _envelope(self, status: int, code: int, msg: str, data: Any = None, request_id: str | None = None) -> None:
        request_id = request_id or uuid.uuid4().hex
        body = {"code": code, "data": data, "msg": msg, "time": int(time.time() * 1000), "requestId": request_id}
        self._json(status, body, {"X-Request-Id": request_id})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise EnvelopeError(413, 413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _client_gone(self) -> bool:
        """Whether the client closed its end while the edit ran (it sends nothing while it waits)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _authorized(self) -> bool:
        key = (self.headers.get("APIKEY") or "").strip()
        expected = self.state.config.api_key
        return bool(key) and (expected is None or key == expected)

    # -- routing ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        """Route a GET."""
        self._route("GET")

    def do_HEAD(self) -> None:
        """Route a HEAD like a GET, without a body."""
        self._route("GET")

    def do_POST(self) -> None:
        """Route a POST."""
        self._route("POST")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        api = {("POST", "/api/v1/image/edit"): "edit", ("GET", "/api/v1/mySubscription"): "balance"}.get((method, path))
        if path.startswith("/__sandbox__/"):  # scripting and inspection are not traffic: a reset waits for traffic
            self._answer(method, path, parts.query)
            return
        self.call = self.state.arrive(api)
        try:
            self._answer(method, path, parts.query)
        finally:
            self.state.depart(self.call)
            self.call = None

    def _record(self, path: str, outcome: str, **details: Any) -> None:
        """The outcome of this request's API call (or a new ledger line for another path)."""
        call = self.call if self.call is not None and self.call["path"] == path else None
        self.state.record(path, outcome, call, **details)

    def _answer(self, method: str, path: str, query: str) -> None:
        try:
            body = self._read_body() if method == "POST" else b""
            if method == "POST" and path == "/api/v1/image/edit":
                self._edit(body)
            elif method == "GET" and path == "/api/v1/mySubscription":
                self._balance()
            elif method == "GET" and path.startswith("/results/"):
                self._result(path.removeprefix("/results/"))
            elif method == "GET" and path.startswith("/samples/"):
                self._sample(path.removeprefix("/samples/"), parse_qs(query))
            elif method == "GET" and path.startswith("/images/"):
                self._local_image(path.removeprefix("/images/"))
            elif method == "GET" and path.startswith("/pages/"):
                self._page(path.removeprefix("/pages/"))
            elif path.startswith("/__sandbox__/"):
                self._admin(method, path.removeprefix("/__sandbox__/"), body)
            else:
                raise EnvelopeError(404, 404, f"No route for {method} {path}")
        except EnvelopeError as err:
            self._envelope(err.status, err.code, err.msg)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # an emulator answers with an envelope, never a stack trace
            self._envelope(500, 500, f"Sandbox internal error: {type(err).__name__}")

    # -- API -------------------------------------------------------------------------------------

    def _fault_before(self, fault: Fault | None, path: str, fp: str | None) -> bool:
        """Answer a scripted fault that happens before any work; ``True`` when answered."""
        if fault is None or fault.after_work:
            return False
        self._record(path, f"fault:{fault.kind}", fingerprint=fp, credits=0)
        if fault.kind == "rate_limit":
            self._too_many_requests(fault.msg, None if fault.retry_after is None else f"{fault.retry_after:g}")
        elif fault.kind in ("http_error", "html_error"):
            self._error_answer(fault)
        elif fault.kind == "drop":
            self.close_connection = True
        elif fault.kind == "insufficient_balance":
            self._envelope(200, 1001, "Insufficient balance")
        elif fault.kind == "unknown_code":
            self._envelope(200, fault.code or 9999, fault.msg or "Unknown error")
        elif fault.kind == "huge_body":
            self._huge_body(fault.size)
        elif fault.kind == "redirect":
            self._send(302, b"", "text/plain", {"Location": fault.location or self.path})
        elif fault.kind == "failed_edit":
            reason = fault.fail_reason or "Content moderation failed"
            data = {"id": self.state.new_id(), "status": 0, "failReason": reason, "imageUrl": "", "model": "",
                    "duration": "0"}
            self._envelope(200, 0, "", data)
        return True

    def _too_many_requests(self, msg: str | None, retry_after: str | None) -> None:
        """The API's 429 (a scripted ``rate_limit`` fault, or the account's rate limit), with ``Retry-After``
        when given."""
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        body = {"code": 429, "data": None, "msg": msg or "Too many requests", "time": int(time.time() * 1000)}
        self._json(429, body, headers)

    def _over_rate_limit(self, raw: bytes) -> bool:
        """Take a token of the account's rate limit for an edit; when there is none, answer 429 with the whole
        seconds until there is one (at least 1) in ``Retry-After``, nothing charged, and ``True``."""
        wait = self.state.take_token()
        if wait is None:
            return False
        try:
            payload = json.loads(raw or b"null")
        except ValueError:
            payload = None
        retry_after = max(1, math.ceil(wait))
        fp = fingerprint(payload) if isinstance(payload, dict) else None
        self._record("edit", "rate_limited", fingerprint=fp, credits=0, retry_after=retry_after)
        self._too_many_requests(None, str(retry_after))
        return True

    def _error_answer(self, fault: Fault) -> None:
        """An error status with an envelope (``http_error``) or a proxy's HTML page (``html_error``)."""
        if fault.kind == "http_error":
            status = fault.status or 500
            self._envelope(status, fault.code or status, fault.msg or "Internal server error")
        else:
            status = fault.status or 502
            page = f"<!DOCTYPE html><html><head><title>{status} Bad Gateway</title></head><body>nginx</body></html>"
            self._send(status, page.encode(), "text/html")

    def _huge_body(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * 65536
        sent = 0
        with contextlib.suppress(OSError):
            while sent < size:
                piece = chunk[: size - sent]
                self.wfile.write(piece)
                sent += len(piece)
        self.close_connection = True

    def _edit(self, raw: bytes) -> None:
        # the account's rate limit comes first (the gateway's, before the service sees it: no scripted fault is
        # used up); a request without a valid key belongs to no account and is answered 401 as ever
        authorized = self._authorized()
        if authorized and self._over_rate_limit(raw):
            return
        fault = self.state.take_fault("edit")
        if not authorized:
            self._record("edit", "unauthorized", credits=0)
            raise EnvelopeError(401, 401, "Invalid API key")
        try:
            payload = json.loads(raw or b"null")
        except ValueError:
            self._record("edit", "rejected", credits=0, reason="body is not JSON")
            raise EnvelopeError(400, 400, "Request body is not valid JSON") from None
        fp = fingerprint(payload) if isinstance(payload, dict) else None
        if self.call is not None:
            self.state.record("edit", "in_flight", self.call, fingerprint=fp)
        if self._fault_before(fault, "edit", fp):
            return
        started = time.monotonic()
        try:
            prompt, model, ratio, urls = check_payload(payload)
            price = MODELS[model].credits
            png, ops, sources = self._work(prompt, model, ratio, urls)
        except EnvelopeError as err:
            self._record("edit", "rejected", fingerprint=fp, credits=0, reason=err.msg)
            raise
        delay = self.state.config.latency_for(model) - (time.monotonic() - started)
        if delay > 0:
            time.sleep(delay)
        charged = self._charge(fp, model, price, ops, png, sources)
        if charged is None:
            return
        result_id, request_id = charged
        data = {
            "id": int(result_id), "userId": 657890123456789,
            "imageUrl": f"http://{self.headers.get('Host', 'localhost')}/results/{result_id}.png",
            "prompt": prompt, "model": model, "aspectRatios": ratio, "referenceImageUrl": urls,
            "status": 1, "failReason": None, "deleted": 0,
            "duration": f"{time.monotonic() - started:.2f}", "createdAt": int(time.time() * 1000),
        }
        self._after_edit(fault, data, request_id)

    def _charge(self, fp: str | None, model: str, price: int, ops: list[str], png: bytes, sources: list[str]
                ) -> tuple[str, str] | None:
        """Charge a finished edit and keep its result: its id and request id, or ``None`` when its client
        hung up (cancelled and free, or with ``charge_hung_up`` charged and never answered)."""
        hung_up = self._client_gone()
        if hung_up and not self.state.config.charge_hung_up:  # like a server that cancels the work (499)
            self._record("edit", "cancelled", fingerprint=fp, credits=0, reason="client closed the connection")
            self.close_connection = True
            return None
        if not self.state.charge(price):
            self._record("edit", "rejected", fingerprint=fp, credits=0, reason="Insufficient balance")
            raise EnvelopeError(200, 1001, "Insufficient balance")
        result_id = self.state.new_id()
        self.state.store_result(result_id, png)
        request_id = uuid.uuid4().hex
        self._record("edit", "charged", fingerprint=fp, credits=price, model=model, id=result_id,
                     request_id=request_id, operations=ops, hung_up=hung_up, sources_sha256=sources,
                     result_sha256=hashlib.sha256(png).hexdigest())
        if hung_up:  # charged, but nobody is there to read the answer
            self.close_connection = True
            return None
        return result_id, request_id

    def _work(self, prompt: str, model: str, ratio: str, urls: list[str]) -> tuple[bytes, list[str], list[str]]:
        """The edit itself, after the checks the service makes first (balance, then each source); with the
        sha256 of each source's bytes as fetched (the ledger's record of what was edited)."""
        if self.state.balance < MODELS[model].credits:
            raise EnvelopeError(200, 1001, "Insufficient balance")
        if self.state.config.latency_only:
            return _tiny_png(), ["none"], []
        fetched = [self._fetch(url, i) for i, url in enumerate(urls)]
        sources = [check_source(data, i, model) for i, data in enumerate(fetched)]
        return (*edits.edit(sources, prompt, ratio), [hashlib.sha256(data).hexdigest() for data in fetched])

    def _after_edit(self, fault: Fault | None, data: dict[str, Any], request_id: str) -> None:
        """Answer a charged edit, mangled by a fault that strikes after the work was done."""
        kind = fault.kind if fault else None
        if kind == "slow":
            time.sleep(fault.delay)  # type: ignore[union-attr]
        if kind == "drop":
            self.close_connection = True
            return
        if kind in ("http_error", "html_error"):  # a gateway that gave up while the edit was done and charged
            self._error_answer(fault)  # type: ignore[arg-type]
            return
        body = json.dumps({"code": 0, "data": data, "msg": "", "time": int(time.time() * 1000),
                           "requestId": request_id}).encode()
        if kind == "malformed_json":
            self._send(200, body[: len(body) // 2] + b"<<garbled", "application/json")
        elif kind == "truncated_body":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            self._send(200, body, "application/json", {"X-Request-Id": request_id})

    def _slow_read(self, fault: Fault | None, path: str) -> None:
        """A ``slow`` fault on a read (the balance, a result): wait ``delay`` seconds, then answer as usual."""
        if fault is not None and fault.kind == "slow":
            if path != "balance":
                self._record(path, "fault:slow", credits=0)
            time.sleep(fault.delay)

    def _balance(self) -> None:
        fault = self.state.take_fault("balance")
        if not self._authorized():
            self._record("balance", "unauthorized")
            raise EnvelopeError(401, 401, "Invalid API key")
        if self._fault_before(fault, "balance", None):
            return
        self._slow_read(fault, "balance")
        self._record("balance", "ok")
        data = {"monthBalance": 0, "imageBalance": self.state.balance, "videoBalance": 0,
                "monthStartDate": None, "monthExpireDate": None}
        self._envelope(200, 0, "", data)

    # -- files -----------------------------------------------------------------------------------

    def _result(self, name: str) -> None:
        fault = self.state.take_fault("results")
        if self._fault_before(fault, "results", None):
            return
        self._slow_read(fault, "results")
        data = self.state.get_result(name.removesuffix(".png"))
        if data is None:
            self._send(404, b"Not Found", "text/plain")
            return
        self._send(200, data, "image/png")

    def _sample(self, name: str, query: dict[str, list[str]]) -> None:
        """A sample image as a CDN serves it: validators (an ETag and Last-Modified; ``validators=etag``,
        ``modified`` or ``none`` keeps only one or neither), a conditional request answered 304 when the photo
        is unchanged, ``Range`` honoured (unless ``norange=1``), an optional ``delay=S`` before answering, and
        ``close=1`` closing the connection after the answer without saying so (a server whose keep-alive timeout
        passed)."""
        if self._fault_before(self.state.take_fault("samples"), "samples", None):
            return  # the photo's server is down, say
        data, content_type = self._sample_bytes(name, query)
        self.close_connection = self.close_connection or query.get("close", ["0"])[0] not in ("", "0")
        time.sleep(min(float(query.get("delay", ["0"])[0] or 0), 60.0))
        kept = query.get("validators", ["etag,modified"])[0].split(",")
        version = self.state.photo_versions.get(edits.photo_key(name, query), 1)
        served = self.state.photo_served.get(edits.photo_key(name, query), 0)  # re-served: new validators
        tag = hashlib.sha256(data + (f"|{served}".encode() if served else b"")).hexdigest()[:16]
        validators = {"ETag": f'"{tag}"' if "etag" in kept else "",
                      "Last-Modified": formatdate(PHOTOS_MODIFIED + version * 86_400 + served * 3_600, usegmt=True)
                      if "modified" in kept else ""}
        validators = {header: value for header, value in validators.items() if value}
        if self.command == "HEAD":
            self.state.count_source_read("HEAD", self.path)
            self._send(200, data, content_type, validators)  # the body's length, no body
            return
        if self._not_modified(validators):
            self.state.count_source_read("304", self.path)
            self._send(304, b"", content_type, validators)
            return
        self._send_ranged(data, content_type, ranges="norange" not in query, headers=validators)

    def _not_modified(self, validators: dict[str, str]) -> bool:
        """Whether a conditional request's validators match (RFC 9110: If-None-Match wins over If-Modified-Since)."""
        match, since = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        if match is not None:
            etag = validators.get("ETag", "").removeprefix("W/")
            return bool(etag) and (match.strip() == "*" or etag in (t.strip().removeprefix("W/")
                                                                      for t in match.split(",")))
        modified = validators.get("Last-Modified")
        if since is None or modified is None:
            return False
        try:
            return parsedate_to_datetime(modified) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False

    def _send_ranged(self, data: bytes, content_type: str, *, ranges: bool, headers: dict[str, str]) -> None:
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "") if ranges else None
        headers = dict(headers)
        if ranges:
            headers["Accept-Ranges"] = "bytes"
        if wanted and int(wanted.group(1)) < len(data):
            start = int(wanted.group(1))
            end = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self.state.count_source_read("206", self.path, end + 1 - start)
            self._send(206, data[start : end + 1], content_type, headers)
        else:
            self.state.count_source_read("200", self.path, len(data))
            self._send(200, data, content_type, headers)

    def _page(self, name: str) -> None:
        """An HTML page where an image was expected: what a private bucket's sign-in redirect serves."""
        if name != "login.html":
            raise EnvelopeError(404, 404, f"No page {name}; pages: login.html")
        self._send(200, b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>", "text/html")

    def _sample_bytes(self, name: str, query: dict[str, list[str]]) -> tuple[bytes, str]:
        stem, _, ext = name.partition(".")
        if not edits.is_sample_file(name):
            raise EnvelopeError(404, 404, f"No sample {name}: use a name of letters, digits, '-' and '_' with .png or "
                                ".jpg; mug, sneaker, lamp, chair, bottle and watch are drawn as such, any other "
                                "name gets a photo of its own")
        try:
            w = int(query.get("w", ["1280"])[0])
            h = int(query.get("h", ["960"])[0])
        except ValueError:
            raise EnvelopeError(400, 400, "w and h must be integers") from None
        if not (1 <= w <= 8000 and 1 <= h <= 8000):
            raise EnvelopeError(400, 400, "w and h must be between 1 and 8000")
        version = self.state.photo_versions.get(edits.photo_key(name, query), 1)
        grain = query.get("grain", ["0"])[0] not in ("", "0")
        return edits.sample_image(stem, w, h, ext, version, grain), "image/jpeg" if ext == "jpg" else "image/png"

    def _local_image(self, name: str) -> None:
        self._send(200, *self._local_image_bytes(name))

    def _local_image_bytes(self, name: str) -> tuple[bytes, str]:
        root = self.state.config.images_dir
        if not root:
            raise EnvelopeError(404, 404, "No images folder configured (start with --images DIR)")
        base = Path(root).resolve()
        target = (base / name).resolve()
        if base not in target.parents or not target.is_file():
            raise EnvelopeError(404, 404, f"No image {name}")
        return target.read_bytes(), mimetypes.guess_type(target.name)[0] or "application/octet-stream"

    def _fetch(self, url: str, index: int) -> bytes:
        """A source image: the sandbox's own samples and images are read directly (the same bytes
        its HTTP routes serve, without a request to itself); other loopback URLs are fetched."""
        parts = urlsplit(url)
        own_port = self.server.server_address[1]
        if _is_loopback_host(parts.hostname or "") and parts.port == own_port:
            path = unquote(parts.path)
            try:
                if path.startswith("/samples/"):
                    return self._sample_bytes(path.removeprefix("/samples/"), parse_qs(parts.query))[0]
                if path.startswith("/images/"):
                    return self._local_image_bytes(path.removeprefix("/images/"))[0]
            except EnvelopeError as err:
                raise EnvelopeError(400, 2001, f"Failed to download imageUrl[{index}]: {err.msg}") from None
        return fetch_source(url, index)

    # -- inspection and scripting ----------------------------------------------------------------

    def _admin(self, method: str, name: str, raw: bytes) -> None:
        if method == "GET" and name == "ledger":
            self._json(200, self.state.ledger())
        elif method == "GET" and name == "health":
            self._json(200, {"ok": True})
        elif method == "GET" and name == "faults":
            self._json(200, {"faults": [vars(f) for f in self.state.faults]})
        elif method == "POST" and name == "expire":  # every result URL given so far answers 404 from now on
            with self.state.lock:
                expired = len(self.state.results)
                self.state.results.clear()
            self._json(200, {"expired": expired})
        elif method == "POST" and name == "photos":  # {"name": "mug.png", "w": 40, "h": 30, "version": 2}
            key, version = self._replace_photo(raw)
            self._json(200, {"photo": key, "version": version})
        elif method == "POST" and name in ("faults", "reset"):
            try:
                body = json.loads(raw or b"{}")
                if name == "reset":  # rate_limit and rate_burst absent: the limit the sandbox was started with
                    rate = ((body.get("rate_limit"), body.get("rate_burst"))
                            if "rate_limit" in body or "rate_burst" in body else None)
                    self.state.reset(body.get("balance"), body.get("latency"), rate)
                    self._json(200, {"balance": self.state.balance})
                else:
                    faults = self.state.add_faults(body.get("faults", []))
                    self._json(200, {"added": len(faults)})
            except (ValueError, TypeError, AttributeError) as err:
                raise EnvelopeError(400, 400, f"Bad sandbox request: {err}") from None
        else:
            raise EnvelopeError(404, 404, f"No sandbox route {method} /__sandbox__/{name}")


    def _replace_photo(self, raw: bytes) -> tuple[str, int]:
        """``POST /__sandbox__/photos``: the photo at ``/samples/<name>?w=&h=`` replaced by its next version
        (or ``version``); a request that would replace nothing a sample URL serves is refused with a 400."""
        try:
            body = json.loads(raw or b"{}")
            name = str(body["name"])
            size = {"w": [str(int(body.get("w", 1280)))], "h": [str(int(body.get("h", 960)))]}
            version = body.get("version")
            version = None if version is None else int(version)
            reserved = bool(body.get("reserve", False))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise EnvelopeError(400, 400, f"Bad sandbox request: {type(err).__name__} {err}; send "
                                '{"name": "sku-0007.png"}, optionally with "w", "h" (which URL variant) and '
                                '"version" (default: the next one), or "reserve": true (the same bytes under new '
                                'validators)') from None
        if not edits.is_sample_file(name):
            raise EnvelopeError(400, 400, f"name={name!r} is not a sample's file name: give it as in the URL, with "
                                "its extension, such as 'sku-0007.png' or 'mug.jpg'")
        key = edits.photo_key(name, size)
        with self.state.lock:
            if reserved:  # the same bytes, served with a new ETag and Last-Modified (another CDN node, a re-upload)
                self.state.photo_served[key] = self.state.photo_served.get(key, 0) + 1
                return key, self.state.photo_versions.get(key, 1)
            current = self.state.photo_versions.get(key, 1)
            self.state.photo_versions[key] = current + 1 if version is None else version
            return key, self.state.photo_versions[key]


class SandboxServer(ThreadingHTTPServer):
    """A threading HTTP server holding the sandbox state."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: SandboxState, verbose: bool = False) -> None:
        super().__init__(address, SandboxHandler)
        self.state = state
        self.verbose = verbose

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (or a scripted drop) is not an error worth a traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        """Where the sandbox listens, e.g. ``http://127.0.0.1:8080``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


@contextlib.contextmanager
def run_sandbox(
    config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[SandboxServer]:
    """Run a sandbox in a background thread for the ``with`` block; ``.base_url`` says where.

    :param config: balance, key, latency, result TTL, images folder, rate limit.
    :param port: 0 picks a free port.
    """
    server = SandboxServer((host, port), SandboxState(config or SandboxConfig()))
    thread = threading.Thread(target=server.serve_forever, name="cutout-sandbox", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
