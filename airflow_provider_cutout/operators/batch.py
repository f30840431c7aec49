"""``CutoutBatchImageEditOperator``: a catalog of edits in one task, with bounded concurrency,
a budget, and re-runs that only pay for what changed. What a batch means lives in ``catalog/``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_cutout.api.urls import folder_problem
from airflow_provider_cutout.catalog.config import BatchConfig
from airflow_provider_cutout.catalog.plan import (
    Defaults,
    PlannedEdit,
    Rejected,
    check_items,
    chunk_items,
    file_stem,
    invalid_items_error,
)
from airflow_provider_cutout.exceptions import CutoutError, InvalidInputError, fail_or_retry
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.observability.links import CutoutGalleryLink, gallery_link
from airflow_provider_cutout.operators._common import as_list, is_dynamic

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

__all__ = ["CutoutBatchImageEditOperator", "PlannedEdit", "chunk_items", "file_stem"]

#: The arguments that shape a run, validated by ``BatchConfig`` (at parse time, and again once rendered).
CONFIG_FIELDS = tuple(BatchConfig.model_fields)


def _renders_as_itself(text: str, env: jinja2.Environment, template_ext: Sequence[str]) -> bool:
    """Whether Jinja would render ``text`` to itself: no start of a tag, an expression or a comment (``{%``,
    ``{{``, ``{#`` or the DAG's own delimiters), no line statement or line comment prefix, no line break (Jinja
    rewrites ``\\r\\n`` and drops a last newline), not a template file's name, and no extension that rewrites
    the source (Airflow's own, ``do``, does not)."""
    from jinja2.ext import Extension

    markers = (env.block_start_string, env.variable_start_string, env.comment_start_string,
               env.line_statement_prefix, env.line_comment_prefix)
    return not ("\n" in text or "\r" in text or any(marker and marker in text for marker in markers)
                or (template_ext and text.endswith(tuple(template_ext)))
                or any(type(ext).preprocess is not Extension.preprocess
                       or type(ext).filter_stream is not Extension.filter_stream for ext in env.extensions.values()))


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
    :param max_credits: fail before any call when the planned cost is higher. Templated.
    :param max_failures: failed items tolerated, as a count (``3``) or a fraction of the items to
        edit (``0.05``); more fails the task at the end (its ``retries`` then redo only those). Templated.
    :param check_balance: read the balance first and fail before any call when it is too low.
    :param resend_in_doubt: edit again items that were (or may have been) charged without a stored
        result: a read timeout, a dropped connection, a result URL that expired before it was stored,
        a worker that died with the edit claimed. Off by default, since it can charge twice. ``True`` for all
        of them, or a list of the keys to resend. Templated: the text ``"true"``/``"false"`` or a list's text
        (any other text is refused).
    :param claim_wait_timeout: seconds to wait, after this run's own items, for the results of items
        that other live runs hold; then the task fails naming those runs (a retry waits again).
    :param heartbeat_timeout: seconds without a heartbeat after which a run on another host counts
        as dead (its claims without a result become in doubt). Keep it well above clock skew.
    :param progress_interval: seconds between progress lines in the log.
    :param check_sources: read each source image's headers and first bytes before anything is paid for
        (reachable, JPEG or PNG, the model's limits; every failing item reported at once, nothing sent);
        the connection's ``check_sources`` (on) by default.
    :param gallery: write the review gallery ``cutout-gallery.html`` into ``output_dir`` at the end of
        each run (from the whole manifest, for people outside Airflow; the "Cutout gallery" link on the task
        opens the Cutout review view, see docs/review.md); a mapped task writes its chunk's,
        ``cutout-gallery-<map index>.html``, from its own items' entries.
    :param gallery_link_expiry: on object storage, show results in the gallery through signed URLs valid
        this many seconds; by default the page links them relative to itself (copy or serve the folder).
    :param cutout_conn_id: the ``cutout`` connection.
    """

    template_fields: Sequence[str] = ("items", "output_dir", "prompt", "model", "aspect_ratio", "max_credits",
                                      "max_failures", "resend_in_doubt")
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
        resend_in_doubt: bool | list[str] = False,
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
        self.items = items
        self.output_dir = output_dir
        self._output_dir_written = str(output_dir)  # as in the DAG file: what run conf cannot choose
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
        self._run: Any = None  # the BatchRun in progress, for on_kill
        self._killed = False
        self.cutout_conn_id = cutout_conn_id
        self.run_config(static_only=True)
        if not is_dynamic([items, prompt, model, aspect_ratio]):
            self.check_items(None, base_url="http://127.0.0.1")  # parse time: no connection lookup

    def render_template(self, content: Any, context: Context, jinja_env: jinja2.Environment | None = None,
                        seen_oids: set[int] | None = None) -> Any:
        """Render as Airflow does, except that a text Jinja would give back unchanged is not compiled.

        Airflow's ``Templater.render_template`` compiles every string it meets (its environments cache no
        template), and walks ``items`` calling this method for each value: a catalog written in the DAG file
        as 8,000 dicts of three plain texts cost 24,000 compiles, most of an unchanged re-run's CPU. Overriding
        this per-value hook, rather than a pass over ``items`` before rendering, keeps all the rest Airflow's on
        every supported version: lists, dicts and tuples walked, XComArgs resolved, ``seen_oids`` (a mapped
        task's expanded values are not rendered), ``template_ext`` files, the fields of nested objects, and
        the errors; mapped tasks render through it too (Airflow calls the unmapped task's
        ``_do_render_template_fields``). The shortcut returns what Jinja would: the text itself, or with native
        rendering what Jinja's ``native_concat`` makes of it (``"123"`` becomes ``123``, as before); so it
        serves every templated field alike, ``items`` being the one where it counts."""
        if isinstance(content, str) and not (seen_oids and id(content) in seen_oids):
            jinja_env = jinja_env or self.get_template_env()
            if _renders_as_itself(content, jinja_env, self.template_ext):
                if not self._renders_native():
                    return content
                from jinja2.nativetypes import native_concat

                return native_concat([content] if content else [])  # Jinja yields nothing for "": None
        return super().render_template(content, context, jinja_env, seen_oids)

    def _renders_native(self) -> bool:
        """Whether Airflow renders this task's templates to native objects, decided as its ``_render`` does: the
        operator's own ``render_template_as_native_obj`` (Airflow 3.2+), else its DAG's."""
        own = getattr(self, "render_template_as_native_obj", None)
        if own is not None:
            return bool(own)
        dag = self.get_dag()
        return bool(dag and dag.render_template_as_native_obj)

    @cached_property
    def hook(self) -> CutoutHook:
        """The hook for ``cutout_conn_id``."""
        return CutoutHook(cutout_conn_id=self.cutout_conn_id)

    # -- validation ------------------------------------------------------------------------------

    @property
    def _owner(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id!r})"

    def run_config(self, *, static_only: bool = False) -> BatchConfig:
        """The run's arguments validated (all bad ones named in one ``InvalidInputError``); with
        ``static_only``, those not still waiting for a template (at parse time)."""
        values = {name: getattr(self, name) for name in CONFIG_FIELDS}
        if static_only:  # a template is checked once rendered; anywhere else it is refused now
            values = {name: value for name, value in values.items()
                      if not (name in self.template_fields and is_dynamic(value))}
        return BatchConfig.parse(self._owner, **values)

    def check_items(self, config: BatchConfig | None, *, base_url: str) -> tuple[list[PlannedEdit], list[Rejected]]:
        """The items validated: invalid ones become failed items of the run when ``config``'s ``max_failures``
        tolerates them, else (and always at parse time, ``config`` ``None``) one ``InvalidInputError`` names
        them all and nothing is sent."""
        defaults = Defaults(self.prompt, self.model, self.aspect_ratio)
        planned, rejected = check_items(as_list(self.items), defaults, base_url=base_url)
        total = len(planned) + len(rejected)
        if rejected and (config is None or not config.tolerates(len(rejected), total)):
            raise invalid_items_error(self._owner, rejected, total)
        return planned, rejected

    # -- running ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Plan, skip what is stored, claim and edit the rest concurrently, and return a summary."""
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_cutout.catalog.run import BatchRun
        from airflow_provider_cutout.state.claims import Owner

        hook = self.hook
        try:
            try:
                config = self.run_config()
                planned, rejected = self.check_items(config, base_url=hook.base_url)
                problem = folder_problem(str(self.output_dir), self._output_dir_written)
                if problem is not None:
                    raise InvalidInputError(f"{self._owner}: {problem}; nothing was sent")
            except CutoutError as err:
                fail_or_retry(err, self.log)
            folder = ObjectStoragePath(str(self.output_dir).rstrip("/") + "/")
            self._bind(folder, context)
            run = self._run = BatchRun(config, hook, folder, Owner.of_task(context), planned, self.log, rejected)
            if self._killed:
                run.kill()
            try:
                summary = run.execute()
            finally:
                self.gallery_url = gallery_link(run.gallery)
        finally:
            hook.close()
        self._announce(context, summary)
        self._lineage = (planned, summary)
        return summary

    def _bind(self, folder: Any, context: Context) -> None:
        """Record the folder as this DAG's, or refuse it (another DAG's: nothing is read, written or paid) before the
        run reads anything from it (``state.binding``). Without a review secret on this worker a folder that has no
        owner record yet stays without one: the run goes on, and the review view will not show the folder."""
        from airflow_provider_cutout.state.binding import bind
        from airflow_provider_cutout.state.signing import NoSecretError

        ti = context.get("ti") if context else None
        if ti is None:  # outside a task instance (a script): nothing to bind to
            return
        try:
            bind(folder, ti.dag_id, ti.task_id)
        except NoSecretError as err:
            self.log.warning("Cutout batch: the review view will not show %s: %s", folder, err)
        except CutoutError as err:
            fail_or_retry(err, self.log)

    def on_kill(self) -> None:
        """SIGTERM, ``execution_timeout`` or a task marked failed: start no new edit; the edits in flight finish
        and are recorded (each within the connection's ``read_timeout``), then the task fails."""
        self._killed = True
        if self._run is not None:
            self._run.kill()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (openlineage provider): the sources' folders in, the output folder out, the run's counts."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_cutout.observability.lineage import batch_lineage

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

        keys = ("edited", "skipped", "shared", "by_other_runs", "failed", "credits_spent", "manifest", "output_dir")
        extra = {key: summary[key] for key in keys}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
