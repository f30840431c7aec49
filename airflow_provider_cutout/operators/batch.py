"""``CutoutBatchImageEditOperator``: a catalog of edits in one task, with bounded concurrency,
a budget, and re-runs that only pay for what changed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_cutout.claims import Owner
from airflow_provider_cutout.exceptions import CutoutError, InvalidInputError, fail_or_retry
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.links import CutoutGalleryLink, gallery_link
from airflow_provider_cutout.models import ImageEditRequest
from airflow_provider_cutout.operators._common import as_list, is_dynamic

if TYPE_CHECKING:
    from airflow.sdk import Context

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


class CutoutBatchImageEditOperator(BaseOperator):
    """Edit a whole catalog in one task and store every result in ``output_dir``.

    Every item is validated and the cost is planned before the first call; items whose edit (by
    request fingerprint) is already stored are skipped and cost nothing, so a daily re-run pays
    only for new or changed items. Before an edit is sent, it is claimed in ``output_dir``, so runs
    that overlap (or chunks that share an item) never both pay for it; a run waits for the items
    another live run holds. A manifest log in ``output_dir`` records every result as it arrives.
    Returns a small summary; read the manifest with ``airflow_provider_cutout.manifest.read_manifest``.
    With assets in ``outlets`` (the output folder, say), their events carry the run's counts, the
    manifest and the output folder as ``extra``.

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
        result: a read timeout, a dropped connection, a result URL that expired before it was stored,
        a worker that died with the edit claimed. Off by default, since it can charge twice.
    :param claim_wait_timeout: seconds to wait, after this run's own items, for the results of items
        that other live runs hold; then the task fails naming those runs (a retry waits again).
    :param heartbeat_timeout: seconds without a heartbeat after which a run on another host counts
        as dead (its claims without a result become in doubt). Keep it well above clock skew.
    :param progress_interval: seconds between progress lines in the log.
    :param check_sources: read each source image's headers and first bytes before anything is paid for
        (reachable, JPEG or PNG, the model's limits; every failing item reported at once, nothing sent);
        the connection's ``check_sources`` (on) by default.
    :param gallery: write the review gallery ``cutout-gallery.html`` into ``output_dir`` at the end of
        each run (from the whole manifest; the "Cutout gallery" link on the task opens it).
    :param gallery_link_expiry: on object storage, show results in the gallery through signed URLs valid
        this many seconds; by default the page links them relative to itself (copy or serve the folder).
    :param cutout_conn_id: the ``cutout`` connection.
    """

    template_fields: Sequence[str] = ("items", "output_dir", "prompt", "model", "aspect_ratio")
    ui_color = "#d4ecfb"
    operator_extra_links = (CutoutGalleryLink(),)

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
        claim_wait_timeout: float = 1800.0,
        heartbeat_timeout: float = 120.0,
        progress_interval: float = 10.0,
        check_sources: bool | None = None,
        gallery: bool = True,
        gallery_link_expiry: int | None = None,
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
        if gallery_link_expiry is not None and (isinstance(gallery_link_expiry, bool) or not isinstance(
                gallery_link_expiry, int) or gallery_link_expiry <= 0):
            raise InvalidInputError(f"{owner}: gallery_link_expiry={gallery_link_expiry!r} must be a positive number "
                                    "of seconds (an int), or None to link results relative to the page")
        for name, seconds in (("claim_wait_timeout", claim_wait_timeout), ("heartbeat_timeout", heartbeat_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
                raise InvalidInputError(f"{owner}: {name}={seconds!r} must be a positive number of seconds")
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
        self.claim_wait_timeout = claim_wait_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.progress_interval = progress_interval
        self.check_sources = check_sources
        self.gallery = gallery
        self.gallery_link_expiry = gallery_link_expiry
        self.gallery_url: str | None = None  # set by execute; read by the extra link
        self._lineage: tuple[list[PlannedEdit], dict[str, Any]] | None = None  # set by execute
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
        stems: dict[str, str] = {}
        fingerprints: dict[str, str] = {}
        for index, item in enumerate(items):
            try:
                planned.append(self._plan_item(index, item, base_url, stems, fingerprints))
            except ValueError as err:
                problems.append(str(err))
        if problems:
            shown = "\n  ".join(problems[:50])
            if len(problems) > 50:
                shown += f"\n  ... and {len(problems) - 50} more"
            raise InvalidInputError(
                f"{type(self).__name__}(task_id={self.task_id!r}): {len(problems)} of {len(items)} items are "
                f"invalid; nothing was sent:\n  {shown}"
            )
        return planned

    def _plan_item(self, index: int, item: Any, base_url: str, stems: dict[str, str],
                   fingerprints: dict[str, str]) -> PlannedEdit:
        """One item, validated against the others seen so far; a ``ValueError`` names what is wrong."""
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a dict with key, prompt and image_urls, got {type(item).__name__}")
        key = item.get("key")
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{where}: key={key!r} must be a non-empty string that names the item")
        where = f"item {key!r}"
        unknown = set(item) - {"key", "prompt", "image_urls", "model", "aspect_ratio"}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}; use key, prompt, image_urls, model, "
                             "aspect_ratio")
        stem = file_stem(key)
        if stem in stems:
            raise ValueError(f"{where}: its file name {stem!r} is also that of item {stems[stem]!r}; keys must be "
                             "unique")
        stems[stem] = key
        try:
            request = ImageEditRequest.build(
                item.get("prompt", self.prompt), item.get("image_urls"), item.get("model", self.model),
                item.get("aspect_ratio", self.aspect_ratio), base_url=base_url,
            )
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if request.fingerprint in fingerprints:
            raise ValueError(f"{where}: the same edit as item {fingerprints[request.fingerprint]!r}; list it once")
        fingerprints[request.fingerprint] = key
        return PlannedEdit(key, request)

    def failure_limit(self, to_edit: int) -> int:
        """How many failed items ``max_failures`` tolerates among ``to_edit``."""
        if isinstance(self.max_failures, float):
            return int(self.max_failures * to_edit)
        return int(self.max_failures)

    # -- running ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Plan, skip what is stored, claim and edit the rest concurrently, and return a summary."""
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_cutout.operators.batch_run import BatchRun

        hook = self.hook
        try:
            try:
                planned = self.plan_items(self.items, base_url=hook.base_url)
            except CutoutError as err:
                fail_or_retry(err, self.log)
            folder = ObjectStoragePath(str(self.output_dir).rstrip("/") + "/")
            run = BatchRun(self, hook, folder, Owner.of_task(context), planned)
            try:
                summary = run.execute()
            finally:
                self.gallery_url = gallery_link(run.gallery)
        finally:
            hook.close()
        self._announce(context, summary)
        self._lineage = (planned, summary)
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (openlineage provider): the sources' folders in, the output folder out, the run's counts."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_cutout.lineage import batch_lineage

        if self._lineage is None:
            return OperatorLineage()
        planned, summary = self._lineage
        models = sorted({item.request.model for item in planned}) or [str(self.model)]
        return batch_lineage((url for item in planned for url in item.request.image_urls), str(self.output_dir),
                             ",".join(models), summary)

    def _announce(self, context: Context, summary: dict[str, Any]) -> None:
        """Attach the run's counts to the event of every asset in ``outlets`` (Airflow emits them when
        the task succeeds), so DAGs scheduled on the asset know what changed."""
        from airflow.sdk import Asset

        extra = {key: summary[key] for key in ("edited", "skipped", "by_other_runs", "failed", "credits_spent",
                                              "manifest", "output_dir")}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
