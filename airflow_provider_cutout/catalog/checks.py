"""The checks of a batch run before anything is paid for: items that failed their own checks recorded as
failed items of this run, every source of the items to edit checked (all failures at once), the budget and
the balance."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.api.sources import sources_failed
from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.catalog.entries import base_entry
from airflow_provider_cutout.exceptions import InsufficientCreditsError, InvalidInputError
from airflow_provider_cutout.texts import first_of

if TYPE_CHECKING:
    from airflow_provider_cutout.catalog.config import BatchConfig
    from airflow_provider_cutout.catalog.plan import PlannedEdit
    from airflow_provider_cutout.catalog.planning import Plan
    from airflow_provider_cutout.catalog.progress import Progress
    from airflow_provider_cutout.hooks.cutout import CutoutHook
    from airflow_provider_cutout.state.manifest import Manifest


class Checks:
    """The checks before sending, and the records of the items they fail.

    :param config: the run's arguments (``max_failures``, ``max_credits``, ``check_balance``...).
    :param hook: reads sources and the balance.
    :param manifest: where failed items are recorded.
    :param progress: the run's counters.
    :param log: the task's logger.
    """

    def __init__(self, config: BatchConfig, hook: CutoutHook, manifest: Manifest, progress: Progress,
                 log: Any) -> None:
        self.config, self.hook, self.manifest, self.progress, self.log = config, hook, manifest, progress, log

    def sources(self, plan: Plan) -> Plan:
        """Check the sources of every item to edit before anything is paid for; the plan without the items
        whose sources failed (recorded as failed), or an error when more failed than ``max_failures`` allows."""
        editing = plan.editing
        if not editing or not self.hook.checks_sources(self.config.check_sources):
            return plan
        started = time.monotonic()
        names = {f"item {item.key!r}: ": item for item in editing}
        failing = self.hook.failing_sources({name: item.request for name, item in names.items()},
                                            concurrency=self.config.max_concurrency)
        self.log.info("Cutout batch: the sources of %d item%s checked in %.2fs; %d failed", len(editing),
                      "" if len(editing) == 1 else "s", time.monotonic() - started, len(failing))
        if failing and not self.config.tolerates(len(failing) + len(plan.rejected), plan.to_attempt):
            raise sources_failed([problem for found in failing.values() for problem in found])
        self.reject([(names[name].key, "; ".join(found), names[name]) for name, found in failing.items()])
        return plan.without({names[name].key for name in failing})

    def reject(self, failed: list[tuple[str | None, str, PlannedEdit | None]], *, invalid: bool = False) -> None:
        """Record items that failed their checks before anything was paid for as failed items of this run (left
        to ``max_failures``), named in the log and, with a key, in the manifest and the gallery."""
        if not failed:
            return
        one = len(failed) == 1
        what = ("item is invalid" if one else "items are invalid") if invalid else (
            "item has sources that failed their checks" if one else "items have sources that failed their checks")
        self.log.warning("Cutout batch: %d %s; %s failed items of this run, nothing is paid for them, the others "
                         "are edited (max_failures=%r):\n  %s", len(failed), what, "it is one of the" if one else
                         "they are", self.config.max_failures, first_of([problem for _, problem, _ in failed]))
        for key, problem, item in failed:
            base = base_entry(item) if item else {"key": key, "fingerprint": "invalid"}
            if key is not None:
                lifecycle.record(self.manifest, "rejected", base, error=problem)
            with self.progress.lock:
                self.progress.add("failed", key or problem.split(": ", 1)[0])
                self.progress.errors.append(problem)

    def budget(self, plan: Plan) -> None:
        """``max_credits`` and ``check_balance``, before anything is sent."""
        cost = plan.cost
        if self.config.max_credits is not None and cost > self.config.max_credits:
            raise InvalidInputError(
                f"the planned cost is {cost} credits for {len(plan.editing)} edits, over max_credits="
                f"{self.config.max_credits}; raise max_credits or edit fewer items. Nothing was sent.")
        if self.config.check_balance and plan.editing:
            balance = self.hook.get_credit_balance()
            if balance.total < cost:
                raise InsufficientCreditsError(
                    f"the planned cost is {cost} credits but the account has {balance.total:g}; top up or "
                    "edit fewer items. Nothing was sent.")
