"""Extra links on a task's page: "Cutout result" (the edited image of a single edit) and "Cutout gallery"
(the review view of a batch task instance's catalog)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

RESULT_XCOM_KEY = "cutout_result"
REVIEW_PREFIX = "/cutout-review"  # where the API server mounts the review view (plugins.review)


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
    """Points at the batch task instance's **Cutout review** view (``plugins.review``): its catalog on Airflow's
    own origin, results streamed by the API server. Browsers refuse ``file://`` links from a web page, and a
    folder on a worker or in a bucket has no other URL a browser may open (a signed URL would be stored in the
    metadata DB)."""

    name = "Cutout gallery"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The view of this task instance's catalog once it wrote one, else ``""``."""
        if not getattr(operator, "gallery_url", None):
            return ""
        return review_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)


def review_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The review view of a task instance, under the API server's ``[api] base_url`` path when it has one."""
    from airflow.configuration import conf

    root = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    query = urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index})
    return f"{root}{REVIEW_PREFIX}/view?{query}"


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
