"""Result downloads: an edited image streamed with bounded memory, https only (loopback http beside a
loopback API), checked to be an image within the size cap; the API key is never sent."""

from __future__ import annotations

from typing import IO

import requests

from airflow_provider_cutout.api.transport import CHUNK_BYTES, Transport
from airflow_provider_cutout.api.urls import is_loopback_url
from airflow_provider_cutout.exceptions import CutoutConnectionError, ResultDownloadError

_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"GIF87a": ".gif", b"GIF89a": ".gif"}


def image_extension(head: bytes) -> str | None:
    """The file extension of an image from its first 12 bytes, or ``None`` if it is no image."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _IMAGE_SIGNATURES.items() if head.startswith(magic)), None)


def download(transport: Transport, url: str, sink: IO[bytes], limit: int) -> tuple[int, str]:
    """Stream the image at ``url`` into ``sink``; return the byte count and the image's file extension.

    :param transport: the client's transport (its retry policy applies to the GET).
    :param url: the result URL returned by the API.
    :param sink: a binary file object opened for writing.
    :param limit: the size cap in bytes.
    """
    if not url.startswith("https://") and not (
        is_loopback_url(url) and is_loopback_url(transport.settings.base_url) and url.startswith("http://")
    ):
        raise ResultDownloadError(f"result URL {url[:200]!r} is not an https:// URL; refusing to fetch it")
    with transport.with_retries("GET", url, transport.open_stream) as response:
        _check(response, url, limit)
        return _stream(response, sink, url, limit)


def _check(response: requests.Response, url: str, limit: int) -> None:
    """Refuse a result answer that is no image to store: expired, an error, or over the size cap."""
    shown = url[:200]
    if response.status_code in (403, 404, 410):  # a signed URL past its expiry answers 403
        raise ResultDownloadError(f"result URL {shown!r} answered HTTP {response.status_code}: it has expired or "
                                  "never existed; result URLs are temporary, store results with output_path",
                                  gone=True)
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
