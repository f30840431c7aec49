"""The plugin that adds "Cutout review" to every task instance's page (a batch task's shows its catalog).

Airflow loads plugins in every process, task runners included, so this module stays light: the FastAPI app
(``plugins.review_app``) is imported only where Airflow asks for it, in the API server.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_cutout.observability.links import REVIEW_PREFIX as PREFIX

#: Where the view is: Airflow fills in the task instance's ids.
VIEW_HREF = f"{PREFIX.lstrip('/')}/view?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}"


class CutoutReviewPlugin(AirflowPlugin):
    """The "Cutout review" tab of a task instance, served under ``/cutout-review`` by the API server."""

    name = "cutout_review"
    external_views = [  # noqa: RUF012 # AirflowPlugin's own attribute
        {"name": "Cutout review", "href": VIEW_HREF, "destination": "task_instance", "url_route": "cutout-review"},
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override] # read-only: built when asked
        """The review app, imported only when the API server mounts it."""
        from airflow_provider_cutout.plugins.review_app import app

        return [{"name": "cutout-review", "app": app, "url_prefix": PREFIX}]
