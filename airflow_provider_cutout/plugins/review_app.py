"""The review view's app, mounted by the API server under ``/cutout-review``.

``GET /view``: a batch task instance's catalog (``catalog.review``), read from the manifest of the output folder
the task rendered (its rendered template fields, which API users cannot edit; available from the task's start,
also when it failed). ``GET /image``: one stored result of that catalog, streamed from the folder, so the
browser needs no signed URL and no ``file://`` link.

``POST /decide``: a reviewer's decision on one stored item's current edit (approve or reject, a note, a corrected
prompt), written to the folder's decisions log (``state.decisions``), then back to the page it came from.

Access follows Airflow's auth manager: whoever may read the DAG's task instances may look; whoever may edit
them may decide. A decision also carries a token bound to the user and the task instance (an HMAC under the API
server's JWT secret), and a cross-site one is refused, so another site cannot post one. Every answer
carries a Content-Security-Policy that allows no script. An image is served only when the manifest records it
as stored, under a plain file name, as a regular file directly in the task's output folder (no link followed).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from airflow_provider_cutout.api.models import check_prompt
from airflow_provider_cutout.catalog.gallery import escape, gallery_items
from airflow_provider_cutout.catalog.review import CSP, Decide, ReviewQuery, count, render_review, view_href
from airflow_provider_cutout.state.decisions import APPROVED, REJECTED
from airflow_provider_cutout.state.io import is_local
from airflow_provider_cutout.state.manifest import STORED, Manifest, file_name

CACHED_CATALOGS = 4  # a catalog of 100,000 items holds about 150 MB in the API server while cached
IMAGE_REFRESH_S = 30.0  # an image request reads new log files at most this often (a page of 60 is 60 requests)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "private, no-store"}
_MAP_INDEX = re.compile(r"-?[0-9]{1,9}")
log = logging.getLogger(__name__)

app = FastAPI(title="Cutout review", docs_url=None, redoc_url=None, openapi_url=None)
ReadAccess = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))
EditAccess = Depends(requires_access_dag("PUT", DagAccessEntity.TASK_INSTANCE))
MAX_FORM_BYTES = 16 * 1024
MAX_NOTE_CHARS = 500


@app.middleware("http")
async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """The security headers on every answer, errors of the auth check and of validation included."""
    try:
        response = await call_next(request)
    except Exception:  # a failed database or store: the 500 carries the headers too
        log.exception("Cutout review: %s failed", request.url.path)
        response = Response("Internal Server Error", status_code=500, media_type="text/plain")
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@dataclass
class Catalog:
    """A task instance's catalog as the view shows it: its folder, its items, and the names of stored files."""

    folder: Any
    items: list[dict[str, Any]]
    stored: set[str]
    real: str = ""  # a local folder's real path when its manifest was read: a link re-pointed later is refused
    manifest: Any = None  # the manifest read (its decisions log is where decisions are written)
    _by_key: dict[Any, dict[str, Any]] | None = None
    _counts: dict[float, dict[str, int]] = field(default_factory=dict)  # by task start: each filter's count

    def counts(self, since: float) -> dict[str, int]:
        """How many items each filter keeps (a catalog is rebuilt whenever it changes: counted once per start)."""
        if since not in self._counts:
            if len(self._counts) >= 8:
                self._counts.clear()
            self._counts[since] = count(self.items, since)
        return self._counts[since]

    def current(self, key: Any) -> dict[str, Any] | None:
        """The newest entry of an item key."""
        if self._by_key is None:
            self._by_key = {e.get("key"): e for e in self.items}
        return self._by_key.get(key)


@dataclass
class _Slot:
    """One folder's manifest, read and refreshed under its own lock (a slow store holds up only its viewers)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    manifest: Manifest | None = None
    catalog: Catalog | None = None
    read_at: float = 0.0


class _Catalogs:
    """The manifests of the last few folders viewed; a look reads only the log files written since the last."""

    def __init__(self, size: int) -> None:
        self._size, self._lock = size, threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    def forget(self, output_dir: str) -> None:
        """Rebuild this folder's catalog from its manifest as read, now (a decision this process wrote changed it;
        its reader has taken that file in already, so a refresh would not see it as new)."""
        with self._lock:
            slot = self._slots.get(output_dir)
        if slot is not None:
            with slot.lock:
                slot.catalog = _catalog(slot.catalog.folder, slot.manifest) if slot.manifest and slot.catalog else None

    def get(self, output_dir: str, max_age: float = 0.0) -> Catalog:
        """The catalog of ``output_dir``, refreshed when it was read more than ``max_age`` seconds ago."""
        from airflow.sdk import ObjectStoragePath

        with self._lock:
            slot = self._slots.setdefault(output_dir, _Slot())
            self._slots.move_to_end(output_dir)
            while len(self._slots) > self._size:
                self._slots.popitem(last=False)
        with slot.lock:
            if slot.manifest is None or slot.catalog is None:
                folder = ObjectStoragePath(output_dir.rstrip("/") + "/")
                slot.manifest = Manifest(folder)
                slot.catalog = _catalog(folder, slot.manifest)
            elif time.monotonic() - slot.read_at > max_age and slot.manifest.refresh(decisions=True):
                slot.catalog = _catalog(slot.catalog.folder, slot.manifest)
            if time.monotonic() - slot.read_at > max_age:
                slot.read_at = time.monotonic()
            return slot.catalog


def _catalog(folder: Any, manifest: Manifest) -> Catalog:
    items = gallery_items(manifest.catalog())
    stored = {file_name(e) for e in items if e.get("status") == STORED}
    real = os.path.realpath(folder.path) if is_local(folder) else ""
    return Catalog(folder, items, {name for name in stored if _plain(name)}, real, manifest)


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
    """The ids from the query string (a ``map_index`` that is no number, as ``{MAP_INDEX}`` left unfilled: -1)."""
    return TaskInstanceIds(dag_id, run_id, task_id, int(map_index) if _MAP_INDEX.fullmatch(map_index) else -1)


Ids = Annotated[TaskInstanceIds, Depends(task_instance_ids)]


def _output_dir(ids: TaskInstanceIds) -> tuple[str | None, float]:
    """The output folder a batch task instance rendered (``None`` for any other task instance, or one that has not
    started) and when it started."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        fields = session.scalar(select(Rendered.rendered_fields).where(
            Rendered.dag_id == ids.dag_id, Rendered.run_id == ids.run_id, Rendered.task_id == ids.task_id,
            Rendered.map_index == ids.map_index))
        started = session.scalar(select(TaskInstance.start_date).where(
            TaskInstance.dag_id == ids.dag_id, TaskInstance.run_id == ids.run_id,
            TaskInstance.task_id == ids.task_id, TaskInstance.map_index == ids.map_index))
    folder = fields.get("output_dir") if isinstance(fields, dict) and "items" in fields else None
    return (folder if isinstance(folder, str) else None), (started.timestamp() if started is not None else 0.0)


_NOT_A_BATCH = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Cutout review</title></head><body>"
                "<p>No Cutout catalog here: this task instance is not a Cutout batch task, or it has not started."
                "</p></body></html>")


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status)


@app.get("/view", dependencies=[ReadAccess], response_class=HTMLResponse)
def view(ids: Ids, user: GetUserDep, status: str | None = None, q: str | None = None,
         page: str | None = None) -> HTMLResponse:
    """The catalog of a batch task instance, a page at a time."""
    output_dir, started = _output_dir(ids)
    if output_dir is None:
        return _page(_NOT_A_BATCH, 404)
    try:
        catalog = CATALOGS.get(output_dir)
    except OSError as err:
        return _page("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Cutout review</title></head>"
                     f"<body><p>The output folder {escape(output_dir)} cannot be read from the API server "
                     f"({escape(type(err).__name__)}).</p></body></html>", 503)
    query = ReviewQuery.parse(status, q, page)
    params = {**ids.params(), "status": query.status, "q": query.search}
    image = view_href("image", ids.params())  # relative: right under any base path of the API server
    decide = Decide(view_href("decide", ids.params())(), csrf_token(user, ids)) if _may_decide(user, ids) else None
    return _page(render_review(catalog.items, query=query, title=str(catalog.folder), since=started,
                               href=view_href("view", params), image_url=lambda name: image(name=name),
                               hidden=ids.params(), decide=decide, counts=catalog.counts(started)))


@app.post("/decide", dependencies=[EditAccess])
async def decide(ids: Ids, user: GetUserDep, request: Request) -> Response:
    """Record a decision on one stored item of the task instance's catalog; back to the page it was made on."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise HTTPException(403, "a decision must come from the review view itself")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "the form is too large")
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}
    if not hmac.compare_digest(form.get("csrf", ""), csrf_token(user, ids)):
        raise HTTPException(403, "the form's token is not this user's for this task instance: reload the view")
    output_dir, _ = await run_in_threadpool(_output_dir, ids)  # the metadata DB: off the event loop
    if output_dir is None:
        raise HTTPException(404, "this task instance is not a Cutout batch task")
    catalog = await run_in_threadpool(CATALOGS.get, output_dir)
    decision = _decision(catalog, form, user.get_name())
    await run_in_threadpool(catalog.manifest.decisions.decide, decision)
    await run_in_threadpool(CATALOGS.forget, output_dir)  # the next look shows it
    back = {"status": form.get("status", "all"), "q": form.get("q", ""), "page": form.get("page", "1")}
    return RedirectResponse(view_href("view", {**ids.params(), **back})(), status_code=303)


def _decision(catalog: Catalog, form: dict[str, str], by: str) -> dict[str, Any]:
    """The decision a form asks for, checked: the item's current edit, stored; a known decision; a valid corrected
    prompt."""
    key, fingerprint, chosen = form.get("key", ""), form.get("fingerprint", ""), form.get("decision")
    entry = catalog.current(key)
    if entry is None or entry.get("fingerprint") != fingerprint or entry.get("status") != STORED:
        raise HTTPException(409, f"item {key[:200]!r} has no stored result of that edit now (edited again since the "
                                 "page was loaded?): reload the view")
    if chosen not in (APPROVED, REJECTED):
        raise HTTPException(422, f"decision={str(chosen)[:40]!r} must be {APPROVED!r} or {REJECTED!r}")
    note, prompt = form.get("note", "").strip(), form.get("prompt", "").strip()
    if len(note) > MAX_NOTE_CHARS:
        raise HTTPException(422, f"the note has {len(note)} characters; shorten it to at most {MAX_NOTE_CHARS}")
    decision = {"key": key, "fingerprint": fingerprint, "decision": chosen, "by": by, "note": note}
    if prompt:
        if chosen != REJECTED:
            raise HTTPException(422, "a corrected prompt goes with Reject: the item is edited again with it")
        try:
            prompt = check_prompt(prompt)
        except ValueError as err:
            raise HTTPException(422, f"the corrected prompt is not valid: {err}") from None
        own = entry.get("own_prompt") or entry.get("prompt")  # a correction replaces the item's own prompt
        if not isinstance(own, str):
            raise HTTPException(409, f"item {key[:200]!r} has no prompt recorded to correct")
        decision.update(prompt=prompt, replaces=own, edited=str(entry.get("prompt") or own))
    return decision


def csrf_token(user: Any, ids: TaskInstanceIds) -> str:
    """The token a decision form carries: bound to the user and the task instance, unguessable without the API
    server's secret."""
    message = "\x1f".join(["cutout-review", str(user.get_id()), *ids.params().values()]).encode()
    return hmac.new(_secret(), message, hashlib.sha256).hexdigest()


@functools.cache
def _secret() -> bytes:
    """A key for form tokens, the same in every API server process: derived from the secret the API server
    signs its own tokens with (``[api_auth] jwt_secret``, else the private key at ``jwt_private_key_path``)."""
    from airflow.configuration import conf

    secret = (conf.get("api_auth", "jwt_secret", fallback="") or "").encode()
    if not secret and conf.get("api_auth", "jwt_private_key_path", fallback=""):
        with open(conf.get("api_auth", "jwt_private_key_path"), "rb") as key:
            secret = key.read()
    if not secret:  # Airflow makes one up per process then (and warns): so do its tokens
        from airflow.api_fastapi.auth.tokens import get_signing_key

        secret = get_signing_key("api_auth", "jwt_secret").encode()
    return hashlib.sha256(b"cutout-review\x1f" + secret).digest()


def _may_decide(user: Any, ids: TaskInstanceIds) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(get_auth_manager().is_authorized_dag(
        method="PUT", user=user, access_entity=DagAccessEntity.TASK_INSTANCE, details=DagDetails(id=ids.dag_id)))


@app.get("/image", dependencies=[ReadAccess])
def image(ids: Ids, name: Annotated[str, Query(max_length=300)]) -> Response:
    """A stored result of the task instance's catalog, streamed from its output folder."""
    output_dir, _ = _output_dir(ids)
    catalog = CATALOGS.get(output_dir, max_age=IMAGE_REFRESH_S) if output_dir is not None else None
    media = _MEDIA.get(name.rsplit(".", 1)[-1].lower())
    if catalog is None or media is None or name not in catalog.stored:
        raise HTTPException(404, "no such result in this task instance's catalog")
    handle = _open_result(catalog, name)
    return StreamingResponse(_chunks(handle), media_type=media,
                             headers={"Content-Security-Policy": "default-src 'none'"})


def _open_result(catalog: Catalog, name: str) -> Any:
    """The stored file, open: a regular file of at most ``MAX_IMAGE_BYTES`` directly in the catalog's folder as it
    was when its manifest was read. No link is followed, hard or symbolic (a link could name any file the API
    server can read), and nothing that is not a file is opened (a FIFO would block)."""
    gone = HTTPException(404, "this result's file is not in the output folder")
    folder = catalog.folder
    if not is_local(folder):
        path = folder / name
        try:
            info = path.fs.info(path.path)
        except FileNotFoundError:
            raise gone from None
        if info.get("type") != "file" or int(info.get("size") or 0) > MAX_IMAGE_BYTES:
            raise gone
        return path.open("rb")
    if os.path.realpath(folder.path) != catalog.real:
        raise gone
    try:
        fd = os.open(os.path.join(catalog.real, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # gone, a link (ELOOP), or not readable
        raise gone from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > MAX_IMAGE_BYTES:
        os.close(fd)
        raise gone
    return os.fdopen(fd, "rb")


def _chunks(handle: Any, size: int = 64 * 1024) -> Any:
    """The file's bytes, up to ``MAX_IMAGE_BYTES`` (a file that grew since it was opened is cut there)."""
    sent = 0
    with handle:
        while sent < MAX_IMAGE_BYTES and (chunk := handle.read(min(size, MAX_IMAGE_BYTES - sent))):
            sent += len(chunk)
            yield chunk
