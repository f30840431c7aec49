"""Versions of object-store sources from listings: the ETag of every object in a folder comes with one
request per page of the listing (1,000 objects on S3), instead of one request per object."""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


def listed_etags(uris: Iterable[str]) -> dict[str, str]:
    """The ETag of each object-store URI (``s3://conn_id@bucket/folder/photo.jpg``) that a listing of its folder
    shows; a URI whose folder cannot be listed, or that is not in it, is left out (its source is then read).

    :param uris: object-store URIs; each distinct folder is listed once.
    """
    from airflow.sdk import ObjectStoragePath

    folders: dict[str, list[str]] = {}
    for uri in uris:
        folder, _, _ = uri.rpartition("/")
        folders.setdefault(folder, []).append(uri)
    found: dict[str, str] = {}
    for folder, members in folders.items():
        path = ObjectStoragePath(folder + "/")
        try:
            path.fs.invalidate_cache(path.path)  # an earlier listing in this process may be stale
            listing = path.fs.ls(path.path, detail=True)
        except (OSError, ValueError, NotImplementedError) as err:
            log.info("Cutout sources: %s could not be listed (%s: %s); its sources are read one by one",
                     folder.split("@")[-1], type(err).__name__, err)
            continue
        etags = {str(entry.get("name", "")).rstrip("/").rpartition("/")[2]: entry.get("ETag") or entry.get("etag")
                 for entry in listing if isinstance(entry, dict) and entry.get("type") == "file"}
        for uri in members:
            etag = etags.get(uri.rpartition("/")[2])
            if isinstance(etag, str) and etag:
                found[uri] = etag
    return found
