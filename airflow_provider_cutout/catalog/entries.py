"""What the manifest says of an item, as every step of a run reads it: its own newest entry, another key's
paid result of the same edit (shared), or an entry adopted from before source versions counted."""

from __future__ import annotations

from typing import Any

from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.catalog.plan import PlannedEdit
from airflow_provider_cutout.state.io import file_exists
from airflow_provider_cutout.state.manifest import EDITED, IN_DOUBT, STORED, Manifest
from airflow_provider_cutout.state.versions import adopt_earlier

Entry = dict[str, Any]


class Entries:
    """The manifest's entries of a run's items.

    :param manifest: the run's manifest (read as it stands when asked: steps refresh it).
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def entry_for(self, item: PlannedEdit) -> Entry | None:
        """What the manifest says of an item: its own newest entry when it holds a paid result (or one adopted
        from before source versions); else, when another item key paid for this very edit, an entry that
        stores that result for this key too (``shared``); else its own entry, if any."""
        own = self.manifest.get(item.fingerprint, item.key) or self._adopt(item)
        if own is not None and own.get("status") in (STORED, EDITED):
            return own
        return self.shared(item, own)

    def shared(self, item: PlannedEdit, own: Entry | None) -> Entry | None:
        """Another key's paid result of the same edit, to store for this key (copying that key's stored file
        when it is there, else fetching the result URL); else ``own``. With no entry of its own, this key is in
        doubt when another key's edit is: the edit may have been charged."""
        others = [e for e in self.manifest.siblings(item.fingerprint) if e.get("key") != item.key]
        paid = [e for e in others if e.get("status") in (STORED, EDITED) and e.get("image_url")]
        if not paid:
            doubt = next((e for e in others if e.get("status") == IN_DOUBT), None)
            if own is not None or doubt is None:
                return own
            return {**base_entry(item), "status": IN_DOUBT,
                    "error": f"the same edit as item {doubt.get('key')!r}, in doubt"}
        paid.sort(key=lambda e: e.get("updated_at", 0), reverse=True)
        copyable = (e for e in paid if e.get("status") == STORED and e.get("sha256") and stored_file_exists(e))
        source = next(copyable, None)  # a file whose digest was recorded: the copy is checked against it
        return {**(source or paid[0]), "key": item.key, "status": EDITED, "stored_path": None, "credits": 0,
                "error": None, "shared_with": (source or paid[0]).get("key"), "own_prompt": item.own_prompt,
                "copy_of": source.get("stored_path") if source else None}

    def _adopt(self, item: PlannedEdit) -> Entry | None:
        """An item stored before source versions counted, or under its sources' legacy versions (before sources
        were hashed whole), is taken as unchanged once (``state.versions``) and recorded under its fingerprint."""
        def stored(fp: str) -> Entry | None:
            entry = self.manifest.get(fp, item.key)
            return entry if entry is not None and entry.get("status") == STORED else None

        def adopted(fp: str, entry: Entry) -> None:
            lifecycle.record(self.manifest, "adopted", entry)

        request, legacy = item.request, item.request.legacy_request()
        earlier = [request.unversioned_fingerprint] + ([legacy.fingerprint] if legacy else [])
        for fingerprint in earlier:
            found = adopt_earlier(item.fingerprint, fingerprint, request.source_versions, stored, adopted,
                                  request.source_validators)
            if found is not None:
                return found
        return None


def base_entry(item: PlannedEdit) -> Entry:
    """The fields every record of an item carries: its key, its edit and the edit's fingerprint."""
    req = item.request
    entry = {"key": item.key, "fingerprint": item.fingerprint, "prompt": req.prompt, "model": req.model,
             "aspect_ratio": req.aspect_ratio, "image_urls": list(req.image_urls),
             "source_versions": list(req.source_versions), "source_validators": list(req.source_validators)}
    if item.own_prompt is not None:  # a reviewer's correction: what it replaced, for the next correction
        entry["own_prompt"] = item.own_prompt
    return entry


def written_at(entry: Entry) -> float:
    """When an entry's file was written (``written_at``; ``updated_at`` for entries from before it was kept)."""
    return float(entry.get("written_at") or entry.get("updated_at") or 0)


def stored_file_exists(entry: Entry | None) -> bool:
    """Whether an entry's stored file is there now (an item is never counted done without its file)."""
    from airflow.sdk import ObjectStoragePath

    stored = entry.get("stored_path") if entry else None
    return bool(stored) and file_exists(ObjectStoragePath(str(stored)))
