"""The last step of a batch run, and its lines along the way: the plan and progress lines, the review
gallery, the summary for XCom, and the failure decision (stopped, in doubt, too many failures)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.catalog.gallery import write_gallery
from airflow_provider_cutout.exceptions import CutoutError, fail_or_retry
from airflow_provider_cutout.observability import metrics
from airflow_provider_cutout.texts import first_of, plural

if TYPE_CHECKING:
    from airflow_provider_cutout.api.governor import Governor
    from airflow_provider_cutout.catalog.config import BatchConfig
    from airflow_provider_cutout.catalog.planning import Plan
    from airflow_provider_cutout.catalog.progress import Progress
    from airflow_provider_cutout.state.manifest import Manifest


#: How the end of a run names each outcome of its items, and what it adds after their count.
OUTCOMES = {"shared": "stored from a shared edit", "edited_again": "edited again"}
NOTES = {"restored": " (their results fetched again, free)",
         "edited_again": " (stored file and result URL lost: paid again)"}


class Reporter:
    """What a run tells its task log, its gallery and XCom.

    :param config: the run's arguments.
    :param progress: the run's shared counters.
    :param manifest: the run's manifest.
    :param folder: the output folder.
    :param log: the task's logger.
    :param chunk: the map index of a mapped task (its chunk's gallery), else ``None``.
    :param keys: the run's item keys (a mapped task's gallery shows only them).
    :param governor: how fast the run's edits went (``api.governor``): its rate and 429s are reported.
    """

    def __init__(self, config: BatchConfig, progress: Progress, manifest: Manifest, folder: Any, log: Any, *,
                 chunk: int | None, keys: set[str], governor: Governor) -> None:
        self.config, self.progress, self.manifest, self.folder, self.log = config, progress, manifest, folder, log
        self.chunk, self.keys, self.governor = chunk, keys, governor
        self.gallery: Any = None

    def plan(self, plan: Plan, planned: int) -> None:
        """The plan's line, and a warning naming the stored results that are missing."""
        self.log.info(
            "Cutout batch plan: %s, %d already stored (skipped), %d to fetch again, %d in doubt (not resent), "
            "%d to edit for %d credits", plural(planned, "item"), len(plan.skipped), len(plan.to_refetch),
            len(plan.in_doubt), len(plan.to_edit), plan.cost,
        )
        if plan.to_restore:
            self.log.warning(
                "Cutout batch: %s missing from %s (deleted, or a lifecycle rule): each is fetched "
                "again from its result URL, or edited again (paid, counted in the plan above) if that has expired: "
                "%s", plural(len(plan.to_restore), "stored result is", "stored results are"),
                str(self.folder).rstrip("/") + "/", first_of([item.key for item, _ in plan.to_restore], 20, ", "))

    def progress_line(self) -> None:
        """How far the run is, how fast, and how long it may take still."""
        progress = self.progress
        elapsed = time.monotonic() - progress.started if progress.started else 0.0
        with progress.lock:
            worked = progress.edited + progress.edited_again + progress.recovered + progress.failed
            done, total = progress.done, progress.total
            rate = worked / elapsed if elapsed > 0 else 0.0
            eta = f"ETA {(total - done) / rate:.0f}s" if rate > 0 and done < total else "ETA -"
        limit = f"; rate limit: {self.governor.describe()}" if self.governor.settled is not None else ""
        self.log.info(
            "Cutout batch progress: %d/%d done, %d skipped, %d failed, %d credits spent, %.1f items/s, %s%s",
            done, total, progress.skipped, progress.failed, progress.credits, rate, eta, limit,
        )
        metrics.sending_rate(self.governor.rate if self.governor.settled is not None else None)

    def write_gallery(self) -> None:
        """Regenerate the folder's review gallery from the whole manifest (a mapped task: its chunk's gallery, from
        its items' entries); a failure to write it is logged, never raised (the edits and the manifest are what
        count)."""
        if not self.config.gallery:
            return
        progress = self.progress
        run = {"edited": progress.edited, "skipped": progress.skipped, "failed": progress.failed,
               "in_doubt": progress.in_doubt, "credits_spent": progress.credits, **self._rate()}
        try:
            self.manifest.refresh(decisions=True)
            entries = self.manifest.catalog()
            if self.chunk is not None:
                entries = [entry for entry in entries if entry.get("key") in self.keys]
            self.gallery = write_gallery(self.folder, entries, run=run, link_expiry=self.config.gallery_link_expiry,
                                         chunk=self.chunk)
        except Exception as err:  # the gallery never fails a run that stored its items
            self.log.warning("Cutout batch: the review gallery was not written (%s: %s)", type(err).__name__, err)

    def summary(self, plan: Plan | None, seconds_sending: float, to_attempt: int) -> dict[str, Any]:
        """The summary for XCom; fail when the task was told to stop, a result is missing or too many items
        failed."""
        progress = self.progress
        summary = {
            "total": progress.total, "skipped": progress.skipped, "edited": progress.edited,
            "recovered": progress.recovered, "shared": progress.shared, "restored": progress.restored,
            "edited_again": progress.edited_again, "by_other_runs": progress.by_other_runs, "failed": progress.failed,
            "in_doubt": progress.in_doubt, "not_attempted": progress.total - progress.done,
            "credits_spent": progress.credits, "planned_credits": plan.cost if plan else 0,
            "seconds_sending": round(seconds_sending, 3), "manifest": str(self.manifest.path),
            "manifest_bytes_written": self.manifest.bytes_written,
            "output_dir": str(self.folder), "gallery": None if self.gallery is None else str(self.gallery),
            **self._rate(),
        }
        self.log.info("Cutout batch summary: %s", summary)
        self._log_keys()
        self._fail_if_incomplete(summary, to_attempt)
        return summary

    def _log_keys(self) -> None:
        """Which items this run edited, restored (fetched again, free), edited again because their files and
        result URLs were lost (paid), failed or left in doubt (the first 20 of each), and where the review gallery
        is."""
        keys = {**self.progress.keys, "left in doubt": self.progress.doubtful}
        for outcome in ("edited", "restored", "edited_again", "shared", "recovered", "failed", "left in doubt"):
            if keys.get(outcome):
                found = keys[outcome]
                self.log.info("Cutout batch: %s %s%s: %s", OUTCOMES.get(outcome, outcome),
                              plural(len(found), "item"), NOTES.get(outcome, ""), first_of(found, 20, ", "))
        if self.gallery is not None:
            self.log.info("Cutout batch: review gallery: %s", self.gallery)

    def _rate(self) -> dict[str, Any]:
        """The account's rate limit as this run met it: how many 429s, and the rate it settled at (edits a second
        the account accepted when its last new 429 came; ``None`` when no 429 came)."""
        governor = self.governor
        return {"rate_limited": governor.rate_limited,
                "rate": round(governor.settled, 2) if governor.settled is not None else None}

    def _fail_if_incomplete(self, summary: dict[str, Any], to_attempt: int) -> None:
        from airflow.sdk.exceptions import AirflowException

        progress = self.progress
        if progress.killed.is_set():
            raise AirflowException(
                f"the task was told to stop (SIGTERM, execution_timeout, or marked failed): no new edit was started "
                f"after that; {plural(summary['not_attempted'], 'item was', 'items were')} not attempted. Stored "
                "results are kept; a re-run continues from there")
        if progress.stop_error is not None:
            err = progress.stop_error
            stopped = type(err)(f"{err.message}; the batch stopped at once: "
                                f"{plural(summary['not_attempted'], 'item was', 'items were')} not attempted. Stored "
                                "results are kept; a re-run continues from there",
                                retryable=err.retryable)
            stopped.__cause__ = err
            fail_or_retry(stopped, self.log)
        if progress.in_doubt:
            one = progress.in_doubt == 1
            fail_or_retry(CutoutError(
                f"{plural(progress.in_doubt, 'item was', 'items were')} or may have been charged without a stored "
                "result (a read timeout, a dropped connection, an expired result URL, a worker that died with edits "
                f"in flight): {first_of(progress.doubtful, sep=', ')}. {'It is' if one else 'They are'} not sent again "
                "automatically: check the account's usage, then set resend_in_doubt=True, or to a list of "
                f"{'its key, to edit it' if one else 'their keys, to edit them'} again"), self.log)
        limit = self.config.failure_limit(to_attempt)
        if progress.failed > limit:
            raise AirflowException(
                f"{plural(progress.failed, 'item')} failed, more than max_failures={self.config.max_failures!r} allows "
                f"({limit}); first errors: {'; '.join(progress.errors[:5])}. Stored results are kept; a retry only "
                "redoes the failed items."
            )
