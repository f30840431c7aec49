"""``CutoutBatchImageEditOperator``: a catalog of edits in one task, with bounded concurrency,
a budget, and re-runs that only pay for what changed."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_cutout.exceptions import (
    AuthenticationError,
    CutoutError,
    InsufficientCreditsError,
    InvalidInputError,
)
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.manifest import (
    EDITED,
    FAILED,
    IN_DOUBT,
    STORED,
    Manifest,
    load_entries,
    manifest_name,
)
from airflow_provider_cutout.models import ImageEditRequest
from airflow_provider_cutout.operators.image_edit import as_list, fail_or_retry, is_dynamic

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Errors after which every further call would fail the same way (or cost money for nothing).
STOP_BATCH = (AuthenticationError, InsufficientCreditsError)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def chunk_items(items: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Split a catalog into chunks of at most ``size`` items, to map the batch operator over them.

    :param items: the catalog items.
    :param size: the largest chunk.
    """
    if size < 1:
        raise InvalidInputError(f"size={size!r} must be at least 1")
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def file_stem(key: str) -> str:
    """A file name for an item key: letters, digits, ``.``, ``_`` and ``-`` only."""
    return _UNSAFE.sub("_", key).strip(".") or "item"


@dataclass
class PlannedEdit:
    """One valid item and what it will cost."""

    key: str
    request: ImageEditRequest

    @property
    def fingerprint(self) -> str:
        """The request fingerprint that keys the manifest."""
        return self.request.fingerprint


@dataclass
class Progress:
    """Counters shared by the worker threads."""

    total: int
    skipped: int = 0
    edited: int = 0
    recovered: int = 0
    failed: int = 0
    credits: int = 0
    errors: list[str] = field(default_factory=list)
    doubtful: list[str] = field(default_factory=list)  # keys that may have been charged without a result
    stop_error: CutoutError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def in_doubt(self) -> int:
        """Items charged (or maybe charged) without a stored result."""
        return len(self.doubtful)

    @property
    def done(self) -> int:
        """Items finished one way or another."""
        return self.skipped + self.edited + self.recovered + self.failed + self.in_doubt


class RateLimiter:
    """At most ``per_second`` starts per second across threads (``None``: no limit)."""

    def __init__(self, per_second: float | None) -> None:
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the next start is allowed."""
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


class CutoutBatchImageEditOperator(BaseOperator):
    """Edit a whole catalog in one task and store every result in ``output_dir``.

    Every item is validated and the cost is planned before the first call; items whose edit (by
    request fingerprint) is already stored are skipped and cost nothing, so a daily re-run pays
    only for new or changed items. A manifest in ``output_dir`` records every result as it arrives.
    Returns a small summary; read the manifest with ``airflow_provider_cutout.manifest.read_manifest``.

    :param items: a list (or XComArg) of dicts with ``key``, ``prompt`` (or the operator's
        ``prompt``), ``image_urls``, and optional ``model`` / ``aspect_ratio``. Templated.
    :param output_dir: the folder for results and the manifest (``ObjectStoragePath`` syntax).
        Templated.
    :param prompt: the prompt for items without their own. Templated.
    :param model: the model for items without their own. Templated.
    :param aspect_ratio: the ratio for items without their own. Templated.
    :param max_concurrency: edits in flight at once.
    :param requests_per_second: optional cap on how fast edits start.
    :param max_credits: fail before any call when the planned cost is higher.
    :param max_failures: failed items tolerated, as a count (``3``) or a fraction of the items to
        edit (``0.05``); more fails the task at the end (its ``retries`` then redo only those).
    :param check_balance: read the balance first and fail before any call when it is too low.
    :param resend_in_doubt: edit again items that were (or may have been) charged without a stored
        result: a read timeout, a dropped connection, a result URL that expired before it was stored.
        Off by default, since it can charge twice.
    :param progress_interval: seconds between progress lines in the log.
    :param cutout_conn_id: the ``cutout`` connection.
    """

    template_fields: Sequence[str] = ("items", "output_dir", "prompt", "model", "aspect_ratio")
    ui_color = "#d4ecfb"

    def __init__(
        self,
        *,
        items: list[dict[str, Any]] | Any,
        output_dir: str,
        prompt: str | None = None,
        model: str = "gpt-image-1",
        aspect_ratio: str = "original",
        max_concurrency: int = 8,
        requests_per_second: float | None = None,
        max_credits: int | None = None,
        max_failures: int | float = 0,
        check_balance: bool = False,
        resend_in_doubt: bool = False,
        progress_interval: float = 10.0,
        cutout_conn_id: str = CutoutHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = f"{type(self).__name__}(task_id={self.task_id!r})"
        if not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= 256:
            raise InvalidInputError(f"{owner}: max_concurrency={max_concurrency!r} must be an integer from 1 to 256")
        if requests_per_second is not None and requests_per_second <= 0:
            raise InvalidInputError(f"{owner}: requests_per_second={requests_per_second!r} must be positive")
        if max_credits is not None and max_credits < 0:
            raise InvalidInputError(f"{owner}: max_credits={max_credits!r} must be 0 or more")
        if isinstance(max_failures, bool) or not isinstance(max_failures, (int, float)) or max_failures < 0 or (
            isinstance(max_failures, float) and max_failures >= 1
        ):
            raise InvalidInputError(
                f"{owner}: max_failures={max_failures!r} must be a count (0, 1, 2...) or a fraction below 1 (0.05)"
            )
        self.items = items
        self.output_dir = output_dir
        self.prompt = prompt
        self.model = model
        self.aspect_ratio = aspect_ratio
        self.max_concurrency = max_concurrency
        self.requests_per_second = requests_per_second
        self.max_credits = max_credits
        self.max_failures = max_failures
        self.check_balance = check_balance
        self.resend_in_doubt = resend_in_doubt
        self.progress_interval = progress_interval
        self.cutout_conn_id = cutout_conn_id
        if not is_dynamic([items, prompt, model, aspect_ratio]):
            self.plan_items(items, base_url="http://127.0.0.1")  # parse time: no connection lookup

    @cached_property
    def hook(self) -> CutoutHook:
        """The hook for ``cutout_conn_id``."""
        return CutoutHook(cutout_conn_id=self.cutout_conn_id)

    # -- planning --------------------------------------------------------------------------------

    def plan_items(self, items: Any, *, base_url: str) -> list[PlannedEdit]:
        """Validate every item; raise one ``InvalidInputError`` listing all invalid ones."""
        items = as_list(items)
        if not isinstance(items, (list, tuple)):
            raise InvalidInputError(f"items must be a list of dicts, got {type(items).__name__}")
        planned: list[PlannedEdit] = []
        problems: list[str] = []
        seen_keys: dict[str, str] = {}
        seen_fps: dict[str, str] = {}
        for index, item in enumerate(items):
            where = f"items[{index}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: must be a dict with key, prompt and image_urls, got {type(item).__name__}")
                continue
            key = item.get("key")
            if not isinstance(key, str) or not key.strip():
                problems.append(f"{where}: key={key!r} must be a non-empty string that names the item")
                continue
            where = f"item {key!r}"
            unknown = set(item) - {"key", "prompt", "image_urls", "model", "aspect_ratio"}
            if unknown:
                problems.append(f"{where}: unknown fields {sorted(unknown)}; use key, prompt, image_urls, model, "
                                "aspect_ratio")
                continue
            stem = file_stem(key)
            if stem in seen_keys:
                problems.append(f"{where}: its file name {stem!r} is also that of item {seen_keys[stem]!r}; "
                                "keys must be unique")
                continue
            seen_keys[stem] = key
            try:
                request = ImageEditRequest.build(
                    item.get("prompt", self.prompt), item.get("image_urls"), item.get("model", self.model),
                    item.get("aspect_ratio", self.aspect_ratio), base_url=base_url,
                )
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
            if request.fingerprint in seen_fps:
                problems.append(f"{where}: the same edit as item {seen_fps[request.fingerprint]!r}; list it once")
                continue
            seen_fps[request.fingerprint] = key
            planned.append(PlannedEdit(key, request))
        if problems:
            shown = "\n  ".join(problems[:50])
            if len(problems) > 50:
                shown += f"\n  ... and {len(problems) - 50} more"
            raise InvalidInputError(
                f"{type(self).__name__}(task_id={self.task_id!r}): {len(problems)} of {len(items)} items are "
                f"invalid; nothing was sent:\n  {shown}"
            )
        return planned

    @staticmethod
    def _remove_own_leftovers(folder: Any, planned: list[PlannedEdit], manifest_file: str) -> set[str]:
        """Delete temporary files a killed run of these items left; return the folder's file names.

        Only this task's own temporaries (named after its items and its manifest) are removed, so
        chunks sharing the folder never touch each other's files in progress.
        """
        if not folder.exists():
            return set()
        own = {file_stem(item.key) for item in planned} | {manifest_file}
        names = set()
        for path in folder.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(".part") and name[1:].rsplit(".", 2)[0] in own:
                path.unlink()
            else:
                names.add(name)
        return names

    def _failure_limit(self, to_edit: int) -> int:
        if isinstance(self.max_failures, float):
            return int(self.max_failures * to_edit)
        return int(self.max_failures)

    # -- running ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Plan, skip what is stored, edit the rest concurrently, and return a summary."""
        from airflow.sdk import ObjectStoragePath

        hook = self.hook
        try:
            planned = self.plan_items(self.items, base_url=hook.base_url)
        except CutoutError as err:
            fail_or_retry(err, self.log)
        folder = ObjectStoragePath(str(self.output_dir).rstrip("/") + "/")
        known = load_entries(folder)
        map_index = getattr(context.get("ti"), "map_index", -1)
        existing = self._remove_own_leftovers(folder, planned, manifest_name(map_index))
        todo, recover, skip, doubtful = [], [], 0, []
        for item in planned:
            entry = known.get(item.fingerprint)
            status = entry.get("status") if entry else None
            if status == STORED and ObjectStoragePath(entry["stored_path"]).name in existing:  # type: ignore[index]
                skip += 1
            elif status in (STORED, EDITED) and entry and entry.get("image_url"):
                recover.append((item, entry))  # paid for already: fetch again, never edit again
            elif status == IN_DOUBT and not self.resend_in_doubt:
                doubtful.append(item.key)
            else:
                todo.append(item)
        cost = sum(item.request.credits for item in todo)
        self.log.info(
            "Cutout batch plan: %d items, %d already stored (skipped), %d to fetch again, %d in doubt "
            "(not resent), %d to edit for %d credits", len(planned), skip, len(recover), len(doubtful), len(todo), cost,
        )
        if self.max_credits is not None and cost > self.max_credits:
            fail_or_retry(InvalidInputError(
                f"the planned cost is {cost} credits for {len(todo)} edits, over max_credits={self.max_credits}; "
                "raise max_credits or edit fewer items. Nothing was sent."), self.log)
        if self.check_balance and todo:
            try:
                balance = hook.get_credit_balance()
            except CutoutError as err:
                fail_or_retry(err, self.log)
            if balance.total < cost:
                fail_or_retry(InsufficientCreditsError(
                    f"the planned cost is {cost} credits but the account has {balance.total:g}; top up or "
                    "edit fewer items. Nothing was sent."), self.log)

        manifest = Manifest(folder, manifest_name(map_index))
        progress = Progress(total=len(planned), skipped=skip, doubtful=doubtful)
        stop = threading.Event()
        try:
            self._run(hook, folder, manifest, progress, stop, recover, todo)
        finally:
            manifest.close()
            hook.close()
        summary = {
            "total": progress.total, "skipped": progress.skipped, "edited": progress.edited,
            "recovered": progress.recovered, "failed": progress.failed, "in_doubt": progress.in_doubt,
            "not_attempted": progress.total - progress.done, "credits_spent": progress.credits,
            "planned_credits": cost, "manifest": str(manifest.path), "output_dir": str(folder),
        }
        self.log.info("Cutout batch summary: %s", summary)
        if progress.stop_error is not None:
            stop_error = progress.stop_error
            stop_error.message += (
                f"; the batch stopped at once: {summary['not_attempted']} items were not attempted. "
                "Stored results are kept; a re-run continues from there"
            )
            fail_or_retry(stop_error, self.log)
        if progress.in_doubt:
            fail_or_retry(CutoutError(
                f"{progress.in_doubt} items were or may have been charged without a stored result (a read timeout, "
                f"a dropped connection, an expired result URL): {', '.join(progress.doubtful[:50])}. They are not "
                "sent again automatically: check the account's usage, then set resend_in_doubt=True to edit them "
                "again"),
                self.log)
        limit = self._failure_limit(len(todo) + len(recover))
        if progress.failed > limit:
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException(
                f"{progress.failed} items failed, more than max_failures={self.max_failures!r} allows ({limit}); "
                f"first errors: {'; '.join(progress.errors[:5])}. Stored results are kept; a retry only redoes "
                "the failed items."
            )
        return summary

    def _run(self, hook: CutoutHook, folder: Any, manifest: Manifest, progress: Progress,
             stop: threading.Event, recover: list[tuple[PlannedEdit, dict[str, Any]]],
             todo: list[PlannedEdit]) -> None:
        from airflow_provider_cutout.storage import store_image

        limiter = RateLimiter(self.requests_per_second)
        client = hook.client
        out = str(folder).rstrip("/") + "/"

        def base_entry(item: PlannedEdit) -> dict[str, Any]:
            req = item.request
            return {"key": item.key, "fingerprint": item.fingerprint, "model": req.model,
                    "aspect_ratio": req.aspect_ratio, "image_urls": list(req.image_urls)}

        def store(item: PlannedEdit, entry: dict[str, Any]) -> bool:
            try:
                path = store_image(client, entry["image_url"], out, file_stem(item.key))
            except CutoutError as err:
                fail(item, entry, err)
                return False
            manifest.record({**entry, "status": STORED, "stored_path": path, "error": None})
            return True

        def fail(item: PlannedEdit, entry: dict[str, Any], err: CutoutError) -> None:
            text = f"{item.key}: {type(err).__name__}: {err}"
            charged = bool(entry.get("image_url")) or err.maybe_charged
            if charged and err.retryable:
                failed = {**entry, "status": EDITED, "error": text}  # paid for: a re-run fetches it again
            elif charged:
                failed = {**entry, "status": IN_DOUBT, "error": text}  # never edited again without consent
            else:
                failed = {**entry, "status": FAILED, "image_url": None, "error": text}
            manifest.record(failed, durable=charged)
            with progress.lock:
                if charged and not err.retryable:
                    progress.doubtful.append(item.key)
                else:
                    progress.failed += 1
                progress.errors.append(text)
                if isinstance(err, STOP_BATCH) and progress.stop_error is None:
                    progress.stop_error = err
                    stop.set()

        def refetch(item: PlannedEdit, entry: dict[str, Any]) -> None:
            if store(item, entry):
                with progress.lock:
                    progress.recovered += 1

        def edit(item: PlannedEdit) -> None:
            if stop.is_set():
                return
            limiter.wait()
            entry = base_entry(item)
            try:
                result = client.edit_image(item.request)
            except CutoutError as err:
                fail(item, entry, err)
                return
            entry.update(status=EDITED, image_url=result.image_url, id=result.id, request_id=result.request_id,
                         credits=result.credits, duration=result.duration)
            manifest.record(entry, durable=True)  # charged: never lose it
            with progress.lock:
                progress.credits += result.credits
            if store(item, entry):
                with progress.lock:
                    progress.edited += 1

        started = time.monotonic()
        last_report = started
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="cutout-batch") as pool:
            pending: set[Future[None]] = {pool.submit(refetch, item, entry) for item, entry in recover}
            pending |= {pool.submit(edit, item) for item in todo}
            while pending:
                done, pending = wait(pending, timeout=min(1.0, self.progress_interval), return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # a bug in a worker must not pass silently
                now = time.monotonic()
                if now - last_report >= self.progress_interval:
                    last_report = now
                    self._report(progress, now - started)
        self._report(progress, time.monotonic() - started)

    def _report(self, progress: Progress, elapsed: float) -> None:
        with progress.lock:
            worked = progress.edited + progress.recovered + progress.failed
            done, total = progress.done, progress.total
            rate = worked / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else float("nan")
            self.log.info(
                "Cutout batch progress: %d/%d done, %d skipped, %d failed, %d credits spent, %.1f items/s, "
                "ETA %.0fs", done, total, progress.skipped, progress.failed, progress.credits, rate, eta,
            )
