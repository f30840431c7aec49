"""Storing edited images where Airflow's ``ObjectStoragePath`` reaches (local, s3, gcs, ...).

Result URLs from a CDN expire, so operators copy the image: streamed in chunks (bounded memory)
to a hidden temporary name beside the target, then renamed, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cutout.client import CutoutClient


#: The folder, inside an output folder, that holds the provider's own state (manifest, claims, records).
STATE_DIR = "_cutout"


def is_folder(output_path: Any) -> bool:
    """A path ending in ``/`` names a folder: files in it are named after the edit id."""
    return str(output_path).endswith("/")


def store_image(
    client: CutoutClient, url: str, output_path: Any, stem: str, *, max_bytes: int | None = None,
    tag: str | None = None,
) -> str:
    """Download ``url`` to ``output_path`` atomically and return where it was written.

    :param client: the hook's client (the one place for HTTP).
    :param url: the edited image's URL.
    :param output_path: a file path, or a folder path ending in ``/``.
    :param stem: the file name without extension when ``output_path`` is a folder.
    :param max_bytes: the size cap; the connection's ``max_download_bytes`` by default.
    :param tag: names the writer in the temporary file's name (``.<stem>.<tag>.part``), so the batch
        can tell leftovers of dead runs from files in progress; random by default.
    """
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath(str(output_path))
    folder = target if is_folder(output_path) else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{stem}.{tag or uuid.uuid4().hex}.part"
    try:
        with partial.open("wb") as sink:  # type: ignore[no-untyped-call]  # ObjectStoragePath.open is untyped
            _, extension = client.download(url, sink, max_bytes=max_bytes)
        final = folder / f"{stem}{extension}" if is_folder(output_path) else target
        partial.rename(final)
    except BaseException:
        if partial.exists():
            partial.unlink()
        raise
    return str(final)


def is_local(path: Any) -> bool:
    """Whether ``path`` is on the local file system (where a write is not atomic by itself)."""
    return path.protocol in ("", "file", "local")


def write_whole(path: Any, data: bytes, *, exclusive: bool = False) -> None:
    """Write a file so that no reader ever sees half of it: on local disks a complete temporary file
    renamed into place, on object stores one PUT (atomic there).

    :param exclusive: create it only if it does not exist (``FileExistsError`` otherwise): locally a hard
        link of the temporary file (atomic and exclusive, NFS too), on object stores a conditional PUT.
    """
    if not is_local(path):
        with path.open("xb" if exclusive else "wb") as sink:
            sink.write(data)
        return
    partial = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
    partial.write_bytes(data)
    if not exclusive:
        partial.rename(path)
        return
    try:
        os.link(partial.path, path.path)
    finally:
        partial.unlink()


def list_files(folder: Any) -> dict[str, int]:
    """File names in ``folder`` and their sizes, as the store has them now (object stores cache listings)."""
    try:
        found = folder.fs.ls(folder.path, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {info["name"].rstrip("/").rsplit("/", 1)[-1]: int(info.get("size") or 0) for info in found}


def _edit_record(output_path: Any, fingerprint: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath(str(output_path))
    if is_folder(output_path):
        return target / STATE_DIR / "edits" / f"{fingerprint}.json"
    return target.parent / STATE_DIR / "edits" / f"{target.name}.json"


def find_stored_edit(output_path: Any, fingerprint: str) -> dict[str, Any] | None:
    """The result an earlier run stored at ``output_path`` for this very edit, if its file is still there."""
    from airflow.sdk import ObjectStoragePath

    try:
        record = json.loads(_edit_record(output_path, fingerprint).read_bytes())
    except (OSError, ValueError):  # none yet, or a path that cannot hold one: storing will say why
        return None
    stored = record.get("stored_path") if isinstance(record, dict) else None
    if record.get("fingerprint") != fingerprint or not stored or not ObjectStoragePath(stored).exists():
        return None
    return {k: v for k, v in record.items() if k != "fingerprint"}


def remember_stored_edit(output_path: Any, fingerprint: str, payload: dict[str, Any]) -> None:
    """Record which edit is stored at ``output_path``, so a re-run of it can return it for free."""
    path = _edit_record(output_path, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps({**payload, "fingerprint": fingerprint}).encode())
