"""Source inspection: one ranged GET per source image (no API key, nothing spent) read into a
``SourceInfo``: status, format from the magic bytes, byte and pixel size, content version."""

from __future__ import annotations

import hashlib
import io

import imagesize
import requests

from airflow_provider_cutout.api.downloads import image_extension
from airflow_provider_cutout.api.sources import SOURCE_FORMATS, SourceInfo
from airflow_provider_cutout.api.transport import CHUNK_BYTES, Transport

SOURCE_HEAD_BYTES = 128 * 1024  # enough for a JPEG's size behind its EXIF and ICC segments


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
