"""``CutoutImageEditOperator``: validate, edit one image (or one set of references), store, push to XCom."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_cutout.exceptions import CutoutError, ResultDownloadError
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.links import RESULT_XCOM_KEY, CutoutResultLink
from airflow_provider_cutout.operators._common import as_list, check_static, fail_or_retry

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
        self.result_url: str | None = None  # set by execute; read by the extra link
        check_static(
            f"{type(self).__name__}(task_id={self.task_id!r})",
            prompt=prompt, image_urls=image_urls, model=model, aspect_ratio=aspect_ratio,
        )

    @cached_property
    def hook(self) -> CutoutHook:
        """The hook for ``cutout_conn_id``."""
        return CutoutHook(cutout_conn_id=self.cutout_conn_id)

    def execute(self, context: Context) -> str:
        """Validate the rendered values, edit, store the copy if asked, push the result."""
        from airflow_provider_cutout.storage import store_image

        hook = self.hook
        try:
            try:
                result = hook.edit_image(self.prompt, as_list(self.image_urls), self.model, self.aspect_ratio)
            except CutoutError as err:
                fail_or_retry(err, self.log)
            self.log.info(
                "Cutout edit done: model=%s references=%d ratio=%s credits=%d duration=%ss request_id=%s id=%s",
                result.model, len(result.reference_image_urls), result.aspect_ratio, result.credits,
                result.duration, result.request_id, result.id,
            )
            self.result_url = result.image_url
            payload = {**result.to_xcom(), "stored_path": None}
            context["ti"].xcom_push(key=RESULT_XCOM_KEY, value=payload)
            if self.output_path:
                try:
                    payload["stored_path"] = store_image(
                        hook.client, result.image_url, self.output_path, result.id, max_bytes=self.max_result_bytes
                    )
                except Exception as err:
                    # The edit is done and paid for: a task retry would edit (and charge) again.
                    failure = err if isinstance(err, CutoutError) else ResultDownloadError(
                        f"storing the result at {self.output_path!r} failed: {type(err).__name__}: {err}")
                    failure.retryable = False
                    failure.message += f"; the edit itself succeeded and was charged, its URL is {result.image_url}"
                    fail_or_retry(failure, self.log)
                self.log.info("Stored the edited image at %s", payload["stored_path"])
                context["ti"].xcom_push(key=RESULT_XCOM_KEY, value=payload)
            return result.image_url
        finally:
            hook.close()
