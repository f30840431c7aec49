"""The third step of a batch run: the items other runs held when this run wanted them, waited for (up to
``claim_wait_timeout``) and settled by what those runs recorded; then the items that follow another key's
edit, stored from its result or ended as it did."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.catalog.entries import Entries, base_entry, stored_file_exists
from airflow_provider_cutout.catalog.plan import (
    DEAD,
    IN_DOUBT_ACTION,
    LIVE,
    REFETCH,
    RESTORE,
    SKIP,
    TAKE_OVER,
    WAIT,
    PlannedEdit,
    classify,
)
from airflow_provider_cutout.catalog.sending import Sender
from airflow_provider_cutout.exceptions import ClaimedElsewhereError
from airflow_provider_cutout.state.claims import Owner
from airflow_provider_cutout.state.manifest import FAILED, IN_DOUBT, STORED
from airflow_provider_cutout.texts import first_of

if TYPE_CHECKING:
    from airflow_provider_cutout.catalog.config import BatchConfig
    from airflow_provider_cutout.catalog.workers import Workers

POLL_SECONDS = 0.5
Job = tuple[Any, ...]


class Settler:
    """Settle held items and followers.

    :param config: the run's arguments (``claim_wait_timeout``, ``resend_in_doubt``).
    :param sender: sends, fetches and restores what settling decides (its claims, manifest and progress).
    :param workers: the run's threads.
    :param log: the task's logger.
    """

    def __init__(self, config: BatchConfig, sender: Sender, workers: Workers, log: Any) -> None:
        self.config, self.sender, self.workers, self.log = config, sender, workers, log
        self.entries: Entries = sender.entries
        self.claims, self.manifest, self.progress = sender.claims, sender.manifest, sender.progress

    def held(self) -> None:
        """Wait, up to ``claim_wait_timeout``, for the items other runs held when this run wanted them."""
        held, deadline = self.progress.held, time.monotonic() + self.config.claim_wait_timeout
        if held:
            self.log.info("Cutout batch: %d items are held by other runs; waiting for their results", len(held))
        while held and not self.progress.stop.is_set():
            # Holders first, the log after: a run writes its records before its heartbeat stops, so a holder
            # seen dead here has every record it will ever write already in the log read next.
            holders = {key: self._holder(item.fingerprint) for key, (item, _) in list(held.items())}
            self.manifest.refresh()
            jobs = [job for key, holder in holders.items() if (job := self._settle(key, *holder)) is not None]
            if jobs:
                self.workers.work(jobs)
            elif held and time.monotonic() > deadline:
                raise ClaimedElsewhereError(
                    f"{len(held)} items are still held by other runs after claim_wait_timeout="
                    f"{self.config.claim_wait_timeout:g}s, so their results are not stored yet: {self._held_text()}. "
                    "This run's own items are stored; a retry waits for them again")
            elif held:
                time.sleep(POLL_SECONDS)

    def _holder(self, fp: str) -> tuple[Owner | None, str | None]:
        """Who holds an item's claim now, and whether it is alive."""
        holder = self.claims.holder(fp)
        return holder, None if holder is None else LIVE if self.claims.is_alive(holder) else DEAD

    def _settle(self, key: str, holder: Owner | None, state: str | None) -> Job | None:
        """Look again at one held item; a job when this run must act on it now."""
        held, item = self.progress.held, self.progress.held[key][0]
        entry = self.entries.entry_for(item)
        present = entry is not None and entry.get("status") == STORED and stored_file_exists(entry)  # where it decides
        action = classify(entry, file_present=present, resend_in_doubt=self.config.resends(item.key), holder=state)
        if action == WAIT and holder is not None:
            held[key] = (item, holder)
            return None
        del held[key]
        if action == SKIP:
            with self.progress.lock:
                self.progress.by_other_runs += 1
        elif action in (REFETCH, RESTORE):
            return (self.sender.refetch if action == REFETCH else self.sender.restore, item, entry)
        elif action == IN_DOUBT_ACTION:
            lifecycle.record(self.manifest, "holder_ended", base_entry(item),
                             error=f"claimed by {holder.describe() if holder else '?'}, which ended without "
                                   "recording a result")
            self.progress.doubt(item.key)
        elif action == TAKE_OVER and holder is not None:
            return self._take_over(item, holder)
        else:
            return (self.sender.edit, item)  # the claim was released: claim it again
        return None

    def _take_over(self, item: PlannedEdit, holder: Owner) -> Job | None:
        """Take a dead holder's claim over (with consent to resend); still held when another run took it first."""
        winner = self.claims.take_over(item.fingerprint, holder)
        if winner is not None:
            self.progress.held[item.key] = (item, winner)
            return None
        return (functools.partial(self.sender.send, taken=True), item)

    def followers(self, followers: dict[str, list[PlannedEdit]]) -> None:
        """Store the items that share an edit with an item this run sent: from its stored file when it was
        stored; else they end as it did (in doubt, or failed), and nothing more is sent for them."""
        jobs, stopped = [], self.progress.stop.is_set()
        for item in (item for group in followers.values() for item in group):
            entry = self.entries.shared(item, None)
            if entry is not None and entry.get("shared_with"):
                jobs.append((self.sender.refetch, item, entry))
            elif entry is not None and entry.get("status") == IN_DOUBT:
                lifecycle.record(self.manifest, "follower_in_doubt", entry)
                self.progress.doubt(item.key)
            elif not stopped:
                self._fail_follower(item)
        self.workers.work(jobs)

    def _fail_follower(self, item: PlannedEdit) -> None:
        leader = next((e for e in self.manifest.siblings(item.fingerprint) if e.get("status") == FAILED), None)
        why = f"the same edit as item {leader.get('key')!r}, which failed" if leader else "its edit was not done"
        text = f"{item.key}: {why}"
        lifecycle.record(self.manifest, "follower_failed", base_entry(item), error=text)
        with self.progress.lock:
            self.progress.add("failed", item.key)
            self.progress.errors.append(text)

    def _held_text(self) -> str:
        return first_of([f"{item.key} (held by {holder.describe()})" for item, holder in self.progress.held.values()],
                        limit=20, sep="; ")
