"""The batch manifest: which edit (by request fingerprint) produced which stored file.

One JSON file per batch task in the output folder (``cutout-manifest.json``, or
``cutout-manifest-<map index>.json`` for mapped chunks, so parallel chunks never write the same
file). It is rewritten whole, to a temporary name and then renamed, by one writer thread that
coalesces updates; a caller that must not lose a record (an edit that was just charged) waits
until it is on disk. Reading merges every manifest in the folder, so re-chunking a catalog
keeps what earlier runs stored.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

MANIFEST_GLOB = "cutout-manifest*.json"
STORED, EDITED, FAILED, IN_DOUBT = "stored", "edited", "failed", "in_doubt"


def manifest_name(map_index: int | None) -> str:
    """The manifest file of one task: one per map index, so chunks never share a file."""
    return "cutout-manifest.json" if map_index is None or map_index < 0 else f"cutout-manifest-{map_index}.json"


def _load(path: Any) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise ValueError(f"manifest {path} is not valid JSON ({err}); move it aside to start over") from None
    entries = data.get("entries", {}) if isinstance(data, dict) else {}
    return {fp: e for fp, e in entries.items() if isinstance(e, dict)}


def load_entries(folder: Any) -> dict[str, dict[str, Any]]:
    """Every manifest entry in ``folder`` by fingerprint; the newest entry wins."""
    merged: dict[str, dict[str, Any]] = {}
    if not folder.exists():
        return merged
    for path in sorted(folder.glob(MANIFEST_GLOB)):
        for fp, entry in _load(path).items():
            if fp not in merged or entry.get("updated_at", 0) >= merged[fp].get("updated_at", 0):
                merged[fp] = entry
    return merged


def read_manifest(output_dir: Any) -> dict[str, dict[str, Any]]:
    """Entries of a batch's output folder by item key (the newest per key), for downstream tasks.

    :param output_dir: the batch operator's ``output_dir`` (a path, URI or ``ObjectStoragePath``).
    """
    from airflow.sdk import ObjectStoragePath

    by_key: dict[str, dict[str, Any]] = {}
    for entry in load_entries(ObjectStoragePath(str(output_dir))).values():
        key = entry.get("key")
        if key is not None and (key not in by_key or entry.get("updated_at", 0) >= by_key[key].get("updated_at", 0)):
            by_key[key] = entry
    return by_key


class Manifest:
    """This task's manifest file, written atomically in the background.

    :param folder: the output folder (an ``ObjectStoragePath``).
    :param name: the file name, see ``manifest_name``.
    """

    def __init__(self, folder: Any, name: str) -> None:
        self.path = folder / name
        self.entries = _load(self.path)
        self._folder = folder
        self._cond = threading.Condition()
        self._version = 0
        self._written = 0
        self._error: BaseException | None = None
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="cutout-manifest", daemon=True)
        self._writer.start()

    def record(self, entry: dict[str, Any], *, durable: bool = False) -> None:
        """Add or replace the entry of ``entry["fingerprint"]``; with ``durable``, wait until it is on disk."""
        with self._cond:
            self.entries[entry["fingerprint"]] = {**entry, "updated_at": time.time()}
            self._version += 1
            version = self._version
            self._cond.notify_all()
            if durable:
                while self._written < version and self._error is None:
                    self._cond.wait()
            if self._error is not None:
                raise OSError(f"cannot write the manifest {self.path}: {self._error}") from self._error

    def close(self) -> None:
        """Write what is pending and stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join()
        if self._error is not None:
            raise OSError(f"cannot write the manifest {self.path}: {self._error}") from self._error

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while self._written == self._version and not self._closed:
                    self._cond.wait()
                if self._written == self._version:
                    return
                version = self._version
                text = json.dumps({"version": 1, "entries": self.entries}, separators=(",", ":"))
            try:
                self._folder.mkdir(parents=True, exist_ok=True)
                partial = self._folder / f".{self.path.name}.{uuid.uuid4().hex}.part"
                partial.write_text(text)
                partial.rename(self.path)
            except BaseException as err:  # reported to every waiter and at close
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._written = version
                self._cond.notify_all()
