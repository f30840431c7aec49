"""``CutoutImageEditOperator``: validate, edit one image (or one set of references), store, push to XCom."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator

from airflow_provider_cutout.exceptions import CutoutError, InvalidInputError, ResultDownloadError
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.links import RESULT_XCOM_KEY, CutoutResultLink
from airflow_provider_cutout.models import ImageEditRequest

if TYPE_CHECKING:
    import logging

    from airflow.sdk import Context

_PLACEHOLDERS = {
    "prompt": "placeholder prompt",
    "image_urls": ["https://placeholder.invalid/image.png"],
    "model": "gpt-image-1",
    "aspect_ratio": "original",
}


def is_dynamic(value: Any) -> bool:
    """Whether a value is only known at run time: an XComArg, or a string with Jinja in it."""
    if hasattr(value, "resolve"):  # XComArg, MappedArgument
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(is_dynamic(item) for item in value)
    if isinstance(value, dict):
        return any(is_dynamic(item) for item in value.values())
    return False


def check_static(owner: str, **values: Any) -> None:
    """Validate at DAG parse time what is already known, without any network call.

    Values known only at run time are replaced by valid placeholders; plain-http loopback URLs are
    let through here and checked against the connection's base URL at run time.

    :raises InvalidInputError: naming the task, the field, the value and the fix.
    """
    if all(is_dynamic(v) for v in values.values()):
        return
    args = {name: _PLACEHOLDERS[name] if is_dynamic(v) else v for name, v in values.items()}
    try:
        ImageEditRequest.build(**args, base_url="http://127.0.0.1")
    except ValueError as err:
        raise InvalidInputError(f"{owner}: {err}") from None


def as_list(value: Any) -> Any:
    """Normalise a rendered list (``image_urls``, batch ``items``): a list rendered to text by Jinja
    becomes a list again, and a lazy XCom sequence from mapped upstream tasks a plain list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            for parse in (json.loads, ast.literal_eval):
                try:
                    return list(parse(text))
                except (ValueError, SyntaxError, TypeError):
                    continue
        return value
    if isinstance(value, Sequence) and not isinstance(value, (list, tuple)):
        return list(value)
    return value


def fail_or_retry(err: CutoutError, log: logging.Logger | Any) -> NoReturn:
    """Apply the failure policy: transient errors re-raise so the task's own ``retries`` apply;
    errors that a retry cannot fix fail the task at once, since each retry could cost credits."""
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # Airflow < 3.2
        from airflow.exceptions import AirflowFailException  # type: ignore[no-redef,attr-defined]

    if err.retryable:
        log.warning("Transient Cutout error (%s): raising so the task's own retries apply: %s",
                    type(err).__name__, err)
        raise err
    log.error("Cutout error that a retry cannot fix (%s): failing without Airflow retries: %s",
              type(err).__name__, err)
    raise AirflowFailException(f"{type(err).__name__}: {err}") from err


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
