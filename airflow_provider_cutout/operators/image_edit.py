"""``CutoutImageEditOperator``: validate, edit one image (or one set of references), store, push to XCom."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_cutout.api.models import ImageEditRequest
from airflow_provider_cutout.api.urls import az_problem
from airflow_provider_cutout.exceptions import CutoutError, InvalidInputError, ResultDownloadError, fail_or_retry
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.observability import metrics
from airflow_provider_cutout.observability.links import RESULT_XCOM_KEY, CutoutResultLink
from airflow_provider_cutout.operators._common import as_list, check_static

if TYPE_CHECKING:
    from airflow.sdk import Context

class CutoutImageEditOperator(BaseOperator):
    """Edit images with the Cutout.Pro Image Edit API and push the result URL to XCom.

    Static arguments are validated when the DAG is parsed; rendered ones before any HTTP call.
    Returns the edited image URL (XCom ``return_value``) and pushes the whole result as a plain
    dict under the XCom key ``cutout_result``. Errors that a retry cannot fix (invalid input,
    authentication, insufficient credits, a failed edit) fail the task without Airflow retries.

    :param prompt: what to change, e.g. ``"remove the background"``. Templated.
    :param image_urls: one https URL or a list of them (JPEG/PNG), or an XComArg. Templated.
    :param model: a model of ``airflow_provider_cutout.models.MODELS``. Templated.
    :param aspect_ratio: ``original``, ``1:1``, ``4:3``, ``3:4``, ``9:16`` or ``16:9``. Templated.
    :param cutout_conn_id: the ``cutout`` connection holding the API key.
    :param output_path: where to keep a copy of the result (``ObjectStoragePath`` syntax: a local
        path, ``file://``, ``s3://``...); a path ending in ``/`` is a folder and the file is named
        after the edit id. Templated.
    :param max_result_bytes: the largest result image to store (the connection's
        ``max_download_bytes``, 100 MiB, by default).
    :param force: edit (and pay) again even when ``output_path`` already holds the result of this
        very edit from an earlier run; by default a cleared or re-run task returns that result.
    :param check_sources: read each source image's headers and first bytes before the edit is paid for
        (reachable, JPEG or PNG, the model's limits); the connection's ``check_sources`` (on) by default.
        Turn it off for sources only Cutout.Pro can reach.
    """

    template_fields: Sequence[str] = ("prompt", "image_urls", "model", "aspect_ratio", "output_path")
    operator_extra_links = (CutoutResultLink(),)
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        prompt: str,
        image_urls: str | list[str] | Any,
        model: str,
        aspect_ratio: str = "original",
        cutout_conn_id: str = CutoutHook.default_conn_name,
        output_path: str | None = None,
        max_result_bytes: int | None = None,
        force: bool = False,
        check_sources: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.image_urls = image_urls
        self.model = model
        self.aspect_ratio = aspect_ratio
        self.cutout_conn_id = cutout_conn_id
        self.output_path = output_path
        self.max_result_bytes = max_result_bytes
        self.force = force
        self.check_sources = check_sources
        self.result_url: str | None = None  # set by execute; read by the extra link
        self._lineage: tuple[list[str], dict[str, Any]] | None = None  # set by execute
        self._killed = False  # set by on_kill
        check_static(
            f"{type(self).__name__}(task_id={self.task_id!r})",
            prompt=prompt, image_urls=image_urls, model=model, aspect_ratio=aspect_ratio,
        )

    @cached_property
    def hook(self) -> CutoutHook:
        """The hook for ``cutout_conn_id``."""
        return CutoutHook(cutout_conn_id=self.cutout_conn_id)

    def execute(self, context: Context) -> str:
        """Validate the rendered values; return the stored result of this very edit if an earlier run
        kept it at ``output_path`` (unless ``force``); else edit, store the copy if asked, push the result."""
        hook = self.hook
        try:
            try:
                problem = az_problem("output_path", str(self.output_path)) if self.output_path else None
                if problem is not None:
                    raise InvalidInputError(f"{problem}; nothing was sent")
                request = hook.validate(self.prompt, as_list(self.image_urls), self.model, self.aspect_ratio)
            except CutoutError as err:
                fail_or_retry(err, self.log)
            if hook.checks_sources(self.check_sources):
                request = self._earlier_versions(hook.with_versions([request])[0], context)  # a new photo: new edit
            stored = None if self.force or not self.output_path else self._stored(request)
            if stored is not None:
                self.log.info("Cutout edit already stored at %s by an earlier run (id=%s): nothing sent, nothing "
                              "spent. Set force=True to edit again.", stored["stored_path"], stored["id"])
                payload = stored
            else:
                payload = self._edit(hook, request, context)
            self.result_url = payload["image_url"]
            self._lineage = (list(request.image_urls), payload)
            context["ti"].xcom_push(key=RESULT_XCOM_KEY, value=payload)
            return str(payload["image_url"])
        finally:
            hook.close()

    def _earlier_versions(self, request: ImageEditRequest, context: Context) -> ImageEditRequest:
        """An edit a release before sources were hashed whole sent (claimed, or charged and not stored) under
        its sources' legacy versions: kept under those, so its claim and result are honoured, not paid again
        (a stored one is adopted, ``_stored``)."""
        from airflow_provider_cutout.state.intent import earlier_intent
        from airflow_provider_cutout.state.records import find_stored_edit

        legacy = request.legacy_request()
        if legacy is None or not self.output_path or self.force:
            return request
        if find_stored_edit(self.output_path, request.fingerprint) or find_stored_edit(self.output_path,
                                                                                        legacy.fingerprint):
            return request
        return legacy if earlier_intent(self.output_path, legacy.fingerprint, context) else request

    def _stored(self, request: ImageEditRequest) -> dict[str, Any] | None:
        """This edit's result from an earlier run; one stored before source versions counted is adopted for
        the versions seen now (so a later change of the photo is edited again)."""
        from airflow_provider_cutout.state.io import is_folder
        from airflow_provider_cutout.state.records import find_stored_edit, remember_stored_edit
        from airflow_provider_cutout.state.versions import adopt_earlier

        def put(fp: str, record: dict[str, Any]) -> None:
            # A file path keeps one record, the adopted one: marking the old one there would overwrite it.
            if fp == request.fingerprint or is_folder(self.output_path):
                remember_stored_edit(self.output_path, fp, record)

        def adopt(earlier: str) -> dict[str, Any] | None:
            return adopt_earlier(request.fingerprint, earlier, request.source_versions,
                                 lambda fp: find_stored_edit(self.output_path, fp), put, request.source_validators)

        legacy = request.legacy_request()
        stored = (find_stored_edit(self.output_path, request.fingerprint) or adopt(request.unversioned_fingerprint)
                  or (adopt(legacy.fingerprint) if legacy else None))
        hidden = ("fingerprint", "source_versions", "source_validators")  # the result as the earlier run pushed it
        return None if stored is None else {k: v for k, v in stored.items() if k not in hidden}

    def on_kill(self) -> None:
        """SIGTERM: the edit is not sent if it has not been yet; one in flight finishes and is stored. Under
        ``execution_timeout`` the timeout interrupts an edit in flight: its claim (or the task state store)
        keeps it in doubt for the retry, which does not send it again. A retry's wait (a 429's ``Retry-After``, a
        backoff) ends at once, and nothing is sent after it."""
        self._killed = True
        if "hook" in self.__dict__:
            self.hook.stop()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage (openlineage provider): the source images in, the stored copy out, model, credits and
        the API's request id."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_cutout.observability.lineage import single_edit_lineage

        if self._lineage is None:
            return OperatorLineage()
        sources, payload = self._lineage
        return single_edit_lineage(sources, payload.get("stored_path"), payload)

    def _edit(self, hook: CutoutHook, request: ImageEditRequest, context: Context) -> dict[str, Any]:
        """Check the sources, record the intent, send the edit and store its copy; the result is in XCom as
        soon as it is charged."""
        from airflow_provider_cutout.state.intent import SendIntent

        if hook.checks_sources(self.check_sources):
            try:
                hook.check_sources({"": request})
            except CutoutError as err:
                fail_or_retry(err, self.log)
        intent = SendIntent(self.output_path, request.fingerprint, context, force=self.force)
        try:
            return self._send(hook, request, context, intent)
        except CutoutError as err:
            fail_or_retry(err, self.log)
        finally:
            intent.close()

    def _send(self, hook: CutoutHook, request: ImageEditRequest, context: Context, intent: Any) -> dict[str, Any]:
        earlier = intent.begin()
        if earlier is not None and self.output_path and not earlier.get("stored_path"):
            self.log.info("Cutout edit charged by an earlier try (id=%s) and not stored: storing it now from its "
                          "result URL; nothing sent, nothing spent", earlier.get("id"))
            payload = dict(earlier)
            payload["stored_path"] = self._store(hook, payload["image_url"], str(payload["id"]), request.fingerprint,
                                                 payload)
            return payload
        if earlier is not None:
            self.log.info("Cutout edit already sent by an earlier try of this task (id=%s): nothing sent, nothing "
                          "spent", earlier.get("id"))
            return dict(earlier)
        if self._killed:
            intent.failed(CutoutError("stopped"))
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException("the task was told to stop (SIGTERM, execution_timeout, or marked failed) before "
                                   "the edit was sent; nothing was spent")
        hook.client.on_retry = metrics.retried
        try:
            result = metrics.measured_edit(hook.send_edit, request)
        except CutoutError as err:
            intent.failed(err)
            raise
        self.log.info(
            "Cutout edit done: model=%s references=%d ratio=%s credits=%d duration=%ss request_id=%s id=%s",
            result.model, len(result.reference_image_urls), result.aspect_ratio, result.credits,
            result.duration, result.request_id, result.id,
        )
        payload = {**result.to_xcom(), "stored_path": None}
        intent.sent(payload)
        context["ti"].xcom_push(key=RESULT_XCOM_KEY, value=payload)
        if self.output_path:
            payload["stored_path"] = self._store(hook, result.image_url, result.id, request.fingerprint, payload)
        return payload

    def _store(self, hook: CutoutHook, url: str, edit_id: str, fingerprint: str, payload: dict[str, Any]) -> str:
        """Copy a charged result to ``output_path`` and remember which edit it is."""
        from airflow_provider_cutout.state.io import store_image
        from airflow_provider_cutout.state.records import forget_charged_edit, remember_stored_edit

        try:
            path = store_image(lambda sink: hook.client.download(url, sink, max_bytes=self.max_result_bytes)[1],
                               self.output_path, edit_id)
        except Exception as err:
            # The edit is done and paid for: a task retry would edit (and charge) again.
            failure = ResultDownloadError(
                f"storing the result at {self.output_path!r} failed: {type(err).__name__}: {err}; the edit itself "
                f"succeeded and was charged, its URL is {url}", retryable=False)
            failure.__cause__ = err
            fail_or_retry(failure, self.log)
        self.log.info("Stored the edited image at %s", path)
        try:
            remember_stored_edit(self.output_path, fingerprint, {**payload, "stored_path": path})
            forget_charged_edit(self.output_path, fingerprint)
        except OSError as err:
            self.log.warning("Could not record the stored edit beside %s (%s): a re-run of this task fetches it again "
                             "from its result URL while that lives, else fails saying it may have been charged",
                             path, err)
        return path
