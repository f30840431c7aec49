"""One run of the batch operator: plan, claim, send, record, store, report.

``BatchRun`` carries the shared state of one run through short steps; ``catalog.plan.classify`` decides
what it does with each item, from what the manifest and the claims say of it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.api.models import ImageEditRequest
from airflow_provider_cutout.api.sources import sources_failed
from airflow_provider_cutout.catalog.config import BatchConfig
from airflow_provider_cutout.catalog.gallery import write_gallery
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
    Rejected,
    classify,
    file_stem,
)
from airflow_provider_cutout.exceptions import (
    AuthenticationError,
    CatalogStateError,
    ClaimedElsewhereError,
    CutoutError,
    InsufficientCreditsError,
    InvalidInputError,
    fail_or_retry,
)
from airflow_provider_cutout.observability import metrics
from airflow_provider_cutout.state.claims import Claims, Owner
from airflow_provider_cutout.state.io import (
    Digesting,
    copy_into,
    existing,
    file_exists,
    file_sha256,
    is_local,
    list_names,
    store_image,
)
from airflow_provider_cutout.state.manifest import EDITED, FAILED, IN_DOUBT, STORED, Manifest, file_name, precedence
from airflow_provider_cutout.state.versions import adopt_unversioned
from airflow_provider_cutout.texts import first_of

if TYPE_CHECKING:
    from airflow_provider_cutout.hooks.cutout import CutoutHook

#: Errors after which every further call would fail the same way (or cost money for nothing).
STOP_BATCH = (AuthenticationError, InsufficientCreditsError, CatalogStateError)

POLL_SECONDS = 0.5


@dataclass
class Progress:
    """Counters shared by the worker threads."""

    total: int
    skipped: int = 0
    edited: int = 0
    recovered: int = 0
    failed: int = 0
    by_other_runs: int = 0
    shared: int = 0  # stored from the edit another item key paid for (same photo, prompt and model)
    restored: int = 0  # delivered before, file gone since: fetched or edited again
    credits: int = 0
    errors: list[str] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)  # outcome -> item keys, for the run's log
    doubtful: list[str] = field(default_factory=list)  # keys that may have been charged without a result
    stop_error: CutoutError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, key: str) -> None:
        """Count one item's outcome (``edited``, ``restored``, ``shared``, ``recovered``, ``failed``); hold the lock."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.keys.setdefault(outcome, []).append(key)

    @property
    def in_doubt(self) -> int:
        """Items charged (or maybe charged) without a stored result."""
        return len(self.doubtful)

    @property
    def done(self) -> int:
        """Items finished one way or another."""
        return (self.skipped + self.edited + self.recovered + self.shared + self.restored + self.failed
                + self.in_doubt + self.by_other_runs)


class RateLimiter:
    """At most ``per_second`` starts per second across threads (``None``: no limit).

    :param clock: the monotonic clock; :param sleep: how to wait (tests count the waits through both).
    """

    def __init__(self, per_second: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1.0 / per_second if per_second else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = clock()
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the next start is allowed."""
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


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
        self.config, self.log, self.client = config, log, hook.client
        self.client.on_retry = metrics.retried
        self.hook = hook
        self.folder, self.out = folder, str(folder).rstrip("/") + "/"
        self.planned = planned
        self.rejected = list(rejected)
        self.owner = owner
        self.progress = Progress(total=len(planned) + len(self.rejected))
        self.stop = threading.Event()  # send nothing more (an error that every further call would meet, or a kill)
        self.killed = threading.Event()  # start no job at all
        self.held: dict[str, tuple[PlannedEdit, Owner]] = {}  # by item key
        self.followers: dict[str, list[PlannedEdit]] = {}  # by fingerprint: keys that wait for another's edit
        self.limiter = RateLimiter(config.requests_per_second)
        self.claims = Claims(folder, owner, config.heartbeat_timeout)
        # a mapped task (one chunk of a catalog) reads only its items' records from the log's indexed files
        self.chunk = owner.map_index >= 0
        self.keys = {item.key for item in planned} | {r.key for r in self.rejected if r.key is not None}
        self.manifest = Manifest(folder, writer=owner.token, keys=self.keys if self.chunk else None)
        self.folds = owner.map_index <= 0  # one task of a mapped run folds the reviewers' decision files
        self.seconds_sending = 0.0
        self.started = 0.0  # when the run's first job started (monotonic)
        self.gallery: Any = None
        self.to_edit: list[PlannedEdit] = []
        self.to_refetch: list[tuple[PlannedEdit, dict[str, Any]]] = []
        self.to_restore: list[tuple[PlannedEdit, dict[str, Any]]] = []
        self.to_attempt = 0  # items this run edits, fetches or restores, for max_failures
        self.listed: set[str] | None = None  # the output folder's file names, when the plan listed them

    # -- steps -----------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Plan, check the budget, send, wait for items other runs hold, and report."""
        try:
            try:
                self.plan()
                self.check_sources()
                self.check_budget()
                self.claims.open()
                try:
                    self.sweep_leftovers()
                    started = time.monotonic()
                    self.work([(self.recover, item, entry) for item, entry in self.to_refetch]
                              + [(self.restore, item, entry) for item, entry in self.to_restore]
                              + [(self.edit, item) for item in self.to_edit])
                    self.seconds_sending = time.monotonic() - started
                    self.settle_held()
                    self.store_followers()
                    self._report_progress()  # the run's last progress line, also when nothing was to do
                    # every record written while the heartbeat still says "alive"
                    self.manifest.close(fold_decisions=self.folds)
                finally:
                    self.claims.close()
            finally:
                self.manifest.close(fold_decisions=self.folds)
                self.write_gallery()
        except CutoutError as err:
            fail_or_retry(err, self.log)
        return self.report()

    def plan(self) -> None:
        """Sort the items by what the manifest says of them; nothing is sent yet. With source checks on,
        each item's fingerprint includes its sources' versions, so a replaced photo is edited again."""
        self._apply_corrections()
        if self.hook.checks_sources(self.config.check_sources):
            requests = self.hook.with_versions([item.request for item in self.planned],
                                               concurrency=self.config.max_concurrency,
                                               known=self.manifest.source_versions())
            for item, request in zip(self.planned, requests, strict=True):
                item.request = request
        self.manifest.include(item.fingerprint for item in self.planned)  # the items that share their edits
        newest = self._newest_stored()
        entries = [(item, self._entry_for(item)) for item in self.planned]
        if self.chunk and not is_local(self.folder):  # a few files of a large bucket folder: looked up, not listed
            names = existing(self.folder, {file_name(e) for _, e in entries if e and e.get("stored_path")},
                             self.config.max_concurrency)
        else:  # a local listing is cheap and exact about names; the sweep of leftovers uses it too
            names = self.listed = list_names(self.folder)
        leaders: set[str] = set()
        for item, entry in entries:
            stored = str(entry.get("stored_path") or "") if entry else ""
            present = stored.rsplit("/", 1)[-1] in names and self._holds(entry, newest)
            action = classify(entry, file_present=present, resend_in_doubt=self.config.resends(item.key))
            if action == SKIP:
                self.progress.skipped += 1
            elif action == REFETCH and entry is not None:
                self.to_refetch.append((item, entry))
            elif action == IN_DOUBT_ACTION:
                self.progress.doubtful.append(item.key)
            elif item.fingerprint in leaders:  # the same edit as an item before it: paid for once
                self.followers.setdefault(item.fingerprint, []).append(item)
            else:
                leaders.add(item.fingerprint)
                if action == RESTORE and entry is not None:
                    self.to_restore.append((item, entry))
                else:
                    self.to_edit.append(item)
        self.to_attempt = len(self.editing) + len(self.to_refetch) + len(self.rejected)
        self.reject([(r.key, r.problem, None) for r in self.rejected], invalid=True)
        self._log_plan()

    def _apply_corrections(self) -> None:
        """A prompt a reviewer corrected replaces the item's while the item still asks for the prompt it replaced
        (``state.decisions``): the item is edited again once with it (a new fingerprint), then skipped like any
        other. A DAG whose prompt for the item changed since wins."""
        corrected, overruled = [], []
        decisions = self.manifest.decisions
        for item in self.planned:
            request = item.request
            fix = decisions.applies(item.key, request.prompt)
            if fix is None:
                standing = decisions.correction(item.key)
                if standing is not None and standing["prompt"] != request.prompt:
                    overruled.append(item.key)
                continue
            try:
                item.request = ImageEditRequest.build(fix["prompt"], list(request.image_urls), request.model,
                                                      request.aspect_ratio, base_url=self.hook.base_url)
            except ValueError as err:  # recorded through the review view, which checks it: a damaged entry
                self.log.warning("Cutout batch: item %r keeps its prompt: the corrected one is not valid (%s)",
                                 item.key, err)
                continue
            item.own_prompt = request.prompt
            corrected.append(item.key)
        if corrected:
            self.log.info("Cutout batch: %d items use a reviewer's corrected prompt: %s", len(corrected),
                          first_of(corrected, 20, ", "))
        if overruled:
            self.log.info("Cutout batch: %d items keep the DAG's prompt over a reviewer's correction (the DAG's prompt "
                          "changed since): %s", len(overruled), first_of(overruled, 20, ", "))

    def _newest_stored(self) -> dict[str, float]:
        """When each stored file was last written, from the manifest: a key edited again (a new photo, a new
        prompt) overwrites its file, so only the newest entry stored at a path is sure to be what it holds."""
        newest: dict[str, float] = {}
        for entry in self.manifest.entries.values():
            name, when = file_name(entry), _written_at(entry)
            if name and entry.get("status") == STORED and when > newest.get(name, -1.0):
                newest[name] = when
        return newest

    def _holds(self, entry: dict[str, Any] | None, newest: dict[str, float]) -> bool:
        """Whether an entry's stored file (known to be in the folder) holds its edit: it does when the entry is
        the newest written there; an older one (a photo changed, then changed back) only when the file's digest
        is the one it recorded. Otherwise the item counts as missing its file, and is restored."""
        if entry is None or entry.get("status") != STORED or _written_at(entry) >= newest.get(file_name(entry), 0.0):
            return True
        if not entry.get("sha256"):
            return False
        path = self.folder / file_name(entry)  # the folder as it is now (it may have moved since)
        try:
            return bool(file_sha256(str(path)) == entry["sha256"])
        except FileNotFoundError:
            return False
        except OSError as err:  # undecided: restoring might pay again for a result that is there
            raise OSError(f"could not read {path} to check which edit it holds ({err}); nothing was sent, "
                          "retry the task") from err

    def _log_plan(self) -> None:
        self.log.info(
            "Cutout batch plan: %d items, %d already stored (skipped), %d to fetch again, %d in doubt (not resent), "
            "%d to edit for %d credits", len(self.planned), self.progress.skipped, len(self.to_refetch),
            self.progress.in_doubt, len(self.to_edit), self.cost,
        )
        if self.to_restore:
            self.log.warning(
                "Cutout batch: %d stored results are missing from %s (deleted, or a lifecycle rule): each is fetched "
                "again from its result URL, or edited again (paid, counted in the plan above) if that has expired: "
                "%s", len(self.to_restore), self.out, first_of([item.key for item, _ in self.to_restore], 20, ", "))

    @property
    def cost(self) -> int:
        """The planned cost: what the items this run may pay for cost."""
        return sum(item.request.credits for item in self.editing)

    @property
    def editing(self) -> list[PlannedEdit]:
        """The items this run may pay for: those to edit, and the missing results it may have to edit again."""
        return self.to_edit + [item for item, _ in self.to_restore]

    def _entry_for(self, item: PlannedEdit) -> dict[str, Any] | None:
        """What the manifest says of an item: its own newest entry when it holds a paid result (or one adopted
        from before source versions); else, when another item key paid for this very edit, an entry that
        stores that result for this key too (``_shared``); else its own entry, if any."""
        own = self.manifest.get(item.fingerprint, item.key) or self._adopt(item)
        if own is not None and own.get("status") in (STORED, EDITED):
            return own
        return self._shared(item, own)

    def _shared(self, item: PlannedEdit, own: dict[str, Any] | None) -> dict[str, Any] | None:
        """Another key's paid result of the same edit, to store for this key (copying that key's stored file
        when it is there, else fetching the result URL); else ``own``. With no entry of its own, this key is in
        doubt when another key's edit is: the edit may have been charged."""
        others = [e for e in self.manifest.siblings(item.fingerprint) if e.get("key") != item.key]
        paid = [e for e in others if e.get("status") in (STORED, EDITED) and e.get("image_url")]
        if not paid:
            doubt = next((e for e in others if e.get("status") == IN_DOUBT), None)
            if own is not None or doubt is None:
                return own
            return {**self._base_entry(item), "status": IN_DOUBT,
                    "error": f"the same edit as item {doubt.get('key')!r}, in doubt"}
        paid.sort(key=lambda e: e.get("updated_at", 0), reverse=True)
        copyable = (e for e in paid if e.get("status") == STORED and e.get("sha256") and _file_exists(e))
        source = next(copyable, None)  # a file whose digest was recorded: the copy is checked against it
        return {**(source or paid[0]), "key": item.key, "status": EDITED, "stored_path": None, "credits": 0,
                "error": None, "shared_with": (source or paid[0]).get("key"), "own_prompt": item.own_prompt,
                "copy_of": source.get("stored_path") if source else None}

    def _adopt(self, item: PlannedEdit) -> dict[str, Any] | None:
        """An item stored before source versions counted is taken as unchanged once (``state.versions``)."""
        def stored(fp: str) -> dict[str, Any] | None:
            entry = self.manifest.get(fp, item.key)
            return entry if entry is not None and entry.get("status") == STORED else None

        request = item.request
        return adopt_unversioned(item.fingerprint, request.unversioned_fingerprint, request.source_versions, stored,
                                 lambda fp, entry: self.manifest.record(entry))

    def check_sources(self) -> None:
        """Check the sources of every item to edit before anything is paid for (all failures at once)."""
        editing = self.editing
        if not editing or not self.hook.checks_sources(self.config.check_sources):
            return
        started = time.monotonic()
        names = {f"item {item.key!r}: ": item for item in editing}
        failing = self.hook.failing_sources({name: item.request for name, item in names.items()},
                                            concurrency=self.config.max_concurrency)
        self.log.info("Cutout batch: the sources of %d item%s checked in %.2fs; %d failed", len(editing),
                      "" if len(editing) == 1 else "s", time.monotonic() - started, len(failing))
        if failing and not self.config.tolerates(len(failing) + len(self.rejected), self.to_attempt):
            raise sources_failed([problem for found in failing.values() for problem in found])
        bad = {names[name].key for name in failing}
        self.to_edit = [item for item in self.to_edit if item.key not in bad]
        self.to_restore = [(item, entry) for item, entry in self.to_restore if item.key not in bad]
        self.reject([(names[name].key, "; ".join(found), names[name]) for name, found in failing.items()])

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
            base = self._base_entry(item) if item else {"key": key, "fingerprint": "invalid"}
            if key is not None:
                self.manifest.record({**base, "status": FAILED, "error": problem})
            with self.progress.lock:
                self.progress.add("failed", key or problem.split(": ", 1)[0])
                self.progress.errors.append(problem)

    def check_budget(self) -> None:
        """``max_credits`` and ``check_balance``, before anything is sent."""
        if self.config.max_credits is not None and self.cost > self.config.max_credits:
            raise InvalidInputError(
                f"the planned cost is {self.cost} credits for {len(self.editing)} edits, over max_credits="
                f"{self.config.max_credits}; raise max_credits or edit fewer items. Nothing was sent.")
        if self.config.check_balance and self.editing:
            balance = self.hook.get_credit_balance()
            if balance.total < self.cost:
                raise InsufficientCreditsError(
                    f"the planned cost is {self.cost} credits but the account has {balance.total:g}; top up or "
                    "edit fewer items. Nothing was sent.")

    def sweep_leftovers(self) -> None:
        """Delete what runs no longer alive left: temporary files of these items, heartbeat files."""
        self.claims.forget_dead_owners()
        if self.chunk and not is_local(self.folder):
            return  # no listing of a whole bucket folder per chunk; an unmapped run, or a local folder, sweeps
        stems = {file_stem(item.key) for item in self.planned}
        for name in self.listed if self.listed is not None else list_names(self.folder):
            if not (name.startswith(".") and name.endswith(".part")):
                continue
            stem, _, token = name[1:-5].rpartition(".")
            if stem in stems and not self.claims.is_alive(Owner(token=token)):
                (self.folder / name).unlink(missing_ok=True)

    def work(self, jobs: Iterable[tuple[Any, ...]]) -> None:
        """Run jobs ``(function, *args)`` on ``max_concurrency`` threads that take them one by one (so
        the cost per job stays constant however many there are), with progress lines."""
        jobs = list(jobs)
        if not jobs:
            return
        queue, lock = iter(jobs), threading.Lock()

        def worker() -> None:
            while not self.killed.is_set():  # told to stop: no new job starts, those in flight finish
                with lock:
                    job = next(queue, None)
                if job is None:
                    return
                job[0](*job[1:])

        self.started = self.started or time.monotonic()  # rates over the run's work so far
        with ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="cutout-batch") as pool:
            workers = [pool.submit(worker) for _ in range(self.config.max_concurrency)]
            try:
                self._watch(workers)
            except BaseException:  # execution_timeout's AirflowTaskTimeout lands here, in the main thread
                self.kill()
                raise

    def _watch(self, workers: list[Any]) -> None:
        """Report progress until the workers are done; raise the first bug a worker met."""
        while True:
            done, running = wait(workers, timeout=self.config.progress_interval, return_when=FIRST_EXCEPTION)
            if any(future.exception() for future in done):
                self.stop.set()  # a bug in a worker must not pass silently: stop, then raise it
                next(future for future in done if future.exception()).result()
            if not running:
                return
            self._report_progress()

    def kill(self) -> None:
        """Stop spending now (``on_kill``: SIGTERM, ``execution_timeout``, a task marked failed): no new edit
        starts; the edits in flight finish and are recorded (each within ``read_timeout``), then the task fails."""
        if not self.killed.is_set():
            self.log.warning("Cutout batch: told to stop; no new edit starts, the edits in flight are recorded")
        self.killed.set()
        self.stop.set()

    def edit(self, item: PlannedEdit) -> None:
        """Claim an item and, when this run now holds it, send it."""
        if self.stop.is_set():
            return
        try:
            holder = self.claims.claim(item.fingerprint)
        except CutoutError as err:
            self._stop_with(err)
            return
        if holder is None:
            self.send(item)
        else:
            with self.progress.lock:
                self.held[item.key] = (item, holder)

    def send(self, item: PlannedEdit, *, restoring: bool = False, taken: bool = False) -> None:
        """Send a claimed edit, record it as soon as it is charged, then store its image (``restoring``: a
        delivered result whose file and URL are gone; ``taken``: the claim was taken over from a dead owner,
        whose own send may have been charged, so it is never released)."""
        self.limiter.wait()
        if self.stop.is_set():
            if not taken:
                self.claims.release(item.fingerprint)
            return
        entry = {**self._base_entry(item), "taken_over": True} if taken else self._base_entry(item)
        if restoring:  # a kill from here on leaves it in doubt, not "stored" with its file gone
            self.manifest.record({**entry, "status": IN_DOUBT, "error": "sent again to restore a lost result; no "
                                  "answer recorded yet"}, durable=True)
        try:
            result = metrics.measured_edit(self.hook.send_edit, item.request)
        except CutoutError as err:
            self.fail(item, entry, err)
            return
        entry.update(status=EDITED, image_url=result.image_url, id=result.id, request_id=result.request_id,
                     credits=result.credits, duration=result.duration)
        self.manifest.record(entry, durable=True)  # charged: never lose it
        with self.progress.lock:
            self.progress.credits += result.credits
        if self.store(item, entry):
            with self.progress.lock:
                if restoring:
                    self.progress.add("restored", item.key)
                else:
                    self.progress.add("edited", item.key)

    def recover(self, item: PlannedEdit, entry: dict[str, Any]) -> None:
        """Fetch a planned paid-for edit again, unless another run claimed it: that run may be storing it
        right now (its stored record not yet in the log this run read), so it is settled like any held item."""
        holder = self.claims.holder(item.fingerprint)
        if holder is not None and holder.token != self.owner.token:
            with self.progress.lock:
                self.held[item.key] = (item, holder)
        else:
            self.refetch(item, entry)

    def refetch(self, item: PlannedEdit, entry: dict[str, Any]) -> None:
        """Store an edit that was paid for (by this key, or by another key of the same edit) but not stored."""
        if self.store(item, entry):
            with self.progress.lock:
                if entry.get("shared_with"):
                    self.progress.add("shared", item.key)
                else:
                    self.progress.add("recovered", item.key)

    def store(self, item: PlannedEdit, entry: dict[str, Any]) -> bool:
        """Copy the result into the output folder (from another key's stored file of the same edit when there
        is one, else from the result URL) and record it as stored; record why when it cannot be."""
        err = self._store(item, entry)
        if err is not None:
            self.fail(item, entry, err)
        return err is None

    def _store(self, item: PlannedEdit, entry: dict[str, Any]) -> CutoutError | None:
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
        self.manifest.record({**{k: v for k, v in entry.items() if k not in ("copy_of", "adopted_by")},
                              "status": STORED, "stored_path": path, "sha256": digest.hexdigest(), "error": None,
                              "written_at": time.time()})
        return None

    def restore(self, item: PlannedEdit, entry: dict[str, Any]) -> None:
        """A result delivered before whose file is gone: copied from another key's file of the same edit, or
        fetched from its result URL (free); when both are gone, edited again under this run's claim (paid,
        planned), recorded in doubt before it is sent. Never counted done without its file."""
        holder = self.claims.holder(item.fingerprint)
        if holder is not None and holder.token != self.owner.token and self.claims.is_alive(holder):
            with self.progress.lock:
                self.held[item.key] = (item, holder)  # another run may be restoring it right now
            return
        for source in (self._shared(item, None), entry):
            if source is not None and source.get("image_url") and self._store(item, source) is None:
                with self.progress.lock:
                    self.progress.add("restored", item.key)
                return
        winner = self.claims.claim(item.fingerprint) if holder is None else self.claims.take_over(
            item.fingerprint, holder)
        if winner is not None:
            with self.progress.lock:
                self.held[item.key] = (item, winner)
            return
        self.manifest.refresh()  # another run may have acted on it since this run planned
        fresh = self._entry_for(item)
        if fresh is not None and precedence(fresh) > precedence(entry):
            self._after_others(item, fresh)
            return
        self.send(item, restoring=True)

    def _after_others(self, item: PlannedEdit, entry: dict[str, Any]) -> None:
        """A restore that another run overtook: its stored file, or its paid result (free), else in doubt."""
        if entry.get("status") == STORED and _file_exists(entry):
            with self.progress.lock:
                self.progress.by_other_runs += 1
        elif entry.get("status") in (STORED, EDITED) and entry.get("image_url"):
            self.refetch(item, entry)
        else:
            with self.progress.lock:
                self.progress.doubtful.append(item.key)

    def fail(self, item: PlannedEdit, entry: dict[str, Any], err: CutoutError) -> None:
        """Record a failed item: paid for (fetch again later), in doubt, or free (release its claim)."""
        text = f"{item.key}: {type(err).__name__}: {err}"
        paid = bool(entry.get("image_url"))
        if paid and err.retryable:  # paid for, not stored: fetched again later
            status = EDITED
        elif entry.get("taken_over") or ((paid or err.maybe_charged) and not err.retryable):
            status = IN_DOUBT  # maybe charged, here or by the dead owner this run took the claim from
        else:  # charged nothing, or maybe charged with the connection's consent to resend (retry_on_read_timeout)
            status = FAILED
        record = {**entry, "status": status, "error": text}
        if status == FAILED:
            record["image_url"] = None
        self.manifest.record(record, durable=status != FAILED)  # charged, or maybe: never lose it
        if status == FAILED:
            self.claims.release(item.fingerprint)  # a later run may try again
        with self.progress.lock:
            if status == IN_DOUBT:
                self.progress.doubtful.append(item.key)
            else:
                self.progress.add("failed", item.key)
            self.progress.errors.append(text)
        if isinstance(err, STOP_BATCH):
            self._stop_with(err)

    def settle_held(self) -> None:
        """Wait, up to ``claim_wait_timeout``, for the items other runs held when this run wanted them."""
        deadline = time.monotonic() + self.config.claim_wait_timeout
        if self.held:
            self.log.info("Cutout batch: %d items are held by other runs; waiting for their results",
                          len(self.held))
        while self.held and not self.stop.is_set():
            # Holders first, the log after: a run writes its records before its heartbeat stops, so a holder
            # seen dead here has every record it will ever write already in the log read next.
            holders = {key: self._holder(item.fingerprint) for key, (item, _) in list(self.held.items())}
            self.manifest.refresh()
            jobs = [job for key, holder in holders.items() if (job := self._settle(key, *holder)) is not None]
            if jobs:
                self.work(jobs)
            elif self.held and time.monotonic() > deadline:
                raise ClaimedElsewhereError(
                    f"{len(self.held)} items are still held by other runs after claim_wait_timeout="
                    f"{self.config.claim_wait_timeout:g}s, so their results are not stored yet: {self._held_text()}. "
                    "This run's own items are stored; a retry waits for them again")
            elif self.held:
                time.sleep(POLL_SECONDS)

    def _holder(self, fp: str) -> tuple[Owner | None, str | None]:
        """Who holds an item's claim now, and whether it is alive."""
        holder = self.claims.holder(fp)
        return holder, None if holder is None else LIVE if self.claims.is_alive(holder) else DEAD

    def _settle(self, key: str, holder: Owner | None, state: str | None) -> tuple[Any, ...] | None:
        """Look again at one held item; a job when this run must act on it now."""
        item = self.held[key][0]
        fp = item.fingerprint
        entry = self._entry_for(item)
        present = entry is not None and entry.get("status") == STORED and _file_exists(entry)  # only where it decides
        action = classify(entry, file_present=present, resend_in_doubt=self.config.resends(item.key), holder=state)
        if action == WAIT and holder is not None:
            self.held[key] = (item, holder)
            return None
        del self.held[key]
        if action == SKIP:
            with self.progress.lock:
                self.progress.by_other_runs += 1
        elif action == REFETCH:
            return (self.refetch, item, entry)
        elif action == RESTORE:
            return (self.restore, item, entry)
        elif action == IN_DOUBT_ACTION:
            self.manifest.record({**self._base_entry(item), "status": IN_DOUBT,
                                  "error": f"claimed by {holder.describe() if holder else '?'}, which "
                                           "ended without recording a result"})
            with self.progress.lock:
                self.progress.doubtful.append(item.key)
        elif action == TAKE_OVER and holder is not None:
            winner = self.claims.take_over(fp, holder)
            if winner is not None:
                self.held[key] = (item, winner)
                return None
            return (functools.partial(self.send, taken=True), item)
        else:
            return (self.edit, item)  # the claim was released: claim it again
        return None

    def store_followers(self) -> None:
        """Store the items that share an edit with an item this run sent: from its stored file when it was
        stored; else they end as it did (in doubt, or failed), and nothing more is sent for them."""
        jobs, stopped = [], self.stop.is_set()
        for followers in self.followers.values():
            for item in followers:
                entry = self._shared(item, None)
                if entry is not None and entry.get("shared_with"):
                    jobs.append((self.refetch, item, entry))
                elif entry is not None and entry.get("status") == IN_DOUBT:
                    self.manifest.record(entry)
                    with self.progress.lock:
                        self.progress.doubtful.append(item.key)
                elif not stopped:
                    self._fail_follower(item)
        self.work(jobs)

    def _fail_follower(self, item: PlannedEdit) -> None:
        leader = next((e for e in self.manifest.siblings(item.fingerprint) if e.get("status") == FAILED), None)
        why = f"the same edit as item {leader.get('key')!r}, which failed" if leader else "its edit was not done"
        text = f"{item.key}: {why}"
        self.manifest.record({**self._base_entry(item), "status": FAILED, "error": text})
        with self.progress.lock:
            self.progress.add("failed", item.key)
            self.progress.errors.append(text)

    # -- reporting -------------------------------------------------------------------------------

    def write_gallery(self) -> None:
        """Regenerate the folder's review gallery from the whole manifest (a mapped task: its chunk's gallery, from
        its items' entries); a failure to write it is logged, never raised (the edits and the manifest are what
        count)."""
        if not self.config.gallery:
            return
        progress = self.progress
        run = {"edited": progress.edited, "skipped": progress.skipped, "failed": progress.failed,
               "in_doubt": progress.in_doubt, "credits_spent": progress.credits}
        try:
            self.manifest.refresh(decisions=True)
            entries = self.manifest.catalog()
            if self.chunk:
                entries = [entry for entry in entries if entry.get("key") in self.keys]
            self.gallery = write_gallery(self.folder, entries, run=run, link_expiry=self.config.gallery_link_expiry,
                                         chunk=self.owner.map_index if self.chunk else None)
        except Exception as err:  # the gallery never fails a run that stored its items
            self.log.warning("Cutout batch: the review gallery was not written (%s: %s)", type(err).__name__, err)

    def report(self) -> dict[str, Any]:
        """The summary for XCom; fail when the task was told to stop, a result is missing or too many items
        failed."""
        progress = self.progress
        summary = {
            "total": progress.total, "skipped": progress.skipped, "edited": progress.edited,
            "recovered": progress.recovered, "shared": progress.shared, "restored": progress.restored,
            "by_other_runs": progress.by_other_runs, "failed": progress.failed,
            "in_doubt": progress.in_doubt, "not_attempted": progress.total - progress.done,
            "credits_spent": progress.credits, "planned_credits": self.cost,
            "seconds_sending": round(self.seconds_sending, 3), "manifest": str(self.manifest.path),
            "manifest_bytes_written": self.manifest.bytes_written,
            "output_dir": str(self.folder), "gallery": None if self.gallery is None else str(self.gallery),
        }
        self.log.info("Cutout batch summary: %s", summary)
        self._log_keys()
        self._fail_if_incomplete(summary)
        return summary

    def _log_keys(self) -> None:
        """Which items this run edited, restored, failed or left in doubt (the first 20 of each), and where
        the review gallery is."""
        keys = {**self.progress.keys, "left in doubt": self.progress.doubtful}
        for outcome in ("edited", "restored", "shared", "recovered", "failed", "left in doubt"):
            if keys.get(outcome):
                found = keys[outcome]
                self.log.info("Cutout batch: %s %d %s: %s", outcome.replace("shared", "stored from a shared edit"),
                              len(found), "item" if len(found) == 1 else "items", first_of(found, 20, ", "))
        if self.gallery is not None:
            self.log.info("Cutout batch: review gallery: %s", self.gallery)

    def _fail_if_incomplete(self, summary: dict[str, Any]) -> None:
        from airflow.sdk.exceptions import AirflowException

        progress = self.progress
        if self.killed.is_set():
            raise AirflowException(
                f"the task was told to stop (SIGTERM, execution_timeout, or marked failed): no new edit was started "
                f"after that; {summary['not_attempted']} items were not attempted. Stored results are kept; a re-run "
                "continues from there")
        if progress.stop_error is not None:
            err = progress.stop_error
            stopped = type(err)(f"{err.message}; the batch stopped at once: {summary['not_attempted']} items were "
                                "not attempted. Stored results are kept; a re-run continues from there",
                                retryable=err.retryable)
            stopped.__cause__ = err
            fail_or_retry(stopped, self.log)
        if progress.in_doubt:
            fail_or_retry(CutoutError(
                f"{progress.in_doubt} items were or may have been charged without a stored result (a read timeout, "
                f"a dropped connection, an expired result URL, a worker that died with edits in flight): "
                f"{first_of(progress.doubtful, sep=', ')}. They are not sent again automatically: check the account's "
                "usage, then set resend_in_doubt=True, or to a list of their keys, to edit them again"), self.log)
        limit = self.config.failure_limit(self.to_attempt)
        if progress.failed > limit:
            raise AirflowException(
                f"{progress.failed} items failed, more than max_failures={self.config.max_failures!r} allows "
                f"({limit}); first errors: {'; '.join(progress.errors[:5])}. Stored results are kept; a retry only "
                "redoes the failed items."
            )

    def _report_progress(self) -> None:
        progress, elapsed = self.progress, time.monotonic() - self.started if self.started else 0.0
        with progress.lock:
            worked = progress.edited + progress.recovered + progress.failed
            done, total = progress.done, progress.total
            rate = worked / elapsed if elapsed > 0 else 0.0
            eta = f"ETA {(total - done) / rate:.0f}s" if rate > 0 and done < total else "ETA -"
            self.log.info(
                "Cutout batch progress: %d/%d done, %d skipped, %d failed, %d credits spent, %.1f items/s, %s",
                done, total, progress.skipped, progress.failed, progress.credits, rate, eta,
            )

    def _stop_with(self, err: CutoutError) -> None:
        with self.progress.lock:
            if self.progress.stop_error is None:
                self.progress.stop_error = err
        self.stop.set()

    def _held_text(self) -> str:
        return first_of([f"{item.key} (held by {holder.describe()})" for item, holder in self.held.values()],
                        limit=20, sep="; ")

    @staticmethod
    def _base_entry(item: PlannedEdit) -> dict[str, Any]:
        req = item.request
        entry = {"key": item.key, "fingerprint": item.fingerprint, "prompt": req.prompt, "model": req.model,
                 "aspect_ratio": req.aspect_ratio, "image_urls": list(req.image_urls),
                 "source_versions": list(req.source_versions)}
        if item.own_prompt is not None:  # a reviewer's correction: what it replaced, for the next correction
            entry["own_prompt"] = item.own_prompt
        return entry


def _written_at(entry: dict[str, Any]) -> float:
    """When an entry's file was written (``written_at``; ``updated_at`` for entries from before it was kept)."""
    return float(entry.get("written_at") or entry.get("updated_at") or 0)


def _file_exists(entry: dict[str, Any] | None) -> bool:
    """Whether an entry's stored file is there now (an item is never counted done without its file)."""
    from airflow.sdk import ObjectStoragePath

    stored = entry.get("stored_path") if entry else None
    return bool(stored) and file_exists(ObjectStoragePath(str(stored)))
