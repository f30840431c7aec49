"""Source inspection: one GET per source image (no API key, nothing spent) read into a ``SourceInfo``:
status, format from the magic bytes, byte and pixel size, content version (the digest of its bytes) and
validator. Given what was recorded last time, an unchanged source answers without its bytes (a 304, or a
HEAD); one whose validators changed is hashed again, and the same bytes keep their version."""

from __future__ import annotations

import hashlib
import http.client
import io
from collections.abc import Iterator, Mapping

import imagesize
import requests

from airflow_provider_cutout.api.downloads import image_extension
from airflow_provider_cutout.api.sources import NOT_MODIFIED, SOURCE_FORMATS, Recorded, SourceInfo
from airflow_provider_cutout.api.transport import CHUNK_BYTES, Transport, etag_matches

SOURCE_HEAD_BYTES = 128 * 1024  # what earlier releases hashed for a version (kept while such a source is unchanged)
SOURCE_READ_BYTES = 16 * 1024 * 1024  # a source is hashed whole up to this (the models accept at most 10 MiB)


def inspect(transport: Transport, url: str, known: Recorded | None = None) -> SourceInfo:
    """Read a source image whole and hash it (no redirect is followed by the lean pool; a proxy's or a
    redirect's answer is read through the session), without the API key and without spending anything.

    :param transport: the client's transport (its pools and proxies; no retries: a check is cheap to redo).
    :param url: the source image's URL, as the API will fetch it.
    :param known: what was recorded when this source was read before. Its validator asks the server cheaply:
        an ETag makes the GET conditional (an unchanged source answers 304 without its bytes); Last-Modified and
        size are asked with a HEAD. Unchanged, the info says ``unchanged`` and holds the recorded version. A
        source whose validators changed is read and hashed again: the same bytes keep the same version.
    """
    known = known or Recorded("")
    timeout_s = transport.settings.source_timeout
    timeout = (min(transport.settings.connect_timeout, timeout_s), timeout_s)
    if _validator(known.validator) == "modified":  # Last-Modified and size: asked by a HEAD, not If-Modified-Since
        if _same_by_head(transport, url, known.validator, timeout):
            return _unchanged(url, known)
    headers = {"Accept": "image/jpeg, image/png", **conditional_headers(known.validator)}
    try:
        answer = transport.read_source(url, headers, timeout, limit=SOURCE_READ_BYTES)
    except (OSError, http.client.HTTPException) as err:
        return SourceInfo(url, 0, error=source_error(err, timeout_s))
    if answer is None or (300 <= answer.status < 400 and answer.status != NOT_MODIFIED):
        return _inspect_following(transport, url, headers, timeout, known)
    if answer.status == NOT_MODIFIED and known.validator and not etag_matches(answer.headers.get("ETag"),
                                                                              known.validator):
        return inspect(transport, url, Recorded(known.version))  # "not modified", another version: trust neither
    return _answer(url, answer.status, answer.headers, iter((answer.body,)), known)


def _unchanged(url: str, known: Recorded) -> SourceInfo:
    """A source unchanged since ``known`` was recorded: that version (which is its legacy version too, when an
    earlier release recorded it)."""
    return SourceInfo(url, NOT_MODIFIED, version=known.version, validator=known.validator, unchanged=True,
                      legacy=known.version)


def _inspect_following(transport: Transport, url: str, headers: dict[str, str], timeout: tuple[float, float],
                       known: Recorded) -> SourceInfo:
    """``inspect`` through the session: a source behind a proxy, or one that redirects."""
    try:
        with transport.session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=True,
                                   proxies=transport.proxies_for(url)) as response:
            return _answer(url, response.status_code, response.headers, response.iter_content(CHUNK_BYTES), known)
    except requests.RequestException as err:
        return SourceInfo(url, 0, error=source_error(err, timeout[1]))


def _validator(known: str) -> str:
    """What a recorded version (``_source_info``'s) is made of: ``etag``, ``modified`` (Last-Modified and size),
    or ``""`` (a hash of the bytes read, or nothing recorded)."""
    if known.startswith(('"', 'W/"')):
        return "etag"
    return "modified" if "|" in known and not known.startswith("sha256:") else ""


def conditional_headers(known: str) -> dict[str, str]:
    """What asks a server whether a source changed since the version ``known`` was read: ``If-None-Match``
    for an ETag; nothing else (a hash of the bytes read: read again)."""
    return {"If-None-Match": known} if _validator(known) == "etag" else {}


def _same_by_head(transport: Transport, url: str, known: str, timeout: tuple[float, float]) -> bool:
    """Whether a HEAD gives the version ``known`` (Last-Modified and size) again. Not ``If-Modified-Since``: a
    server answers it 304 for a file replaced by an older one (``cp -p``, ``rsync -a``, a restore)."""
    try:
        answer = transport.read_source(url, {"Accept": "image/jpeg, image/png"}, timeout, method="HEAD")
    except (OSError, http.client.HTTPException):
        return False
    if answer is None:  # behind a proxy: read as a new source
        return False
    modified, length = answer.headers.get("Last-Modified"), answer.headers.get("Content-Length")
    now = answer.headers.get("ETag") or (f"{modified}|{length}" if modified and length else "")
    return answer.status == 200 and now == known


def source_error(err: Exception, timeout: float) -> str:
    """Why a source gave no answer, without its URL (a signed URL is a credential; requests puts it in texts)."""
    if isinstance(err, (requests.Timeout, TimeoutError)):
        return f"no answer within source_timeout={timeout:g}s"
    if isinstance(err, requests.RequestException):  # an OSError too: its name says more (TooManyRedirects)
        return "the connection failed" if isinstance(err, requests.ConnectionError) else type(err).__name__
    if isinstance(err, (OSError, http.client.HTTPException)):
        return "the connection failed"
    return type(err).__name__


def _answer(url: str, status: int, headers: Mapping[str, str], chunks: Iterator[bytes], known: Recorded
            ) -> SourceInfo:
    if status == NOT_MODIFIED and known.validator:
        return _unchanged(url, known)
    if not 200 <= status < 300:
        return SourceInfo(url, status)
    return _source_info(url, status, headers, _read_head(chunks, SOURCE_READ_BYTES))


def _read_head(chunks: Iterator[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body."""
    kept, size = [], 0
    for chunk in chunks:
        kept.append(chunk[: limit - size])
        size += len(kept[-1])
        if size >= limit:
            break
    return b"".join(kept)


def _source_info(url: str, status: int, headers: Mapping[str, str], head: bytes) -> SourceInfo:
    """Format, byte size, pixel size, content version (the bytes' digest) and validator from a source's answer."""
    total = headers.get("Content-Range", "").rpartition("/")[2]
    length = headers.get("Content-Length") if status == 200 else None
    size = int(total) if total.isdigit() else int(length) if length and length.isdigit() else None
    kind = _format(headers, head)
    width = height = None
    if kind in SOURCE_FORMATS:
        try:
            width, height = imagesize.get(io.BytesIO(head))
        except (ValueError, OSError, IndexError):  # a header beyond the bytes read
            pass
        width, height = (width, height) if width and height and width > 0 and height > 0 else (None, None)
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    validator = etag or (f"{modified}|{size}" if modified and size is not None else "")
    legacy = etag or (f"{modified}|{size}" if modified else
                      "sha256:" + hashlib.sha256(head[:SOURCE_HEAD_BYTES]).hexdigest()[:32])
    return SourceInfo(url, status, kind, size, width, height, content_version(head, size), validator, legacy=legacy)


def content_version(body: bytes, size: int | None) -> str:
    """``sha256:`` and the digest of the bytes (and of the size a server said, when the read stopped at
    ``SOURCE_READ_BYTES``): what makes an edit's identity follow the photo, not its server's validators."""
    digest = hashlib.sha256(body)
    if len(body) >= SOURCE_READ_BYTES and size is not None and size != len(body):
        digest.update(f"|{size}".encode())
    return "sha256:" + digest.hexdigest()


def _format(headers: Mapping[str, str], head: bytes) -> str:
    """``jpeg``, ``png``..., from the magic bytes; else ``html`` or the declared type."""
    extension = image_extension(head)
    if extension:
        return "jpeg" if extension == ".jpg" else extension[1:]
    content_type = headers.get("Content-Type", "").split(";")[0].strip()
    return "html" if b"<html" in head[:1024].lower() or "html" in content_type else content_type or "unknown"
