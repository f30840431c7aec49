"""Signatures on what the output folder holds for the review view: who owns a folder (``state.binding``) and
reviewers' decisions (``state.decisions``).

Anyone who can write the store can write files into an output folder (a shared bucket's other users, another
system); only Airflow's processes hold the review secret, ``[cutout] review_secret``
(``AIRFLOW__CUTOUT__REVIEW_SECRET``; else ``[api_auth] jwt_secret``, where a deployment shares it anyway). A
record signed here is an HMAC-SHA256 of its canonical JSON under a key derived from that secret, one key per
purpose, so a signature of one kind is never valid as another. Every reader checks it; a record without a valid
signature is not taken.

The workers need the secret (a run signs its folder's owner record, a run and a gate check decisions), so DAG code
can read it there: as in Airflow, DAG authors are trusted. A dedicated secret keeps Airflow's own token key off
the workers.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError

SIGNATURE = "sig"
#: What is signed: a decision (written by the review view), a folder's owner (written by the batch run).
DECISION, OWNER, FORM = "cutout-decision", "cutout-folder-owner", "cutout-review-form"
NO_SECRET = ("no review secret is configured in this Airflow process: set [cutout] review_secret "
             "(AIRFLOW__CUTOUT__REVIEW_SECRET) to the same random value on the API servers and the workers")


class NoSecretError(CatalogStateError):
    """No secret to sign or check with is configured: what the review view writes cannot be trusted here."""


def secret() -> bytes:
    """The configured secret (``NoSecretError`` when there is none: a made-up one could be checked by no other
    process)."""
    return _secret()


@functools.cache
def _secret() -> bytes:
    from airflow.configuration import conf

    found = conf.get("cutout", "review_secret", fallback="") or conf.get("api_auth", "jwt_secret", fallback="")
    if not found:
        raise NoSecretError(f"Cutout review: {NO_SECRET}")
    return str(found).encode()


def key(purpose: str) -> bytes:
    """The key of one purpose, derived from the configured secret."""
    return hashlib.sha256(purpose.encode() + b"\x1f" + secret()).digest()


def digest(purpose: str, message: bytes) -> str:
    """The HMAC-SHA256 of ``message`` under the key of ``purpose``, in hex."""
    return hmac.new(key(purpose), message, hashlib.sha256).hexdigest()


def _canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(record: dict[str, Any], purpose: str) -> dict[str, Any]:
    """``record`` with its signature."""
    return {**record, SIGNATURE: digest(purpose, _canonical(record))}


def signed(record: Any, purpose: str) -> bool:
    """Whether ``record`` carries a valid signature of ``purpose`` (``NoSecretError`` when none can be checked)."""
    found = record.get(SIGNATURE) if isinstance(record, dict) else None
    return isinstance(found, str) and hmac.compare_digest(found, digest(purpose, _canonical(record)))
