"""The API's base URL and loopback addresses: the standard library only, so that the provider's
metadata (read by every Airflow process) stays cheap to import."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://www.cutout.pro"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback_url(url: str | None) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1 or localhost)."""
    if not url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
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
