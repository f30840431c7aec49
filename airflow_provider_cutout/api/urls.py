"""URL policy: the API's base URL, loopback addresses, object-store URIs, and which source URLs the API
can fetch. The standard library only."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_cutout.texts import shorten

DEFAULT_BASE_URL = "https://www.cutout.pro"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


_SPACE = re.compile(r"\s")


def is_loopback_url(url: str | None) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1 or localhost)."""
    if not url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_base_url(host: str | None, port: int | None = None) -> str:
    """The API's base URL from a connection's host (and port): a scheme added when missing (http for
    loopback hosts, the sandbox; https otherwise), no trailing slash; ``port`` when the host has none."""
    base = (host or "").strip().rstrip("/")
    if not base:
        return DEFAULT_BASE_URL
    if "://" not in base:
        base = f"{'http' if is_loopback_url(f'http://{base}') else 'https'}://{base}"
    if port and base.count(":") < 2:
        base = f"{base}:{port}"
    return base


#: Object stores whose URIs (``s3://conn_id@bucket/key``) are signed for the API by the hook.
OBJECT_STORE_SCHEMES: tuple[str, ...] = ("s3", "gs", "gcs", "abfs", "abfss")


def az_problem(field: str, path: str) -> str | None:
    """Why ``path`` cannot be used when it names Azure by ``az://`` (adlfs' other name for Azure Blob Storage,
    which Airflow's Azure provider does not register for ObjectStoragePath), else ``None``."""
    if path[:5].lower() != "az://":
        return None
    rest = path[5:200]
    return (f"{field}='az://{rest}' names Azure Blob Storage by a scheme Airflow does not register (its Azure "
            f"provider registers abfs://, abfss:// and adl://): write 'abfs://{rest}' (abfs://<connection "
            "id>@<container>/<path>)")


#: Where an output folder may be: a local path, or an object store with exclusive create.
FOLDER_SCHEMES: tuple[str, ...] = ("", "file", "s3", "gs", "gcs", "abfs", "abfss")


#: The stores' default connections: any DAG may use them, so run conf may name them.
DEFAULT_CONNECTIONS: tuple[str, ...] = ("aws_default", "google_cloud_default", "wasb_default")


def folder_problem(folder: str, template: str | None = None) -> str | None:
    """What makes ``folder`` (an ``output_dir`` as rendered) no folder to use or show, ``None`` when nothing does.

    :param template: the ``output_dir`` as written in the DAG file, before rendering: a connection id in the
        folder (``s3://conn_id@bucket/...``) must be written there, before any template, not chosen at run time
        (run conf could otherwise read and write with any connection's credentials), unless it is a store's
        default connection; ``None``: not checked.
    """
    parts = urlsplit(folder)
    if parts.scheme == "az":
        return az_problem("output_dir", folder)
    if parts.scheme not in FOLDER_SCHEMES or (not parts.scheme and not folder.startswith("/")):
        return (f"output_dir={folder[:300]!r} is not an absolute local path or a folder on a supported object store "
                f"({', '.join(s + '://' for s in FOLDER_SCHEMES if s)}): http(s), memory and other file systems "
                "are not output folders")
    if parts.scheme and "@" in parts.netloc and template is not None:
        literal = template.split("{{", 1)[0].split("{%", 1)[0]
        conn_id = parts.netloc.rsplit("@", 1)[0]  # as ObjectStoragePath reads it
        if conn_id not in DEFAULT_CONNECTIONS and not literal.startswith(f"{parts.scheme}://{conn_id}@"):
            return (f"output_dir names the connection {conn_id!r}, which the DAG file does not write before any "
                    f"template in output_dir ({template[:200]!r}): a connection chosen at run time (run conf) is "
                    f"refused unless it is a store's default ({', '.join(DEFAULT_CONNECTIONS)}); write it in the "
                    "DAG file")
    return None


def is_object_store_uri(url: str) -> bool:
    """Whether ``url`` names an object in a store the hook signs URLs for."""
    return urlsplit(url).scheme in OBJECT_STORE_SCHEMES


def check_source_url(value: Any, index: int, allow_http: bool) -> str:
    """A source image's URL as the API will fetch it, or a ``ValueError`` naming ``image_urls[index]``, the
    value and the fix: absolute https (plain http only on loopback with ``allow_http``), or an object URI."""
    where = f"image_urls[{index}]"
    if hasattr(value, "protocol") and hasattr(value, "sign"):  # an ObjectStoragePath
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string URL, got {type(value).__name__} {shorten(value)}")
    url = value.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as err:
        raise ValueError(f"{where}={shorten(url)} is not a valid URL ({err})") from None
    if parts.scheme == "az":
        raise ValueError(az_problem(where, url))
    if parts.scheme in OBJECT_STORE_SCHEMES and parts.netloc and parts.path.strip("/"):
        return url  # signed by the hook just before each use; the URI itself is what is kept and shown
    if parts.scheme in ("file", "local") or (not parts.scheme and url.startswith("/")):
        raise ValueError(
            f"{where}={shorten(url)} is a local file: the API fetches sources over HTTPS and a local file cannot "
            "be given a signed URL; put it on S3, GCS or Azure (its URI is signed for the API) or serve it over https"
        )
    if parts.scheme not in ("http", "https") or not host or _SPACE.search(url):
        raise ValueError(
            f"{where}={shorten(url)} is not a valid URL: give an absolute https:// URL of a JPEG "
            "or PNG image, such as 'https://example.com/photo.jpg', or an object URI such as "
            "'s3://aws_default@bucket/photo.jpg'"
        )
    if parts.scheme == "http" and not (allow_http and is_loopback_url(url)):
        raise ValueError(
            f"{where}={shorten(url)} uses plain http: the Cutout.Pro API fetches source images "
            "over HTTPS only, so use an https:// URL (plain http is accepted only for loopback "
            "URLs while the connection's base URL is loopback, as with the sandbox)"
        )
    return url


#: The loopback hosts a view served on loopback may load plain-http sources from (as its CSP lists them).
LOOPBACK_SOURCE_HOSTS = ("127.0.0.1", "localhost")


def browser_source(url: str, *, loopback: bool = False) -> str | None:
    """The URL a reviewer's browser may load a source image by, itself: an ``https://`` URL with no query and no
    user or password (a query may sign or authorise it, in more ways than a list could name: ``X-Amz-Signature``,
    ``sig``, ``hdnts``, ``token``...), plain ``http://`` only to ``LOOPBACK_SOURCE_HOSTS`` with ``loopback`` (the
    sandbox on a developer's machine); ``None`` for any other (an object-store URI, a signed URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.query or "@" in parts.netloc or not parts.hostname:
        return None
    if parts.scheme == "https" or (parts.scheme == "http" and loopback and parts.hostname in LOOPBACK_SOURCE_HOSTS):
        return url
    return None
