"""The review view's app, mounted by the API server under ``/cutout-review``.

``GET /view``: a batch task instance's catalog (``catalog.review``), found through the summary the task returned
(its output folder), read from that folder's manifest. ``GET /image``: one stored result of that catalog,
streamed from the folder, so the browser needs no signed URL and no ``file://`` link.

Access follows Airflow's auth manager: whoever may read the DAG's task instances may look. Every answer
carries a Content-Security-Policy that allows no script; an image is served only when the manifest records it
as stored, under a plain file name, directly in the task's output folder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from airflow_provider_cutout.catalog.gallery import gallery_items
from airflow_provider_cutout.catalog.review import CSP, ReviewQuery, render_review, view_href
from airflow_provider_cutout.observability.links import REVIEW_PREFIX as PREFIX
from airflow_provider_cutout.state.io import is_local
from airflow_provider_cutout.state.manifest import STORED, Manifest

CACHED_CATALOGS = 4  # a catalog of 100,000 items holds about 150 MB in the API server while cached
_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "private, no-store"}

app = FastAPI(title="Cutout review", docs_url=None, redoc_url=None, openapi_url=None)
ReadAccess = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))


@dataclass
class Catalog:
    """A task instance's catalog as the view shows it: its folder, its items, and the names of stored files."""

    folder: Any
    items: list[dict[str, Any]]
    stored: set[str]


class _Catalogs:
    """The manifests of the last few folders viewed, each refreshed on every look (only new log files are read)."""

    def __init__(self, size: int) -> None:
        self._size, self._lock = size, threading.Lock()
        self._open: OrderedDict[str, tuple[Manifest, Catalog]] = OrderedDict()

    def get(self, output_dir: str) -> Catalog:
        from airflow.sdk import ObjectStoragePath

        with self._lock:
            known = self._open.pop(output_dir, None)
            if known is None:
                folder = ObjectStoragePath(output_dir.rstrip("/") + "/")
                manifest = Manifest(folder)
                known = (manifest, _catalog(folder, manifest))
            elif known[0].refresh():
                known = (known[0], _catalog(known[1].folder, known[0]))
            self._open[output_dir] = known
            while len(self._open) > self._size:
                self._open.popitem(last=False)
            return known[1]


def _catalog(folder: Any, manifest: Manifest) -> Catalog:
    items = gallery_items(manifest.entries.values())
    stored = {_name(e) for e in items if e.get("status") == STORED}
    return Catalog(folder, items, {name for name in stored if _plain(name)})


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("stored_path") or "").rstrip("/").rsplit("/", 1)[-1]


def _plain(name: str) -> bool:
    """A file name directly in a folder: no separator, not ``.`` or ``..``, no control character."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and name.isprintable()


CATALOGS = _Catalogs(CACHED_CATALOGS)


@dataclass(frozen=True)
class TaskInstanceIds:
    """The task instance a request names (``map_index`` ``-1`` when it is not mapped or not filled in)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int

    def params(self) -> dict[str, str]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id,
                "map_index": str(self.map_index)}


def task_instance_ids(dag_id: str, run_id: str, task_id: str, map_index: str = "-1") -> TaskInstanceIds:
    # The UI puts run ids into the link as they are: a "+" of a timestamp arrives as a space.
    number = int(map_index) if map_index.lstrip("-").isdigit() else -1
    return TaskInstanceIds(dag_id, run_id.replace(" ", "+"), task_id, number)


Ids = Annotated[TaskInstanceIds, Depends(task_instance_ids)]


def _summary(ids: TaskInstanceIds) -> tuple[dict[str, Any] | None, float]:
    """The summary the task instance returned (``None`` when there is none yet) and when it started."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        where = (XComModel.dag_id == ids.dag_id, XComModel.run_id == ids.run_id, XComModel.task_id == ids.task_id,
                 XComModel.map_index == ids.map_index, XComModel.key == "return_value")
        row = session.scalars(select(XComModel).where(*where).limit(1)).first()
        value = XComModel.deserialize_value(row) if row is not None else None
        started = session.scalar(select(TaskInstance.start_date).where(
            TaskInstance.dag_id == ids.dag_id, TaskInstance.run_id == ids.run_id,
            TaskInstance.task_id == ids.task_id, TaskInstance.map_index == ids.map_index))
    summary = value if isinstance(value, dict) and isinstance(value.get("output_dir"), str) else None
    return summary, started.timestamp() if started is not None else 0.0


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


@app.get("/view", dependencies=[ReadAccess], response_class=HTMLResponse)
def view(ids: Ids, status: str | None = None, q: str | None = None, page: str | None = None) -> HTMLResponse:
    """The catalog of a batch task instance, a page at a time."""
    summary, started = _summary(ids)
    if summary is None:
        return _page("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Cutout review</title></head>"
                     "<body><p>No Cutout catalog here: this task instance has not returned a batch summary (it is "
                     "not a Cutout batch task, or it has not finished).</p></body></html>", 404)
    catalog = CATALOGS.get(summary["output_dir"])
    query = ReviewQuery.parse(status, q, page)
    params = {**ids.params(), "status": query.status, "q": query.search}
    image = view_href(f"{PREFIX}/image", ids.params())
    return _page(render_review(catalog.items, query=query, title=str(catalog.folder), since=started, run=summary,
                               href=view_href(f"{PREFIX}/view", params), image_url=lambda name: image(name=name),
                               hidden=ids.params()))


@app.get("/image", dependencies=[ReadAccess])
def image(ids: Ids, name: Annotated[str, Query(max_length=300)]) -> Response:
    """A stored result of the task instance's catalog, streamed from its output folder."""
    summary, _ = _summary(ids)
    catalog = CATALOGS.get(summary["output_dir"]) if summary is not None else None
    media = _MEDIA.get(name.rsplit(".", 1)[-1].lower())
    if catalog is None or media is None or name not in catalog.stored:
        raise HTTPException(404, "no such result in this task instance's catalog")
    path = catalog.folder / name
    headers = {**_HEADERS, "Content-Security-Policy": "default-src 'none'"}
    if is_local(path):
        try:
            handle = open(path.path, "rb")  # closed by the response's iterator
        except FileNotFoundError:
            raise HTTPException(404, "this result's file is gone from the output folder") from None
    else:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise HTTPException(404, "this result's file is gone from the output folder") from None
    return StreamingResponse(_chunks(handle), media_type=media, headers=headers)


def _chunks(handle: Any, size: int = 64 * 1024) -> Any:
    with handle:
        while chunk := handle.read(size):
            yield chunk
