"""Source images, read before any credit is spent: what one source's headers and first bytes say
(``inspect``: one ranged GET, no API key), and the rules a model puts on it (``source_problems``)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import imagesize
import requests

from airflow_provider_cutout.api.downloads import image_extension
from airflow_provider_cutout.api.models import MODELS
from airflow_provider_cutout.api.transport import CHUNK_BYTES, Transport
from airflow_provider_cutout.texts import shorten

SOURCE_HEAD_BYTES = 128 * 1024  # enough for a JPEG's size behind its EXIF and ICC segments

SOURCE_FORMATS: tuple[str, ...] = ("jpeg", "png")  # what the API fetches, for every model
_FIX = ("fix the URL, or set check_sources=False if only Cutout.Pro can reach this source (nothing else "
        "about it is then checked before the edit is paid for)")


@dataclass(frozen=True)
class SourceInfo:
    """What one source image's first bytes and headers say, read before any credit is spent.

    :param url: the source as given.
    :param status: the HTTP status (0: no answer).
    :param format: ``jpeg``, ``png``, or what it looks like instead (``html``, ``unknown``).
    :param size: bytes, from ``Content-Range`` / ``Content-Length`` (``None``: not said).
    :param width: pixels, from the image header (``None``: not found in the bytes read).
    :param height: pixels, likewise.
    :param version: the content version: the ETag, else Last-Modified and size, else a hash of the bytes read.
    :param error: why no answer came (a timeout, a refused connection), else ``""``.
    """

    url: str
    status: int
    format: str = "unknown"
    size: int | None = None
    width: int | None = None
    height: int | None = None
    version: str = ""
    error: str = ""


def source_problems(info: SourceInfo, model: str, where: str) -> list[str]:
    """The rules a source breaks for ``model`` (reachable, JPEG or PNG, the model's limits), each naming the
    field, the value, the rule and the fix; empty when it passes."""
    shown = f"{where}={shorten(info.url)}"
    if info.error or not 200 <= info.status < 300:
        answer = info.error or f"answered HTTP {info.status}"
        return [f"{shown} could not be read ({answer}): the API fetches it itself and would fail; {_FIX}"]
    if info.format not in SOURCE_FORMATS:
        return [f"{shown} is not a JPEG or PNG image (it looks like {info.format}): the API accepts JPEG and PNG "
                f"sources only; point it at the image itself, or convert the image"]
    limits = MODELS[model].source_limits
    if limits is None:
        return []
    problems = []
    if info.size is not None and info.size > limits.max_bytes:
        problems.append(f"{shown} is {info.size:,} bytes; model={model!r} accepts at most {limits.max_bytes:,}: "
                        "compress or downscale it")
    if info.width is None or info.height is None:
        return [*problems, f"{shown}: its pixel size could not be read from its first bytes, and model={model!r} "
                           f"limits it; {_FIX}"]
    w, h = info.width, info.height
    size = f"{w}x{h}"
    if w * h < limits.min_pixels:
        problems.append(f"{shown} is {size} ({w * h:,} pixels); model={model!r} needs at least "
                        f"{limits.min_pixels:,} pixels (e.g. 1280x720): use a larger image")
    if max(w, h) > limits.max_side:
        problems.append(f"{shown} is {size}; model={model!r} accepts at most {limits.max_side} pixels per side: "
                        "downscale it")
    if min(w, h) <= limits.min_side_exclusive:
        problems.append(f"{shown} is {size}; model={model!r} needs both sides over {limits.min_side_exclusive} "
                        "pixels")
    if not limits.min_aspect <= w / h <= limits.max_aspect:
        problems.append(f"{shown} is {size} (aspect {w / h:.2f}); model={model!r} accepts aspect ratios from "
                        f"{limits.min_aspect:.2f} to {limits.max_aspect:g}: crop it")
    return problems


def inspect(transport: Transport, url: str) -> SourceInfo:
    """Read a source image's headers and first bytes (a ranged GET; a server that ignores ranges is read
    up to ``SOURCE_HEAD_BYTES`` only), without the API key and without spending anything.

    :param transport: the client's transport (its session and proxies; no retries: a check is cheap to redo).
    :param url: the source image's URL, as the API will fetch it.
    """
    timeout_s = transport.settings.source_timeout
    timeout = (min(transport.settings.connect_timeout, timeout_s), timeout_s)
    headers = {"Range": f"bytes=0-{SOURCE_HEAD_BYTES - 1}", "Accept": "image/jpeg, image/png"}
    try:
        with transport.session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=True,
                                   proxies=transport.proxies_for(url)) as response:
            if not 200 <= response.status_code < 300:
                return SourceInfo(url, response.status_code)
            return _source_info(url, response, _read_head(response, SOURCE_HEAD_BYTES))
    except requests.RequestException as err:
        return SourceInfo(url, 0, error=source_error(err, timeout_s))


def source_error(err: requests.RequestException, timeout: float) -> str:
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
    kind = _format(response, head)
    width = height = None
    if kind in SOURCE_FORMATS:
        try:
            width, height = imagesize.get(io.BytesIO(head))
        except (ValueError, OSError, IndexError):  # a header beyond the bytes read
            pass
        width, height = (width, height) if width and height and width > 0 and height > 0 else (None, None)
    etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    version = etag or (f"{modified}|{size}" if modified else "sha256:" + hashlib.sha256(head).hexdigest()[:32])
    return SourceInfo(url, response.status_code, kind, size, width, height, version)


def _format(response: requests.Response, head: bytes) -> str:
    """``jpeg``, ``png``..., from the magic bytes; else ``html`` or the declared type."""
    extension = image_extension(head)
    if extension:
        return "jpeg" if extension == ".jpg" else extension[1:]
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    return "html" if b"<html" in head[:1024].lower() or "html" in content_type else content_type or "unknown"
