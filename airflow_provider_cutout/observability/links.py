"""Extra links on a task's page: "Cutout result" (the edited image of a single edit) and "Cutout gallery"
(the review page of a batch's output folder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

RESULT_XCOM_KEY = "cutout_result"


class CutoutResultLink(BaseOperatorLink):
    """Points at the edited image's URL.

    When a task instance finishes, Airflow calls ``get_link`` on the operator that ran and keeps
    the answer in XCom for the UI; the operator sets ``result_url`` once the edit is done, so a
    task that failed before editing simply has no link.
    """

    name = "Cutout result"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the result URL of the edit this task instance made, or ``""``."""
        return str(getattr(operator, "result_url", None) or "")


class CutoutGalleryLink(BaseOperatorLink):
    """Points at the batch's ``cutout-gallery.html`` where a browser can open it: a ``file://`` URL for a
    local or mounted folder, the S3 or GCS console's page of the object otherwise (never a signed URL: the
    link is stored in the metadata DB)."""

    name = "Cutout gallery"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the gallery URL this task instance wrote, or ``""``."""
        return str(getattr(operator, "gallery_url", None) or "")


def gallery_link(page: Any) -> str | None:
    """The URL a browser opens ``page`` (an ``ObjectStoragePath``) by, or ``None`` when it has none."""
    if page is None:
        return None
    from airflow_provider_cutout.state.io import is_local

    if is_local(page):
        return f"file://{quote(str(page.path))}"
    protocol = page.protocol
    bucket, _, key = str(page.path).lstrip("/").partition("/")
    if protocol in ("s3", "s3a"):
        return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key)}"
    if protocol in ("gs", "gcs"):
        return f"https://console.cloud.google.com/storage/browser/_details/{bucket}/{quote(key)}"
    return None
