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

import contextlib
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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import anyio
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from airflow_provider_cutout.api.models import check_prompt
from airflow_provider_cutout.api.urls import browser_source, folder_problem, is_loopback_url
from airflow_provider_cutout.catalog.gallery import escape, gallery_items, item_anchor
from airflow_provider_cutout.catalog.review import (
    CSP,
    CSP_LOOPBACK,
    Decide,
    ReviewQuery,
    count,
    render_review,
    view_href,
)
from airflow_provider_cutout.exceptions import CatalogStateError, CutoutError
from airflow_provider_cutout.state.binding import owner_here
from airflow_provider_cutout.state.decisions import APPROVED, REJECTED
from airflow_provider_cutout.state.io import STATE_DIR, is_local, list_files
from airflow_provider_cutout.state.manifest import STORED, Manifest, file_name
from airflow_provider_cutout.state.signing import FORM, NoSecretError, digest

CACHED_CATALOGS = 4  # a catalog of 100,000 items holds about 150 MB in the API server while cached
IMAGE_REFRESH_S = 30.0  # an image request reads new log files at most this often (a page of 60 is 60 requests)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "private, no-store"}
#: An image answer's own policy: opened alone (a link to full size), the browser shows it in a page of its own.
_IMAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
_MAP_INDEX = re.compile(r"-?[0-9]{1,9}")
log = logging.getLogger(__name__)

app = FastAPI(title="Cutout review", docs_url=None, redoc_url=None, openapi_url=None)
ReadAccess = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))
EditAccess = Depends(requires_access_dag("PUT", DagAccessEntity.TASK_INSTANCE))
MAX_FORM_BYTES = 16 * 1024
READ_TIMEOUT_S = 30.0  # a look that waits longer for its folder answers 503
LOCK_WAIT_S = 10.0  # a look waits this long for another look at the same folder
READERS = 8  # the view's own threads for reading folders (the API server's pool stays Airflow's)
MAX_STATE_BYTES = 512 * 1024 * 1024  # the most log bytes the view reads from a folder (about 700,000 items)
MAX_RECORDS = 1_000_000  # and the most records
_TOKEN_COOKIE = "_token"  # the cookie of the Airflow UI's token
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
    owner: str = ""  # the DAG the folder's signed record names (``state.binding``)
    folder_id: str = ""  # and the id it gives the folder
    real: str = ""  # a local folder's real path when its manifest was read: a link re-pointed later is refused
    manifest: Any = None  # the manifest read (its decisions log is where decisions are written)
    _by_key: dict[str, dict[str, Any] | None] | None = None
    _counts: dict[float, dict[str, int]] = field(default_factory=dict)  # by task start: each filter's count

    def counts(self, since: float) -> dict[str, int]:
        """How many items each filter keeps (a catalog is rebuilt whenever it changes: counted once per start)."""
        if since not in self._counts:
            if len(self._counts) >= 8:
                self._counts.clear()
            self._counts[since] = count(self.items, since)
        return self._counts[since]

    def current(self, key: str) -> dict[str, Any] | None:
        """The newest entry of an item key as a form sends it (text: ``7`` is the key ``7`` of a catalog whose keys
        are numbers); ``None`` also when two keys share that text (``7`` and ``"7"``, written by hand)."""
        if self._by_key is None:
            found: dict[str, dict[str, Any] | None] = {}
            for entry in self.items:  # two keys of one text (1 and "1", written by hand): neither is decided
                text = str(entry.get("key"))
                found[text] = None if text in found else entry
            self._by_key = found
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
        if slot is not None and slot.lock.acquire(timeout=LOCK_WAIT_S):
            try:
                if slot.manifest and slot.catalog:
                    owner = (slot.catalog.owner, slot.catalog.folder_id)
                    slot.catalog = _catalog(slot.catalog.folder, slot.manifest, owner)
            finally:
                slot.lock.release()

    def get(self, output_dir: str, dag_id: str, max_age: float = 0.0) -> Catalog:
        """The catalog of ``output_dir`` for a task instance of ``dag_id``, refreshed when it was read more than
        ``max_age`` seconds ago. The folder's owner record is read first: a folder that is not ``dag_id``'s raises
        ``NotThisDags`` before its manifest is read; a folder handed to its DAG anew (another ``folder_id``) is
        read anew (the decisions made before do not stand)."""
        from airflow.sdk import ObjectStoragePath

        with self._lock:
            slot = self._slots.setdefault(output_dir, _Slot())
            self._slots.move_to_end(output_dir)
            excess = len(self._slots) - self._size  # the oldest go, never one being read (its lock must stay)
            idle = [n for n, s in self._slots.items() if n != output_dir and not s.lock.locked()]
            for name in idle[:max(excess, 0)]:
                del self._slots[name]
        if not slot.lock.acquire(timeout=LOCK_WAIT_S):  # another look reads this folder (a slow store)
            raise TimeoutError(f"the output folder is still being read by another look (over {LOCK_WAIT_S:.0f} s)")
        try:
            fresh = time.monotonic() - slot.read_at <= max_age and slot.catalog is not None
            if fresh and slot.catalog is not None:
                if slot.catalog.owner != dag_id:
                    raise NotThisDags(slot.catalog.owner)
                return slot.catalog
            with _running():  # one of READERS threads that read stores, taken once this folder's turn came
                folder = _resolved(ObjectStoragePath(output_dir.rstrip("/") + "/"))
                if slot.catalog is not None and str(folder) != str(slot.catalog.folder):  # re-pointed since
                    slot.manifest = slot.catalog = None
                owner = _owner(folder)
                if owner[0] != dag_id:
                    raise NotThisDags(owner[0])
                _check_size(folder)
                if slot.manifest is None or slot.catalog is None or owner[1] != slot.catalog.folder_id:
                    slot.manifest = Manifest(folder, max_records=MAX_RECORDS)
                    slot.catalog = _catalog(folder, slot.manifest, owner)
                elif slot.manifest.refresh(decisions=True):
                    slot.catalog = _catalog(folder, slot.manifest, owner)
                slot.read_at = time.monotonic()
                return slot.catalog
        finally:
            slot.lock.release()


class NotThisDags(Exception):
    """The folder's owner record names another DAG, or there is none for this place (``""``)."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


def _resolved(folder: Any) -> Any:
    """A local folder by its real path, read once (a link re-pointed later does not move what this look reads or
    writes), whose own state folders are no links (they could lead into another DAG's folder)."""
    if not is_local(folder):
        return folder
    from airflow.sdk import ObjectStoragePath

    real = os.path.realpath(folder.path)
    for part in (STATE_DIR, f"{STATE_DIR}/manifest", f"{STATE_DIR}/decisions"):
        if os.path.islink(os.path.join(real, part)):
            raise CatalogStateError(f"{os.path.join(real, part)} is a link: the view does not follow it")
    return ObjectStoragePath(real + "/")


def _check_size(folder: Any) -> None:
    """Refuse a folder whose logs hold more than the view reads (``MAX_STATE_BYTES``), before reading them."""
    total = sum(sum(list_files(folder / STATE_DIR / part).values()) for part in ("manifest", "decisions"))
    if total > MAX_STATE_BYTES:
        raise CatalogStateError(f"the logs of {folder} hold {total:,} bytes, more than the view reads "
                                f"({MAX_STATE_BYTES:,}): see the static gallery, or read_manifest")


def _owner(folder: Any) -> tuple[str, str]:
    """The DAG and ``folder_id`` of the folder's owner record for this place (``""`` when there is none)."""
    found = owner_here(folder)
    return (str(found["dag_id"]), str(found["folder_id"])) if found else ("", "")


def _catalog(folder: Any, manifest: Manifest, owner: tuple[str, str]) -> Catalog:
    items = gallery_items(manifest.catalog())
    stored = {file_name(e) for e in items if e.get("status") == STORED}
    real = os.path.realpath(folder.path) if is_local(folder) else ""
    return Catalog(folder, items, {name for name in stored if _plain(name)}, *owner, real, manifest)


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


def _written(ids: TaskInstanceIds) -> str | None:
    """The task's ``output_dir`` as its DAG file writes it (the newest serialized version of the DAG)."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        dag = SerializedDagModel.get_dag(ids.dag_id, session=session)
    task = dag.task_dict.get(ids.task_id) if dag is not None else None
    found = getattr(task, "output_dir", None)
    return found if isinstance(found, str) else None


def _batch_of(ids: TaskInstanceIds) -> str | None:
    """The batch task a review gate task instance asks about (its rendered ``batch_task_id``), if it is one."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        fields = session.scalar(select(Rendered.rendered_fields).where(
            Rendered.dag_id == ids.dag_id, Rendered.run_id == ids.run_id, Rendered.task_id == ids.task_id,
            Rendered.map_index == ids.map_index))
    found = fields.get("batch_task_id") if isinstance(fields, dict) else None
    return found if isinstance(found, str) and found else None


def _folder(ids: TaskInstanceIds) -> tuple[str, float]:
    """The task instance's output folder, when the view may read it at all, and when the task started: an
    ``HTTPException`` otherwise (before anything is read from a store)."""
    output_dir, started = _output_dir(ids)
    if output_dir is None:
        raise HTTPException(404, "No Cutout catalog here: this task instance is not a Cutout batch task, or it has "
                                 "not started.")
    problem = folder_problem(output_dir)
    if problem is None and "@" in urlsplit(output_dir).netloc:  # a connection: the DAG file's own only
        problem = folder_problem(output_dir, _written(ids) or "")
    if problem is not None:
        raise HTTPException(403, f"The view does not read this folder: {problem}.")
    return output_dir, started


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` on one of the view's own threads, given up after ``READ_TIMEOUT_S`` (503). What reads a
    folder's logs does so in ``_running``: at most ``READERS`` at once, counted by the threads themselves (a thread
    given up on still counts until it ends), so a folder that hangs cannot take the API server's threads."""
    try:
        with anyio.fail_after(READ_TIMEOUT_S):
            return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True, limiter=_readers())
    except TimeoutError:
        raise HTTPException(503, "The output folder did not answer in time (a slow store, or another look is "
                                 "reading it); try again.") from None


_RUNNING = threading.BoundedSemaphore(READERS)


@functools.cache
def _readers() -> anyio.CapacityLimiter:
    """The view's own pool of waiting threads (Airflow's default pool stays Airflow's)."""
    return anyio.CapacityLimiter(4 * READERS)


@contextlib.contextmanager
def _running() -> Iterator[None]:
    if not _RUNNING.acquire(timeout=LOCK_WAIT_S):
        raise TimeoutError(f"{READERS} looks are reading folders already")
    try:
        yield
    finally:
        _RUNNING.release()


async def _catalog_of(ids: TaskInstanceIds, max_age: float = 0.0) -> tuple[str, float, Catalog]:
    """The task instance's folder, start and catalog, read for its DAG only."""
    output_dir, started = await _in_thread(_folder, ids)
    try:
        catalog = await _in_thread(CATALOGS.get, output_dir, ids.dag_id, max_age)
    except NotThisDags as err:
        raise HTTPException(403, f"The output folder {output_dir[:300]} is not DAG {ids.dag_id}'s: "
                                 + ("a run of another DAG wrote it first." if err.owner else
                                    "no run of this DAG recorded it as its own (a run of this release records it "
                                    "when it starts).")) from None
    except (OSError, ValueError, CutoutError) as err:  # a store that fails, a file that is no log
        log.warning("Cutout review: the output folder %s cannot be read: %s", output_dir, err)
        raise HTTPException(503, f"The output folder {output_dir[:300]} cannot be read from the API server "
                                 f"({type(err).__name__}: {str(err)[:300]}).") from None
    return output_dir, started, catalog


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status)


def _message(text: str, status: int) -> HTMLResponse:
    return _page("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Cutout review</title></head>"
                 f"<body><p>{escape(text)}</p></body></html>", status)


@app.get("/view", dependencies=[ReadAccess], response_class=HTMLResponse)
async def view(ids: Ids, user: GetUserDep, request: Request, status: str | None = None, q: str | None = None,
               page: str | None = None, done: str | None = None) -> HTMLResponse:
    """The catalog of a batch task instance, a page at a time (``done``: the key a decision was just recorded on,
    whose card stays in its place and says what was recorded)."""
    try:
        _, started, catalog = await _catalog_of(ids)
    except HTTPException as err:
        batch = await _in_thread(_batch_of, ids) if err.status_code == 404 else None
        if batch:  # a review gate's tab: its batch's view is one click away
            href = view_href("view", {**ids.params(), "task_id": batch, "map_index": "-1"})()
            return _page(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Cutout review</title>"
                         f"</head><body><p>This is a review gate. The items it asks about are in the review view of "
                         f"<a href='{escape(href)}'>{escape(batch)}</a>.</p></body></html>", 404)
        return _message(str(err.detail), err.status_code)
    query = ReviewQuery.parse(status, q, page)
    params = {**ids.params(), "status": query.status, "q": query.search}
    image = view_href("image", ids.params())  # relative: right under any base path of the API server
    decide = None
    if await _in_thread(_may_decide, user, ids):
        try:
            decide = Decide(view_href("decide", ids.params())(), csrf_token(user, ids, request))
        except NoSecretError as err:  # no forms: a decision signed with a made-up key would be ignored
            log.warning("Cutout review: no decisions can be made: %s", err)
    loopback = _served_on_loopback()  # a developer's machine: sandbox sources over plain http
    page_html = render_review(
        catalog.items, query=query, title=str(catalog.folder), since=started, href=view_href("view", params),
        image_url=lambda name: image(name=name), hidden=ids.params(), decide=decide, counts=catalog.counts(started),
        source_url=functools.partial(browser_source, loopback=loopback), recorded=done,
        full_page=view_href("view", params)(page=query.page))
    response = _page(page_html)
    response.headers["Content-Security-Policy"] = CSP_LOOPBACK if loopback else CSP
    return response


@app.post("/decide", dependencies=[EditAccess])
async def decide(ids: Ids, user: GetUserDep, request: Request) -> Response:
    """Record a decision on one stored item of the task instance's catalog; back to the page it was made on."""
    _same_origin(request)
    form = await _form(request)
    try:
        expected = csrf_token(user, ids, request)
    except NoSecretError as err:
        raise HTTPException(503, str(err)) from None
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        raise HTTPException(403, "the form's token is not this user's for this task instance and this login: "
                                 "reload the view")
    output_dir, _, catalog = await _catalog_of(ids)
    decision = _decision(catalog, form, user.get_name())
    try:
        await _in_thread(catalog.manifest.decisions.decide, decision)
    except (CutoutError, ValueError) as err:  # the folder's owner record changed meanwhile; no decision
        raise HTTPException(409, f"{err}: reload the view") from None
    await _in_thread(CATALOGS.forget, output_dir)  # the next look shows it
    back = {"status": form.get("status", "all"), "q": form.get("q", ""), "page": form.get("page", "1"),
            "done": str(decision["key"])}  # back to the card decided on, which says what was recorded
    return RedirectResponse(view_href("view", {**ids.params(), **back})() + "#" + item_anchor(decision["key"]),
                            status_code=303)


def _same_origin(request: Request) -> None:
    """Refuse a request another site made: by ``Sec-Fetch-Site`` where the browser sends it (over HTTPS), else by
    ``Origin`` against the request's own host (a browser sends it with every form POST)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise HTTPException(403, "a decision must come from the review view itself")
        return
    origin, host = request.headers.get("origin"), request.headers.get("host", "")
    if origin is None or urlsplit(origin).netloc.lower() != host.lower() or not host:
        raise HTTPException(403, "a decision must come from the review view itself (no Sec-Fetch-Site, and Origin "
                                 f"{str(origin)[:100]!r} is not this server's {host[:100]!r})")


async def _form(request: Request) -> dict[str, str]:
    """The posted form, read up to ``MAX_FORM_BYTES`` (413 as soon as the body is larger, declared or sent)."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        raise HTTPException(413, f"the form is too large (at most {MAX_FORM_BYTES:,} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"the form is too large (at most {MAX_FORM_BYTES:,} bytes)")
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}


def _decision(catalog: Catalog, form: dict[str, str], by: str) -> dict[str, Any]:
    """The decision a form asks for, checked: the item's current edit and image, stored; a known decision; a valid
    corrected prompt."""
    key, fingerprint, chosen = form.get("key", ""), form.get("fingerprint", ""), form.get("decision")
    entry = catalog.current(key)
    if (entry is None or entry.get("fingerprint") != fingerprint or entry.get("status") != STORED
            or not entry.get("sha256") or form.get("sha256") != entry.get("sha256")):
        raise HTTPException(409, f"item {key[:200]!r} has no stored result of that edit and image now (edited again "
                                 "since the page was loaded?), or none whose digest is recorded: reload the view")
    if chosen not in (APPROVED, REJECTED):
        raise HTTPException(422, f"decision={str(chosen)[:40]!r} must be {APPROVED!r} or {REJECTED!r}")
    note, prompt = form.get("note", "").strip(), form.get("prompt", "").strip()
    if len(note) > MAX_NOTE_CHARS:
        raise HTTPException(422, f"the note has {len(note)} characters; shorten it to at most {MAX_NOTE_CHARS}")
    decision = {"key": entry.get("key"), "fingerprint": fingerprint, "sha256": entry.get("sha256"),
                "decision": chosen, "by": by, "note": note, "dag_id": catalog.owner}
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


def csrf_token(user: Any, ids: TaskInstanceIds, request: Request) -> str:
    """The token a decision form carries: bound to the user, the task instance and the login the request carries
    (its Airflow token, a header or the UI's cookie: a new login makes old forms void), unguessable without the
    deployment's secret (``state.signing``)."""
    login = "" if _all_admins() else request.headers.get("authorization") or request.cookies.get(_TOKEN_COOKIE) or ""
    session = hashlib.sha256(login.encode()).hexdigest()
    return digest(FORM, "\x1f".join([str(user.get_id()), *ids.params().values(), session]).encode())


@functools.cache
def _all_admins() -> bool:
    """The simple auth manager's all-admins mode (development only): no login, and a new token on every request,
    so there is no login to bind a form to."""
    from airflow.configuration import conf

    return conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False)


@functools.cache
def _served_on_loopback() -> bool:
    """Whether the API server's configured address (``[api] base_url``) is loopback: a developer's machine, whose
    sandbox serves sources over plain http. (Not the request's Host: a proxy in front may rewrite it to loopback.)"""
    from airflow.configuration import conf

    return is_loopback_url(conf.get("api", "base_url", fallback="") or None)


def _may_decide(user: Any, ids: TaskInstanceIds) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(get_auth_manager().is_authorized_dag(
        method="PUT", user=user, access_entity=DagAccessEntity.TASK_INSTANCE, details=DagDetails(id=ids.dag_id)))


@app.get("/image", dependencies=[ReadAccess])
async def image(ids: Ids, name: Annotated[str, Query(max_length=300)]) -> Response:
    """A stored result of the task instance's catalog, streamed from its output folder."""
    _, _, catalog = await _catalog_of(ids, IMAGE_REFRESH_S)
    media = _MEDIA.get(name.rsplit(".", 1)[-1].lower())
    if media is None or name not in catalog.stored:
        raise HTTPException(404, "no such result in this task instance's catalog")
    handle = await _in_thread(_open_result, catalog, name)
    return StreamingResponse(_chunks(handle), media_type=media,
                             headers={"Content-Security-Policy": _IMAGE_CSP})


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
    try:  # the folder opened once, without following a link, and the file opened in it: no path swapped between
        directory = os.open(catalog.real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        raise gone from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except OSError:  # gone, a link (ELOOP), or not readable
        raise gone from None
    finally:
        os.close(directory)
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
