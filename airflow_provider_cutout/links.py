"""The "Cutout result" extra link on a task's page: the edited image of that task instance."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
