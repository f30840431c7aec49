"""One run of the batch operator, as a short pipeline of steps over a plan:

plan (``catalog.planning``) -> check (``catalog.checks``) -> send (``catalog.sending``) -> settle
(``catalog.settling``) -> report (``catalog.report``). Every record an item's step writes is a transition of
``catalog.lifecycle``; the threads share only ``catalog.progress.Progress``. (The operator binds the folder to its
DAG first: ``state.binding``.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.catalog.checks import Checks
from airflow_provider_cutout.catalog.config import BatchConfig
from airflow_provider_cutout.catalog.entries import Entries
from airflow_provider_cutout.catalog.plan import PlannedEdit, Rejected, file_stem
from airflow_provider_cutout.catalog.planning import Plan, make_plan
from airflow_provider_cutout.catalog.progress import Progress
from airflow_provider_cutout.catalog.report import Reporter
from airflow_provider_cutout.catalog.sending import Sender
from airflow_provider_cutout.catalog.settling import Settler
from airflow_provider_cutout.catalog.workers import Workers
from airflow_provider_cutout.exceptions import CutoutError, fail_or_retry
from airflow_provider_cutout.observability import metrics
from airflow_provider_cutout.state.claims import Claims, Owner
from airflow_provider_cutout.state.manifest import Manifest

if TYPE_CHECKING:
    from airflow_provider_cutout.hooks.cutout import CutoutHook


class BatchRun:
    """One run of ``CutoutBatchImageEditOperator`` over its planned items.

    :param config: how the run behaves (concurrency, budgets, waits, gallery).
    :param hook: the hook whose client sends every request.
    :param folder: the output folder (an ``ObjectStoragePath``).
    :param owner: who this run is, for its claims.
    :param planned: the validated items.
    :param log: the task's logger.
    :param rejected: the items that failed their checks, left to ``max_failures``: failed items of this run.
    """

    def __init__(self, config: BatchConfig, hook: CutoutHook, folder: Any, owner: Owner,
                 planned: list[PlannedEdit], log: Any, rejected: Sequence[Rejected] = ()) -> None:
        hook.client.on_retry = metrics.retried
        self.config, self.hook, self.folder, self.log = config, hook, folder, log
        self.planned, self.rejected = planned, list(rejected)
        self.chunk = owner.map_index >= 0  # a mapped task reads only its items' records (indexed files)
        keys = {item.key for item in planned} | {r.key for r in self.rejected if r.key is not None}
        self.manifest = Manifest(folder, writer=owner.token, keys=keys if self.chunk else None, origin=owner.origin)
        self.origin = owner.origin
        self.folds = owner.map_index <= 0  # one task of a mapped run folds the reviewers' decision files
        # One signal for the run and its client to send no more edits: a thread waiting in the governor wakes, and
        # sends nothing; downloads go on. A run starts unstopped (an operator's hook outlives a run in dag.test).
        hook.client.transport.resume()
        self.progress = Progress(total=len(planned) + len(self.rejected), stop=hook.client.edits_stopped)
        self.claims = Claims(folder, owner, config.heartbeat_timeout)
        self.reporter = Reporter(config, self.progress, self.manifest, folder, log, keys=keys,
                                 chunk=owner.map_index if self.chunk else None, governor=hook.client.governor)
        self.workers = Workers(self.progress, config.max_concurrency, config.progress_interval,
                               self.reporter.progress_line, self.kill)
        self.sender = Sender(config, hook, folder, self.claims, Entries(self.manifest), self.progress)
        self.plan: Plan | None = None
        self.seconds_sending = 0.0

    @property
    def gallery(self) -> Any:
        """The review gallery written at the end of the run, if any."""
        return self.reporter.gallery

    def execute(self) -> dict[str, Any]:
        """Plan, check, send, settle, and report."""
        try:
            try:
                plan = self.plan = self._planned()
                self.claims.open()
                try:
                    self._send(plan)
                    settler = Settler(self.config, self.sender, self.workers, self.log)
                    settler.held()
                    settler.followers(plan.followers)
                    self.reporter.progress_line()  # the run's last progress line, also when nothing was to do
                    self.manifest.close(fold_decisions=self.folds)  # every record while the heartbeat says alive
                finally:
                    self.claims.close()
            finally:
                self.manifest.close(fold_decisions=self.folds)
                self.reporter.write_gallery()
        except CutoutError as err:
            fail_or_retry(err, self.log)
        return self.reporter.summary(self.plan, self.seconds_sending, self.plan.to_attempt if self.plan else 0)

    def _planned(self) -> Plan:
        """The plan, its skipped and in-doubt items counted, checked before anything is paid for."""
        plan = self.plan = make_plan(self.config, self.hook, self.folder, self.sender.entries, self.planned,
                                     self.rejected, chunk=self.chunk, log=self.log)
        self.progress.skipped += len(plan.skipped)
        self.progress.doubtful.extend(plan.in_doubt)
        checks = Checks(self.config, self.hook, self.manifest, self.progress, self.log)
        checks.reject([(r.key, r.problem, None) for r in self.rejected], invalid=True)
        self.reporter.plan(plan, len(self.planned))
        plan = self.plan = checks.sources(checks.conflicts(plan, self.origin, self.folder, self.planned))
        checks.budget(plan)
        return plan

    def _send(self, plan: Plan) -> None:
        """Sweep what dead runs left, then fetch again, restore and edit, on the run's threads."""
        self.sender.sweep_leftovers({file_stem(item.key) for item in self.planned}, plan.listed, chunk=self.chunk)
        started = time.monotonic()
        self.workers.work([(self.sender.recover, item, entry) for item, entry in plan.to_refetch]
                          + [(self.sender.restore, item, entry) for item, entry in plan.to_restore]
                          + [(self.sender.edit, item) for item in plan.to_edit])
        self.seconds_sending = time.monotonic() - started

    def kill(self) -> None:
        """Stop spending now (``on_kill``: SIGTERM, ``execution_timeout``, a task marked failed): no new edit
        starts; the edits in flight finish and are recorded (each within ``read_timeout``), then the task fails."""
        if not self.progress.killed.is_set():
            self.log.warning("Cutout batch: told to stop; no new edit starts, the edits in flight are recorded")
        self.progress.killed.set()
        self.progress.stop.set()  # (the client's signal: also if the hook's client were rebuilt since)
        self.hook.stop()  # wakes the threads that wait in the governor or to retry: nothing is sent after this
