"""Versions of object-store sources from listings: the ETag of every object in a folder comes with one
request per page of the listing (1,000 objects on S3), instead of one request per object, for folders that
hold many of a catalog's sources."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


#: A folder is listed only when at least this many sources are in it: a listing reads the whole folder (one
#: request per 1,000 objects on S3), so a few photos among many other objects are asked one by one instead.
LISTING_MIN_SOURCES = 100


def listed_etags(uris: Iterable[str], *, concurrency: int = 8) -> dict[str, frozenset[str]]:
    """The ETag of each object-store URI (``s3://conn_id@bucket/folder/photo.jpg``) that a listing of its folder
    shows, in each form the object's HTTP ``ETag`` header may take (what a read of the source records), for
    folders that hold at least ``LISTING_MIN_SOURCES`` of them (``concurrency`` listed at a time); a URI whose
    folder is not listed, cannot be listed, or does not show it is left out (its source is read).

    :param uris: object-store URIs.
    """
    folders: dict[str, list[str]] = {}
    for uri in uris:
        folders.setdefault(uri.rpartition("/")[0], []).append(uri)
    listed = [folder for folder, members in folders.items() if len(members) >= LISTING_MIN_SOURCES]
    found: dict[str, frozenset[str]] = {}
    if not listed:
        return found
    with ThreadPoolExecutor(max(1, min(concurrency, len(listed))), thread_name_prefix="cutout-listing") as pool:
        for folder, etags in zip(listed, pool.map(_folder_etags, listed), strict=True):
            for uri in folders[folder]:
                etag = etags.get(uri.rpartition("/")[2])
                if etag:
                    found[uri] = etag
    return found


def _folder_etags(folder: str) -> dict[str, frozenset[str]]:
    """The ETags of each object in ``folder`` by its name; empty when it cannot be listed."""
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(folder + "/")
    try:
        path.fs.invalidate_cache(path.path)  # an earlier listing in this process may be stale
        listing = path.fs.ls(path.path, detail=True)
    except Exception as err:  # a listing only saves requests: whatever fails, the sources are read instead
        log.info("Cutout sources: %s could not be listed (%s: %s); its sources are read one by one",
                 folder.split("@")[-1], type(err).__name__, err)
        return {}
    etags = {}
    for entry in listing:
        forms = header_forms(entry) if isinstance(entry, dict) and entry.get("type") == "file" else frozenset()
        if forms:
            etags[str(entry.get("name", "")).rstrip("/").rpartition("/")[2]] = forms
    return etags


def header_forms(entry: dict[str, Any]) -> frozenset[str]:
    """The values a listed object's HTTP ``ETag`` header may have: its listed ETag, quoted as the header quotes
    it (S3 listings quote it already; GCS's ``6qFe...==`` and Azure's ``0x8DC...`` are bare), and on GCS the
    MD5 in hex, which GCS's XML API (where signed URLs point) gives as the ETag of an object uploaded whole."""
    forms = set()
    etag = entry.get("ETag") or entry.get("etag")
    if isinstance(etag, str) and etag:
        forms.add(etag if etag.startswith(('"', 'W/"')) else f'"{etag}"')
    md5 = entry.get("md5Hash")
    if isinstance(md5, str) and md5:
        try:
            forms.add(f'"{base64.b64decode(md5, validate=True).hex()}"')
        except ValueError:
            pass
    return frozenset(forms)
