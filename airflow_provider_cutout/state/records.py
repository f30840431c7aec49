"""The single edit's records: which edit is stored at an ``output_path``, so a re-run of that very edit
returns it for free. One small JSON file per stored edit, under ``_cutout/edits/`` beside the result."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_cutout.state.io import STATE_DIR, file_exists, fresh_bytes, is_folder, remove, write_whole


def _record_path(output_path: Any, fingerprint: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath(str(output_path))
    if is_folder(output_path):
        return target / STATE_DIR / "edits" / f"{fingerprint}.json"
    return target.parent / STATE_DIR / "edits" / f"{target.name}.json"


def _charged_path(output_path: Any, fingerprint: str) -> Any:
    """Where an edit charged and not stored yet is recorded: a file of its own, so it never replaces the record
    of the edit stored at a file ``output_path`` before (which keeps one record per target)."""
    record = _record_path(output_path, fingerprint)
    return record.parent / "charged" / (record.name if is_folder(output_path) else f"{record.stem}.{fingerprint}.json")


def _read(path: Any, fingerprint: str) -> dict[str, Any] | None:
    try:
        record = json.loads(fresh_bytes(path))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):  # none yet, or a path that
        return None  # cannot hold one (storing will say why); a failed read raises: "none" could pay again
    return record if isinstance(record, dict) and record.get("fingerprint") == fingerprint else None


def read_record(output_path: Any, fingerprint: str, *, charged: bool = False) -> dict[str, Any] | None:
    """The record of this very edit at ``output_path``, whether or not its file is still there; with ``charged``,
    else the record of this edit charged and not stored yet (its result URL, ``stored_path`` ``None``)."""
    record = _read(_record_path(output_path, fingerprint), fingerprint)
    if not (record and record.get("stored_path")):
        record = _read(_charged_path(output_path, fingerprint), fingerprint) if charged else None
        if not (record and record.get("image_url")):
            return None
    return {k: v for k, v in record.items() if k != "fingerprint"}


def find_stored_edit(output_path: Any, fingerprint: str) -> dict[str, Any] | None:
    """The result an earlier run stored at ``output_path`` for this very edit, if its file is still there. The
    file is looked for where ``output_path`` is now (a folder moved or mounted elsewhere since keeps its
    results), and the record's ``stored_path`` says where it is now."""
    from airflow.sdk import ObjectStoragePath

    record = read_record(output_path, fingerprint)
    if record is None:
        return None
    target = ObjectStoragePath(str(output_path))
    here = target / str(record["stored_path"]).rstrip("/").rsplit("/", 1)[-1] if is_folder(output_path) else target
    return {**record, "stored_path": str(here)} if file_exists(here) else None  # a failed lookup raises


def remember_stored_edit(output_path: Any, fingerprint: str, payload: dict[str, Any]) -> None:
    """Record which edit is stored at ``output_path``, so a re-run of it can return it for free."""
    path = _record_path(output_path, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps({**payload, "fingerprint": fingerprint}).encode())


def remember_charged_edit(output_path: Any, fingerprint: str, payload: dict[str, Any]) -> None:
    """Record an edit charged and not stored yet (its result URL), before it is stored: a try that fails to store
    it (a full disk) leaves the next try its result to fetch, free, instead of an edit in doubt."""
    path = _charged_path(output_path, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps({**payload, "stored_path": None, "fingerprint": fingerprint}).encode())


def forget_charged_edit(output_path: Any, fingerprint: str) -> None:
    """The charged edit is stored and recorded as such: its charged record goes."""
    remove(_charged_path(output_path, fingerprint))


def forget_stored_edit(output_path: Any, fingerprint: str) -> None:
    """Mark this edit as no longer delivered at ``output_path`` (its file is gone and it is being sent again)."""
    write_whole(_record_path(output_path, fingerprint), json.dumps({"fingerprint": fingerprint}).encode())
