"""The second step of a batch run: claim each item to edit, send it, record it as soon as it is charged,
store its image; fetch again what was paid for and not stored; restore results whose files are gone. Every
record goes through ``catalog.lifecycle``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.catalog.entries import Entries, base_entry, stored_file_exists
from airflow_provider_cutout.catalog.plan import PlannedEdit, file_stem
from airflow_provider_cutout.exceptions import (
    AuthenticationError,
    CatalogStateError,
    CutoutError,
    InsufficientCreditsError,
    RateLimitError,
    ResultDownloadError,
    StoppedError,
)
from airflow_provider_cutout.observability import metrics
from airflow_provider_cutout.state.claims import Claims, Owner
from airflow_provider_cutout.state.crash import crash_point
from airflow_provider_cutout.state.io import Digesting, copy_into, is_local, list_names, remove, store_image
from airflow_provider_cutout.state.manifest import EDITED, STORED, precedence

if TYPE_CHECKING:
    from airflow_provider_cutout.catalog.config import BatchConfig
    from airflow_provider_cutout.catalog.progress import Progress
    from airflow_provider_cutout.hooks.cutout import CutoutHook

#: Errors after which every further call would fail the same way (or cost money for nothing).
STOP_BATCH = (AuthenticationError, InsufficientCreditsError, CatalogStateError)
Entry = dict[str, Any]


class Sender:
    """Claim, send, record, store and restore the items of one run (called from the run's threads).

    :param config: the run's arguments.
    :param hook: sends the edits; its client downloads the results.
    :param folder: the output folder (an ``ObjectStoragePath``).
    :param claims: the run's claims.
    :param entries: what the manifest says of an item.
    :param progress: the run's shared counters and stop signals.
    """

    def __init__(self, config: BatchConfig, hook: CutoutHook, folder: Any, claims: Claims, entries: Entries,
                 progress: Progress) -> None:
        self.hook, self.client, self.claims, self.entries, self.progress = hook, hook.client, claims, entries, progress
        self.folder, self.out = folder, str(folder).rstrip("/") + "/"
        self.manifest, self.owner = entries.manifest, claims.owner
        self.governor = hook.client.governor  # how fast the edits go, found from the account's answers
        self.governor.cap = config.requests_per_second

    def sweep_leftovers(self, stems: set[str], listed: Any, *, chunk: bool) -> None:
        """Delete what runs no longer alive left: temporary files of these items, heartbeat files."""
        self.claims.forget_dead_owners()
        if chunk and not is_local(self.folder):
            return  # no listing of a whole bucket folder per chunk; an unmapped run, or a local folder, sweeps
        for name in listed if listed is not None else list_names(self.folder):
            if not (name.startswith(".") and name.endswith(".part")):
                continue
            stem, _, token = name[1:-5].rpartition(".")
            if stem in stems and not self.claims.is_alive(Owner(token=token)):
                remove(self.folder / name)

    def edit(self, item: PlannedEdit) -> None:
        """Claim an item and, when this run now holds it, send it."""
        if self.progress.stop.is_set():
            return
        try:
            holder = self.claims.claim(item.fingerprint)
        except CutoutError as err:
            self.progress.stop_with(err)
            return
        if holder is None:
            self.send(item)
        else:
            self.progress.hold(item, holder)

    def send(self, item: PlannedEdit, *, restoring: bool = False, taken: bool = False) -> None:
        """Send a claimed edit, record it as soon as it is charged, then store its image (``restoring``: a
        delivered result whose file and URL are gone; ``taken``: the claim was taken over from a dead owner,
        whose own send may have been charged, so it is never released)."""
        if self.progress.stop.is_set():
            if not taken:
                self.claims.release(item.fingerprint)
            return
        entry = {**base_entry(item), "taken_over": True} if taken else base_entry(item)
        if restoring:  # a kill from here on leaves it in doubt, not "stored" with its file gone
            lifecycle.record(self.manifest, "resending", entry,
                             error="sent again to restore a lost result; no answer recorded yet")
        try:
            result = metrics.measured_edit(self.hook.send_edit, item.request)
        except StoppedError as err:
            if not (err.maybe_charged or restoring):  # told to stop while it waited to retry: nothing was charged
                if not taken:
                    self.claims.release(item.fingerprint)
                return
            self.fail(item, entry, err)  # maybe charged: in doubt; a restore that sent nothing: failed, free
            return
        except CutoutError as err:
            self.fail(item, entry, err)
            return
        crash_point("edit_answered")  # charged, its result URL known here only
        entry.update(image_url=result.image_url, id=result.id, request_id=result.request_id, credits=result.credits,
                     duration=result.duration)
        entry = lifecycle.record(self.manifest, "charged", entry)  # charged: never lose it
        crash_point("charged_recorded")  # the result URL is in the manifest, its file not yet stored
        with self.progress.lock:
            self.progress.credits += result.credits
        if self.store(item, entry):
            self.progress.count("edited_again" if restoring else "edited", item.key)

    def recover(self, item: PlannedEdit, entry: Entry) -> None:
        """Fetch a planned paid-for edit again, unless another run claimed it: that run may be storing it
        right now (its stored record not yet in the log this run read), so it is settled like any held item."""
        holder = self.claims.holder(item.fingerprint)
        if holder is not None and holder.token != self.owner.token:
            self.progress.hold(item, holder)
        else:
            self.refetch(item, entry)

    def refetch(self, item: PlannedEdit, entry: Entry) -> None:
        """Store an edit that was paid for (by this key, or by another key of the same edit) but not stored."""
        if self.store(item, entry):
            self.progress.count("shared" if entry.get("shared_with") else "recovered", item.key)

    def store(self, item: PlannedEdit, entry: Entry) -> bool:
        """Copy the result into the output folder (from another key's stored file of the same edit when there
        is one, else from the result URL) and record it as stored; record why when it cannot be."""
        err = self._store(item, entry)
        if err is not None:
            self.fail(item, entry, err)
        return err is None

    def _store(self, item: PlannedEdit, entry: Entry) -> CutoutError | None:
        """``store`` without recording a failure: the error, or ``None`` once stored and recorded."""
        url, copy_of, digest = entry["image_url"], entry.get("copy_of"), Digesting()

        def fetch(sink: Any) -> str:
            if not copy_of:
                return self.client.download(url, digest.into(sink))[1]
            extension = copy_into(copy_of, digest.into(sink))
            if digest.hexdigest() != entry.get("sha256"):  # that key's file holds another edit by now
                raise OSError(f"{copy_of} no longer holds the result of this edit")
            return extension

        try:
            path = store_image(fetch, self.out, file_stem(item.key), tag=self.owner.token)
        except OSError:
            if not copy_of:
                raise
            return self._store(item, {**entry, "copy_of": None})  # that file is gone or changed: fetch the URL
        except CutoutError as err:
            return err
        crash_point("stored_file_renamed")  # the file is in place, its "stored" record not yet written
        kept = {k: v for k, v in entry.items() if k not in ("copy_of", "adopted_by")}
        lifecycle.record(self.manifest, "stored", kept, stored_path=path, sha256=digest.hexdigest(), error=None,
                         written_at=time.time())
        return None

    def restore(self, item: PlannedEdit, entry: Entry) -> None:
        """A result delivered before whose file is gone: copied from another key's file of the same edit, or
        fetched from its result URL (free); when both are gone (the URL answers 403, 404 or 410), edited again
        under this run's claim (paid, planned), recorded in doubt before it is sent. Any other error fetching it
        fails the item for now, its paid result kept for the next run. Never counted done without its file."""
        holder = self.claims.holder(item.fingerprint)
        if holder is not None and holder.token != self.owner.token and self.claims.is_alive(holder):
            self.progress.hold(item, holder)  # another run may be restoring it right now
            return
        kept: tuple[Entry, CutoutError] | None = None  # a result that may still be there (a 5xx, a timeout)
        for source in (self.entries.shared(item, None), entry):
            if source is None or not source.get("image_url"):
                continue
            err = self._store(item, source)
            if err is None:
                self.progress.count("restored", item.key)
                return
            if not (isinstance(err, ResultDownloadError) and err.gone):
                kept = kept or (source, err)
        if kept is not None:
            self.fail(item, *kept)  # paid, not stored: the next run fetches it again, nothing paid
            return
        winner = self.claims.claim(item.fingerprint) if holder is None else self.claims.take_over(
            item.fingerprint, holder)
        if winner is not None:
            self.progress.hold(item, winner)
            return
        self.manifest.refresh()  # another run may have acted on it since this run planned
        fresh = self.entries.entry_for(item)
        if fresh is not None and precedence(fresh) > precedence(entry):
            self._after_others(item, fresh)
            return
        self.send(item, restoring=True)

    def _after_others(self, item: PlannedEdit, entry: Entry) -> None:
        """A restore that another run overtook: its stored file, or its paid result (free), else in doubt."""
        if entry.get("status") == STORED and stored_file_exists(entry):
            with self.progress.lock:
                self.progress.by_other_runs += 1
        elif entry.get("status") in (STORED, EDITED) and entry.get("image_url"):
            self.refetch(item, entry)
        else:
            self.progress.doubt(item.key)

    def fail(self, item: PlannedEdit, entry: Entry, err: CutoutError) -> None:
        """Record a failed item (``lifecycle.fail``: paid for and fetched again later, in doubt, or free, its
        claim released); stop the batch on an error every further call would meet."""
        text = f"{item.key}: {type(err).__name__}: {err}"
        status = lifecycle.fail(self.manifest, entry, err, text)
        if status == lifecycle.FAILED:
            self.claims.release(item.fingerprint)  # a later run may try again
        with self.progress.lock:
            if status == lifecycle.IN_DOUBT:
                self.progress.doubtful.append(item.key)
            else:
                self.progress.add("failed", item.key)
            self.progress.errors.append(text)
        if isinstance(err, STOP_BATCH) or (isinstance(err, RateLimitError) and not err.retryable):
            self.progress.stop_with(err)  # (a 429 given up on: the account accepted nothing for its patience)
